"""Real photographs as a small grounding dataset: photos shipped inside Python packages
(scikit-image, scikit-learn, matplotlib) with hand-drawn boxes (``photos.jsonl``).

A case is ``{"image": REF, "phrase": "...", "box": [x0, y0, x1, y1]}`` (absolute pixel xyxy,
0-based, continuous). ``REF`` names a photo inside a package: ``skimage:NAME``
(``skimage.data.NAME()``; ``skimage:motorcycle`` is the left image of ``stereo_motorcycle``),
``sklearn:FILE`` (``sklearn.datasets.load_sample_image``), ``matplotlib:FILE``
(``matplotlib.cbook.get_sample_data``). The reader writes each photo once as a lossless PNG
into a cache folder, so every path of the project (``load_image``, features, ``ground``) reads
it like any other image file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PhrasegroundError
from ..io import atomic_write
from .images import image_size, load_image
from .types import Caption, ImageSample, Phrase

PACKAGED_CASES = Path(__file__).resolve().parent / "photos.jsonl"

#: ImageNet-1k class indices expected in the top 5 of a real ImageNet network (fixture README).
EXPECTED_CLASSES: dict[str, list[int]] = {
    "skimage:chelsea": [281, 282, 285],              # tabby, tiger cat, Egyptian cat
    "skimage:coffee": [967, 968],                    # espresso, cup
    "skimage:camera": [872, 759],                    # tripod, reflex camera
    "skimage:motorcycle": [665, 670, 535],           # moped, motor scooter, disk brake
    "skimage:rocket": [657, 744],                    # missile, projectile
    "sklearn:china.jpg": [698, 442],                 # palace, bell cote
    "sklearn:flower.jpg": [985],                     # daisy
    "matplotlib:grace_hopper.jpg": [652, 400, 667, 457],  # military uniform, academic gown, mortarboard, bow tie
}


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PhrasegroundError(f"photo fixtures need the package {package}: pip install {package} "
                                f"(or pip install 'phraseground[photos]')") from None


def load_photo(ref: str) -> Image.Image:
    """The RGB photograph a reference names (see the module doc)."""
    kind, _, name = ref.partition(":")
    if kind == "skimage":
        data = _need("skimage.data", "scikit-image")
        if name == "motorcycle":
            arr = data.stereo_motorcycle()[0]
        elif name.isidentifier() and callable(getattr(data, name, None)):
            arr = getattr(data, name)()
        else:
            raise PhrasegroundError(f"unknown scikit-image photo {ref!r}")
    elif kind == "sklearn":
        arr = _need("sklearn.datasets", "scikit-learn").load_sample_image(name)
    elif kind == "matplotlib":
        import matplotlib.cbook

        return load_image(Path(matplotlib.cbook.get_sample_data(name, asfileobj=False)))
    else:
        raise PhrasegroundError(f"unknown photo reference {ref!r}: use skimage:NAME, sklearn:FILE or matplotlib:FILE")
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "phraseground" / "photos"


def photo_file(ref: str, cache_dir: Path | None = None) -> Path:
    """The photo written once as PNG under ``cache_dir`` (written atomically; reused when present)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / (ref.replace(":", "_").replace("/", "_").rsplit(".", 1)[0] + ".png")
    if not path.is_file():
        image = load_photo(ref)
        with atomic_write(path) as f:
            image.save(f, format="PNG")
    return path


def read_photo_cases(path: Path | None = None, cache_dir: Path | None = None) -> list[ImageSample]:
    """One ImageSample per photo; each case is a caption that is its phrase (type ``photo``).

    Args:
        path: a ``photos.jsonl`` (default: the packaged copy of the fixtures).
    """
    path = Path(path) if path else PACKAGED_CASES
    if path.is_dir():
        path = path / "photos.jsonl"
    if not path.is_file():
        raise PhrasegroundError(f"{path}: photo cases file not found")
    by_image: dict[str, list[Caption]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            ref, text, box = case["image"], " ".join(str(case["phrase"]).split()), tuple(float(v) for v in case["box"])
        except (ValueError, KeyError, TypeError) as e:
            raise PhrasegroundError(f"{path}:{n}: malformed photo case ({e})") from None
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]) or not text:
            raise PhrasegroundError(f"{path}:{n}: need a phrase and a box x0 < x1, y0 < y1, got {case}")
        phrase = Phrase(text, 0, len(text.split()), str(n), ("photo",), (box,))
        by_image.setdefault(ref, []).append(Caption(text, (phrase,)))
    samples = []
    for ref, captions in by_image.items():
        file = photo_file(ref, cache_dir)
        w, h = image_size(file, exif=True)
        for cap in captions:
            x0, y0, x1, y1 = cap.phrases[0].boxes[0]
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise PhrasegroundError(f"{path}: box {cap.phrases[0].boxes[0]} of {cap.text!r} leaves the {w}x{h} photo {ref}")
        samples.append(ImageSample(ref, file, w, h, tuple(captions)))
    return samples
