"""The one image loader: every part of phraseground that opens an image file goes through here.

``load_image(src)`` returns an 8-bit RGB PIL image and gives one :class:`ImageError` line
(naming the file) for anything it cannot turn into one:

- **pixel limit**: an image whose header claims more than ``max_pixels`` pixels is refused
  before it is decoded (a decompression bomb). The limit is set explicitly on Pillow
  (``Image.MAX_IMAGE_PIXELS``, which is process-wide) and Pillow's ``DecompressionBombWarning``
  is treated as the error. Default :data:`DEFAULT_MAX_PIXELS`; change it with
  :func:`set_max_pixels`, the ``PHRASEGROUND_MAX_PIXELS`` environment variable, the
  ``--max-image-pixels`` option or the ``data.max_image_pixels`` config key.
- **orientation**: the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so the
  picture is the one a viewer shows. ``expect_size=(w, h)`` (an annotation's size) keeps the
  stored frame when the annotation matches it and not the displayed one.
- **bit depth**: 16-bit (``I;16*``, ``I``) images are scaled to 8 bits (``v >> 8``: an 8-bit
  picture stored in 16 bits as ``v * 257`` or ``v << 8`` comes back identical), float (``F``)
  images by their value range (``[0, 1]`` x 255, ``[0, 255]`` as is, ``[0, 65535]`` / 256,
  anything else min–max normalised; NaN and inf become 0 / the extremes).
- **modes**: palette, grey, 1-bit, CMYK, YCbCr, LAB, HSV become RGB; transparency (RGBA, LA,
  PA, palette with a transparent colour) is composited on white, as a viewer shows it; of an
  animated image the first frame is used.
- refused: missing files, directories, empty, truncated or corrupt files, non-images
  (a text file named ``.jpg``), zero-sized images, modes that cannot be converted.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000
"""Default pixel limit (100 megapixels: 4 times a 24 MP photo; a 40000 x 40000 bomb is 1.6 G)."""

ENV_MAX_PIXELS = "PHRASEGROUND_MAX_PIXELS"

ImageSource = Union[str, os.PathLike, Image.Image, bytes, BinaryIO]

_max_pixels: int | None = None  # set by set_max_pixels; None: environment or default


def _parse_limit(value: object, where: str) -> int:
    try:
        n = int(str(value).replace("_", ""))
    except ValueError:
        raise ImageError(where, f"pixel limit must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise ImageError(where, f"pixel limit must be a positive integer, got {value!r}")
    return n


def get_max_pixels() -> int:
    """The pixel limit in force: :func:`set_max_pixels`, else ``$PHRASEGROUND_MAX_PIXELS``, else the default."""
    if _max_pixels is not None:
        return _max_pixels
    env = os.environ.get(ENV_MAX_PIXELS)
    if env:
        return _parse_limit(env, ENV_MAX_PIXELS)
    return DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> int:
    """Set the process-wide pixel limit (None: back to the environment/default); returns the limit in force."""
    global _max_pixels
    _max_pixels = None if limit is None else _parse_limit(limit, "max_image_pixels")
    return get_max_pixels()


def _name(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "filename", None) or getattr(src, "name", None) or "<image>"


def _too_big(name: str, width: int, height: int, limit: int) -> ImageError:
    return ImageError(name, f"image of {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
                            f"(a decompression bomb?); raise it with --max-image-pixels, the config key "
                            f"data.max_image_pixels or ${ENV_MAX_PIXELS}")


def _open(src: ImageSource, name: str, limit: int) -> Image.Image:
    """Image.open with the pixel limit checked on the header (nothing decoded yet)."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            raise ImageError(name, "is a directory, not an image")
        if not path.exists():
            raise ImageError(name, "image file not found")
        if path.stat().st_size == 0:
            raise ImageError(name, "empty file, not an image")
        fp: object = path
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError(name, "empty file, not an image")
        fp = io.BytesIO(bytes(src))
    else:
        fp = src
    Image.MAX_IMAGE_PIXELS = limit  # explicit: Pillow warns above it and raises above twice it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        im = None
    except FileNotFoundError:
        raise ImageError(name, "image file not found") from None
    except PermissionError as e:
        raise ImageError(name, f"cannot open image ({e.strerror})") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"cannot read image ({e})") from None
    if im is None:  # Pillow's own guard fired: report our limit with the header's size
        w, h = _header_size_unchecked(fp)
        raise _too_big(name, w, h, limit)
    w, h = im.size
    if w * h > limit:
        im.close()
        raise _too_big(name, w, h, limit)
    if w <= 0 or h <= 0:
        im.close()
        raise ImageError(name, f"image has no pixels ({w}x{h})")
    return im


