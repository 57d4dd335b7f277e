"""The one image loader (phraseground.data.images): pixel limit, bit depth, modes, EXIF, errors."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phraseground.data import images
from phraseground.data.images import image_size, load_image, set_max_pixels
from phraseground.errors import ImageError, PhrasegroundError


def bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A valid PNG header claiming ``width x height`` 8-bit grey pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def gradient(w: int = 40, h: int = 30) -> np.ndarray:
    """(h, w, 3) uint8 picture with distinct rows/columns (so rotations are visible)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


@pytest.fixture(autouse=True)
def _default_limit():
    set_max_pixels(None)
    yield
    set_max_pixels(None)


def test_bomb_header_is_one_error_naming_file_and_limit(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageError) as e:
        load_image(bomb)
    msg = str(e.value)
    assert "\n" not in msg and "bomb.png" in msg and "40000x40000" in msg and str(images.DEFAULT_MAX_PIXELS) in msg
    with pytest.raises(ImageError, match="bomb.png"):
        image_size(bomb)  # the header-only size refuses it too


def test_between_one_and_two_times_the_limit_is_the_error_not_a_warning(tmp_path, recwarn):
    # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; the project refuses.
    bomb = bomb_png(tmp_path / "b.png", 150, 100)  # 15000 pixels
    with pytest.raises(ImageError, match="exceeds the limit of 10000 pixels"):
        load_image(bomb, max_pixels=10_000)
    set_max_pixels(14_999)
    with pytest.raises(ImageError, match="14999"):
        image_size(bomb)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_limit_from_environment_and_setter(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    Image.fromarray(gradient()).save(p)
    monkeypatch.setenv(images.ENV_MAX_PIXELS, "1000")
    with pytest.raises(ImageError, match="1000 pixels"):
        load_image(p)
    assert set_max_pixels(5000) == 5000
    assert load_image(p).size == (40, 30)
    with pytest.raises(PhrasegroundError, match="positive integer"):
        set_max_pixels(0)


def test_16bit_scaled_like_the_8bit_picture(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # mode I;16
    Image.fromarray((grey8.astype(np.uint16) << 8)).save(tmp_path / "g16s.png")
    Image.fromarray(grey8.astype(np.int32) * 257, mode="I").save(tmp_path / "g32.tif")
    ref = np.asarray(load_image(tmp_path / "g8.png"))
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    for name in ("g16.png", "g16s.png", "g32.tif"):
        got = np.asarray(load_image(tmp_path / name))
        assert got.dtype == np.uint8 and got.shape == (30, 40, 3)
        np.testing.assert_array_equal(got, ref, err_msg=name)
    # the defect: clipping made a normal 16-bit image almost white
    assert abs(float(np.asarray(load_image(tmp_path / "g16.png")).mean()) - float(grey8.mean())) < 1


def test_float_images_by_value_range(tmp_path):
    grey8 = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    ref = np.asarray(load_image(Image.fromarray(grey8)))[..., 0]
    for scale in (1 / 255, 1.0, 257.0):
        f = Image.fromarray((grey8.astype(np.float32) * np.float32(scale)), mode="F")
        np.testing.assert_allclose(np.asarray(load_image(f))[..., 0].astype(int), ref, atol=1, err_msg=str(scale))
    weird = np.full((4, 4), np.nan, np.float32)
    weird[0, 0], weird[1, 1], weird[2, 2] = -5.0, 5.0, np.inf
    out = np.asarray(load_image(Image.fromarray(weird, mode="F")))
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[2, 2, 0] == 255
    assert np.asarray(load_image(Image.fromarray(np.full((3, 3), np.nan, np.float32), mode="F"))).max() == 0


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "CMYK", "L", "1", "YCbCr", "PA", "RGBa", "La", "HSV"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    im = Image.fromarray(gradient()).convert("RGBA" if mode in ("PA", "RGBa", "La") else "RGB")
    im = im.convert(mode) if mode not in ("PA", "La") else im.convert("LA" if mode == "La" else "P").convert(mode)
    out = load_image(im)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red underneath, fully transparent
    rgba[0, 0] = (0, 0, 255, 255)
    p = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(p)
    out = np.asarray(load_image(p))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[3, 3]) == (255, 255, 255)
    pal = Image.fromarray(rgba, "RGBA").convert("P")  # transparency kept in info
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


def test_exif_orientation_applied_and_annotation_frame_kept(tmp_path):
    pic = gradient(40, 30)
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(pic).save(p, exif=exif, quality=95)
    shown = load_image(p)
    assert shown.size == (30, 40)
    expected = np.asarray(Image.fromarray(pic).transpose(Image.Transpose.ROTATE_270))
    assert np.abs(np.asarray(shown).astype(int) - expected.astype(int)).mean() < 4
    assert load_image(p, exif_transpose=False).size == (40, 30)
    assert load_image(p, expect_size=(40, 30)).size == (40, 30)  # annotated on the stored frame
    assert load_image(p, expect_size=(30, 40)).size == (30, 40)
    assert image_size(p) == (40, 30) and image_size(p, exif=True) == (30, 40)


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(tmp_path / "a.gif"))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_bytes_and_file_objects(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(gradient()).save(buf, "PNG")
    assert load_image(buf.getvalue()).size == (40, 30)
    buf.seek(0)
    assert load_image(buf, name="upload.png").size == (40, 30)
    with pytest.raises(ImageError, match="upload.png: not a readable image"):
        load_image(b"hello", name="upload.png")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", name="upload.png")


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "truncated", "corrupt"])
def test_unusable_files_are_one_line(case, tmp_path):
    p = tmp_path / "bad.jpg"
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    data = good.getvalue()
    if case == "directory":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not a picture\n")
    elif case == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif case == "corrupt":
        p.write_bytes(data[:200] + bytes(range(256)) * 8)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_everything_that_opens_images_uses_the_loader():
    """No module but data/images.py calls Image.open (so the limit and the modes apply everywhere)."""
    root = Path(images.__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "images.py" and "Image.open(" in p.read_text()]
    assert offenders == []
