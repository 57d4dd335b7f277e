"""Optional parts: importing a package of an extra, with an error that names the extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import PhrasegroundError


class MissingExtraError(PhrasegroundError):
    """A feature needs a package of an optional extra that is not installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError: "<what> needs <package>: pip install 'phraseground[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0].replace("_", "-")
        raise MissingExtraError(f"{what} needs the package {package!r} ({e}); "
                                f"install it with: pip install 'phraseground[{extra}]'") from None