def _header_size_unchecked(fp: object) -> tuple[int, int]:
    saved = Image.MAX_IMAGE_PIXELS
    try:
        if hasattr(fp, "seek"):
            fp.seek(0)  # type: ignore[union-attr]
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:  # type: ignore[arg-type]
                return im.size
    except Exception:  # the size is only for the message
        return 0, 0
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def image_size(src: ImageSource, *, max_pixels: int | None = None, exif: bool = False,
               name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` from the header, nothing decoded; the pixel limit is checked.

    Args:
        exif: give the displayed frame (width and height swapped for EXIF orientations 5-8).
    """
    name = _name(src, name)
    limit = get_max_pixels() if max_pixels is None else _parse_limit(max_pixels, "max_pixels")
    im = src if isinstance(src, Image.Image) else _open(src, name, limit)
    try:
        w, h = im.size
        if exif and _orientation(im) in (5, 6, 7, 8):
            return h, w
        return w, h
    finally:
        if im is not src:
            im.close()


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # unreadable EXIF: no orientation
        return 1


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float single-channel images scaled to mode ``L``; other modes unchanged."""
    mode = im.mode
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint16)  # native byte order whatever the mode's
        return Image.fromarray((a >> 8).astype(np.uint8), mode="L")
    if mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size and a.min() >= 0 and a.max() <= 65535:  # a 16-bit picture in a 32-bit container
            return Image.fromarray((a >> 8).astype(np.uint8), mode="L")
        return Image.fromarray(_normalise(a.astype(np.float64)), mode="L")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        finite = np.isfinite(a)
        if not finite.any():
            return Image.fromarray(np.zeros(a.shape, np.uint8), mode="L")
        lo, hi = float(a[finite].min()), float(a[finite].max())
        a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
        if lo >= 0 and hi <= 1:
            a = a * 255
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 256
        else:
            return Image.fromarray(_normalise(a), mode="L")
        return Image.fromarray(np.clip(np.floor(a + 0.5), 0, 255).astype(np.uint8), mode="L")
    return im


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.floor((a - lo) / (hi - lo) * 255 + 0.5), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (transparency composited on white)."""
    im = to_8bit(im)
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info or im.mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif im.mode == "La":  # premultiplied; Pillow converts it to LA only
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(src: ImageSource, *, max_pixels: int | None = None, exif_transpose: bool = True,
               expect_size: tuple[int, int] | None = None, name: str | None = None) -> Image.Image:
    """Open an image as 8-bit RGB (see the module docstring for what is handled and refused).

    Args:
        src: a path, an open PIL image, the file's bytes or a binary file object.
        max_pixels: pixel limit for this call (default: :func:`get_max_pixels`).
        exif_transpose: apply the EXIF orientation (the displayed frame).
        expect_size: the ``(width, height)`` an annotation was made on: when it matches the
            stored frame but not the displayed one, the stored frame is returned.
        name: what error messages call the image (default: the path).

    Raises:
        ImageError: one line naming the image.
    """
    name = _name(src, name)
    limit = get_max_pixels() if max_pixels is None else _parse_limit(max_pixels, "max_pixels")
    if isinstance(src, Image.Image):
        im = src
        if im.width * im.height > limit:
            raise _too_big(name, im.width, im.height, limit)
        if im.width <= 0 or im.height <= 0:
            raise ImageError(name, f"image has no pixels ({im.width}x{im.height})")
    else:
        im = _open(src, name, limit)
    try:
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageError(name, f"cannot decode image ({e})") from None
        if exif_transpose:
            stored = im.size
            turned = _exif_transposed(im)
            if expect_size is not None and tuple(expect_size) == stored and turned.size != stored:
                turned = im  # the annotation was made on the stored frame
            im_out = turned
        else:
            im_out = im
        try:
            rgb = to_rgb(im_out)
        except (ValueError, OSError) as e:
            raise ImageError(name, f"cannot convert image mode {im_out.mode!r} to RGB ({e})") from None
        if rgb is im and not isinstance(src, Image.Image):
            rgb = rgb.copy()  # detach from the file before it is closed
        return rgb
    finally:
        if im is not src:
            im.close()


def _exif_transposed(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block: the stored frame
        return im
    return im if out is None else out
