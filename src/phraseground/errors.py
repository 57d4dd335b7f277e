"""Exceptions the command line turns into one clear error line and a non-zero exit."""
from __future__ import annotations


class PhrasegroundError(Exception):
    """Base class of every error caused by the user's input (files, options, checkpoints)."""


class DataFormatError(PhrasegroundError):
    """A dataset file is malformed; the message names the file and, when known, the line."""

    def __init__(self, path: object, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class CheckpointError(PhrasegroundError):
    """A checkpoint is missing, corrupted or belongs to another model."""


class ConfigError(PhrasegroundError):
    """A configuration value is unknown or invalid."""


class WeightsNotFoundError(PhrasegroundError):
    """Pretrained weights are neither on disk nor downloadable; says which file to put where."""


class ImageError(DataFormatError):
    """An image file cannot be used: missing, not an image, corrupt, truncated, over the pixel limit."""


class OutputError(PhrasegroundError):
    """An output cannot be written: read-only folder, full disk, file-size limit, no permission."""
