"""Bad and odd inputs through the command line and the API of every model.

Generated images: the valid-but-odd ones (CMYK, 16-bit, palette, RGBA, EXIF-rotated, 1 pixel,
4000 x 30) ground correctly (in their displayed frame, point and box inside the image); the
unusable ones (corrupt, truncated, empty, a decompression-bomb header, a text file named .jpg)
end with one ``phraseground: error:`` line and exit status 2, and nothing is written. Bad
phrases likewise: refused with one line, or grounded with their unknown words reported.
Tiny near-random checkpoints of each model (``conftest.model_checkpoints``) keep it fast.
"""
from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phraseground.app.cli import main
from phraseground.errors import PhrasegroundError
from test_images import bomb_png

MODELS = ["mlmcs", "dsve", "attnreg"]


def _picture(w: int = 64, h: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), ((x // 8 + y // 8) % 2) * 255], -1)
    return rgb.astype(np.uint8)


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_image(kind: str, folder: Path) -> tuple[Path, tuple[int, int] | None]:
    """Write one test image; returns its path and its displayed (width, height) (None: unusable)."""
    pic = _picture()
    p = folder / f"{kind}.png"
    if kind == "cmyk":
        p = p.with_suffix(".jpg")
        Image.fromarray(pic).convert("CMYK").save(p, "JPEG")
    elif kind == "gray16":
        Image.fromarray(pic[..., 0].astype(np.uint16) * 257).save(p)
    elif kind == "palette":
        Image.fromarray(pic).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p)
    elif kind == "rgba":
        a = np.dstack([pic, np.linspace(0, 255, pic.shape[1], dtype=np.uint8)[None].repeat(pic.shape[0], 0)])
        Image.fromarray(a, "RGBA").save(p)
    elif kind == "exif_rotated":
        p = p.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(pic).save(p, exif=exif)
        return p, (48, 64)
    elif kind == "one_pixel":
        Image.new("RGB", (1, 1), (200, 10, 10)).save(p)
        return p, (1, 1)
    elif kind == "wide_4000x30":
        Image.fromarray(np.asarray(Image.fromarray(pic).resize((4000, 30)))).save(p)
        return p, (4000, 30)
    elif kind == "corrupt":  # a PNG whose compressed pixel data is garbage
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, "PNG")
        data = bytearray(buf.getvalue())
        start = data.index(b"IDAT") + 4
        data[start:start + 64] = bytes(range(64))
        p.write_bytes(bytes(data))
        return p, None
    elif kind == "truncated":
        p = p.with_suffix(".jpg")
        p.write_bytes(_jpeg_bytes(pic)[:400])
        return p, None
    elif kind == "empty":
        p = p.with_suffix(".jpg")
        p.write_bytes(b"")
        return p, None
    elif kind == "bomb":
        return bomb_png(p), None
    elif kind == "text_as_jpg":
        p = p.with_suffix(".jpg")
        p.write_text("a red star\n" * 20)
        return p, None
    else:
        raise ValueError(kind)
    return p, (64, 48)


ODD = ["cmyk", "gray16", "palette", "rgba", "exif_rotated", "one_pixel", "wide_4000x30"]
UNUSABLE = ["corrupt", "truncated", "empty", "bomb", "text_as_jpg"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_refused(code: int, err: str, out: Path) -> None:
    assert code == 2 and err.startswith("phraseground: error: ") and err.count("\n") == 1, (code, err)
    assert not out.exists(), sorted(out.rglob("*"))


def _assert_inside(rec: dict, size: tuple[int, int]) -> None:
    w, h = size
    assert (rec["width"], rec["height"]) == (w, h)
    assert rec["predictions"]
    for p in rec["predictions"]:
        if p["point"] is not None:
            assert 0 <= p["point"]["x"] <= w and 0 <= p["point"]["y"] <= h, p["point"]
        if p["box"] is not None:
            b = p["box"]
            assert 0 <= b["xmin"] < b["xmax"] <= w and 0 <= b["ymin"] < b["ymax"] <= h, b
        assert np.isfinite(p["score"])


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name], sorted(folder.rglob("*"))


