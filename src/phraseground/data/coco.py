"""MS-COCO captions (``annotations/captions_{train,val}2014.json``): image-caption pairs.

Layout under ``root``::

    annotations/captions_train2014.json   images[] (id, file_name, width, height), annotations[]
    annotations/captions_val2014.json
    train2014/COCO_train2014_000000057870.jpg
    val2014/...

Captions have no phrases. Image sizes come from the annotation file.
"""
from __future__ import annotations

from pathlib import Path

from phraseground.io import get_field, load_json, require_file
from phraseground.data.types import Caption, ImageSample, ReadReport
from phraseground.errors import ConfigError, DataFormatError

COCO_SPLITS = ("train", "val")


def read_coco(
    root: Path, split: str | None = None, require_images: bool = True, *, year: str = "2014"
) -> tuple[list[ImageSample], ReadReport]:
    """Read MS-COCO caption annotations.

    Args:
        root: the COCO folder (holding ``annotations/`` and the image folders).
        split: "train" or "val"; None reads both.
        require_images: raise DataFormatError for a missing image file; when False, missing
            images are left for the caller (``prepare_dataset``) to count.
        year: the release year in the file names ("2014", or "2017").

    Returns:
        One sample per image that has captions (text whitespace-normalised), and the
        tolerated oddities, all skipped: empty captions, captions of unknown images and
        images without captions.
    """
    root = Path(root)
    if split is not None and split not in COCO_SPLITS:
        raise ConfigError(f"unknown COCO split '{split}'; expected one of {', '.join(COCO_SPLITS)}")
    report = ReadReport()
    samples: list[ImageSample] = []
    for name in [split] if split else COCO_SPLITS:
        ann = root / "annotations" / f"captions_{name}{year}.json"
        samples += _read_caption_file(ann, root / f"{name}{year}", require_images, report)
    return samples, report


def _read_caption_file(
    path: Path, image_dir: Path, require_images: bool, report: ReadReport
) -> list[ImageSample]:
    data = load_json(path)
    images = get_field(data, "images", list, path, "top level")
    annotations = get_field(data, "annotations", list, path, "top level")
    captions: dict[int, list[Caption]] = {}
    info: dict[int, tuple[str, int, int]] = {}
    for i, im in enumerate(images):
        where = f"images[{i}]"
        image_id = get_field(im, "id", int, path, where)
        if image_id in info:
            raise DataFormatError(path, f"{where}: duplicate image id {image_id}")
        info[image_id] = (
            get_field(im, "file_name", str, path, where),
            get_field(im, "width", int, path, where),
            get_field(im, "height", int, path, where),
        )
        captions[image_id] = []
    for i, a in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = get_field(a, "image_id", int, path, where)
        text = get_field(a, "caption", str, path, where)
        if image_id not in captions:
            report.add("caption_of_unknown_image", f"{path.name} {where} image_id={image_id}")
            continue
        text = " ".join(text.split())
        if not text:
            report.add("empty_caption", f"{path.name} {where}")
            continue
        captions[image_id].append(Caption(text))
    samples = []
    for image_id, (file_name, width, height) in info.items():
        if not captions[image_id]:
            report.add("image_without_captions", f"{path.name} image id {image_id}")
            continue
        image_path = image_dir / file_name
        if require_images:
            require_file(image_path)
        samples.append(ImageSample(str(image_id), image_path, width, height, tuple(captions[image_id])))
    return samples
