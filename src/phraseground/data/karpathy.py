"""The Karpathy split of MS-COCO (``dataset_coco.json``): image-caption pairs.

``images[]`` carry ``filepath`` (train2014 / val2014), ``filename``, ``cocoid``, ``split``
(train, val, test or restval) and ``sentences[]`` (``raw``, ``tokens``). Images are at
``root/<filepath>/<filename>``. The file has no image sizes: they are read from the image
headers (``(0, 0)`` for a missing image when images are not required).
"""
from __future__ import annotations

from pathlib import Path

from phraseground.data.validate import image_size
from phraseground.io import get_field, load_json
from phraseground.data.types import Caption, ImageSample, ReadReport
from phraseground.errors import ConfigError, DataFormatError

KARPATHY_SPLITS = ("train", "val", "test", "restval")


def read_karpathy(
    root: Path,
    split: str | None = None,
    require_images: bool = True,
    *,
    restval_into_train: bool = False,
    annotation_file: str = "dataset_coco.json",
) -> tuple[list[ImageSample], ReadReport]:
    """Read the Karpathy COCO split.

    Args:
        root: the COCO folder holding ``dataset_coco.json`` and the image folders.
        split: "train", "val", "test" or "restval"; None reads every image.
        require_images: raise DataFormatError for a missing image file.
        restval_into_train: count the 30,504 "restval" images as "train" (the usual 113k
            training set).
        annotation_file: the split file's name under ``root``.

    Returns:
        One sample per image with its captions (the ``raw`` text, whitespace-normalised), and
        the tolerated oddities: empty sentences are skipped and counted.
    """
    root = Path(root)
    if split is not None and split not in KARPATHY_SPLITS:
        raise ConfigError(f"unknown Karpathy split '{split}'; expected one of {', '.join(KARPATHY_SPLITS)}")
    path = root / annotation_file
    images = get_field(load_json(path), "images", list, path, "top level")
    report = ReadReport()
    samples = []
    for i, im in enumerate(images):
        where = f"images[{i}]"
        image_split = get_field(im, "split", str, path, where)
        if image_split not in KARPATHY_SPLITS:
            raise DataFormatError(path, f"{where}: unknown split '{image_split}'")
        if restval_into_train and image_split == "restval":
            image_split = "train"
        if split is not None and image_split != split:
            continue
        captions = []
        for j, sentence in enumerate(get_field(im, "sentences", list, path, where)):
            text = " ".join(get_field(sentence, "raw", str, path, f"{where}.sentences[{j}]").split())
            if text:
                captions.append(Caption(text))
            else:
                report.add("empty_caption", f"{where}.sentences[{j}]")
        if not captions:
            report.add("image_without_captions", where)
            continue
        image_path = root / get_field(im, "filepath", str, path, where) / get_field(im, "filename", str, path, where)
        width, height = image_size(image_path, required=require_images)
        image_id = get_field(im, "cocoid", int, path, where)
        samples.append(ImageSample(str(image_id), image_path, width, height, tuple(captions)))
    return samples, report