@pytest.fixture(scope="module")
def grounders(model_checkpoints):
    from phraseground.predict import Grounder

    return {m: Grounder.from_checkpoint(ckpt, device="cpu") for m, ckpt in model_checkpoints.items()}


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ODD + UNUSABLE)
def test_images_through_the_cli(kind, model, model_checkpoints, tmp_path, capsys):
    image, size = make_image(kind, tmp_path)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "ground", str(image), "--phrase", "a red star", "--checkpoint",
                        str(model_checkpoints[model]), "--out", str(out))
    if size is None:
        _assert_refused(code, err, out)
        assert image.name in err
        return
    assert code == 0, err
    rec = json.loads((out / "grounding.json").read_text())
    _assert_inside(rec, size)
    for p in rec["predictions"]:
        assert Image.open(out / p["overlay"]).size == size
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ODD + UNUSABLE)
def test_images_through_the_api(kind, model, grounders, tmp_path):
    image, size = make_image(kind, tmp_path)
    g = grounders[model]
    sources = [image] if size is None else [image, image.read_bytes()]
    for src in sources:
        if size is None:
            with pytest.raises(PhrasegroundError) as e:
                g(src, ["a red star", "a blue square"])
            assert "\n" not in str(e.value) and image.name in str(e.value)
        else:
            _assert_inside(g(src, ["a red star", "a blue square"]), size)


def test_16bit_and_8bit_give_the_same_answer_for_every_model(grounders, tmp_path):
    grey = _picture()[..., 0]
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    for model, g in grounders.items():
        a, b = (g(tmp_path / n, "a red star")["predictions"] for n in ("g8.png", "g16.png"))
        assert a == b, model


# ------------------------------------------------------------------------------------ phrases
TOLERATED = {  # phrase -> the unknown words reported
    "a red étoile": ["étoile"],
    " ".join(["a", "red", "star"] * 100): [],  # 300 words
}
REFUSED = ["", "   ", "\t\n", "😀🎉", "zzzz qqqq", "ein roter stern", "[a red star", "a red] star", "[] red star",
           "[a [red] star]"]


def _cases(phrases):
    return [(m, ph) for m in MODELS for ph in phrases]


@pytest.mark.parametrize("model, phrase", _cases(REFUSED))
def test_bad_phrases_refused_with_one_line(model, phrase, model_checkpoints, grounders, tiny_bench, tmp_path, capsys):
    image = str(tiny_bench / "images" / "000025.jpg")
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "ground", image, "--phrase", phrase, "--checkpoint", str(model_checkpoints[model]),
                        "--out", str(out))
    _assert_refused(code, err, out)
    with pytest.raises(PhrasegroundError) as e:
        grounders[model](image, phrase)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model, phrase", _cases(TOLERATED))
def test_odd_phrases_grounded_with_unknown_words(model, phrase, model_checkpoints, grounders, tiny_bench, tmp_path,
                                                 capsys):
    image = tiny_bench / "images" / "000025.jpg"
    code, _, err = _cli(capsys, "ground", str(image), "--phrase", phrase, "--checkpoint", str(model_checkpoints[model]),
                        "--out", str(tmp_path / "out"))
    assert code == 0, err
    rec = json.loads((tmp_path / "out" / "grounding.json").read_text())
    _assert_inside(rec, (128, 128))
    assert rec["predictions"][0]["unknown_words"] == TOLERATED[phrase]
    assert len(rec["predictions"][0]["overlay"]) <= 60
    api = grounders[model](image, phrase)
    assert api["predictions"][0]["unknown_words"] == TOLERATED[phrase]


def test_one_bad_image_in_a_batch_is_counted_not_fatal(model_checkpoints, tiny_bench, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for kind in ("rgba", "text_as_jpg", "gray16", "truncated"):
        make_image(kind, folder)
    code, out, err = _cli(capsys, "ground", "--images", str(folder), "--phrase", "a red star",
                          "--checkpoint", str(model_checkpoints["mlmcs"]), "--out", str(tmp_path / "out"))
    good = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    bad = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert code == 1 and sorted(Path(r["image"]).stem for r in good) == ["gray16", "rgba"]
    assert sorted(Path(r["request"]).stem for r in bad) == ["text_as_jpg", "truncated"]
    assert len(err.strip().splitlines()) == 2  # one line per bad image
