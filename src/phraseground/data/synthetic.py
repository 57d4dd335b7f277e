"""The embedded default: a synthetic grounding benchmark written in the Flickr30k Entities format.

Scenes are textured backgrounds with 2–5 coloured shapes (8 shapes × 8 colours × 3 sizes,
overlapping at most a little). Each image gets 5 captions mentioning 1–3 of its objects with
attributes and spatial relations ("a small red star to the left of a large blue square"), some
with a scene phrase without a box ("on a striped background") or a ``notvisual`` phrase. In most
images another object shares the referred object's shape or colour, so the text matters.
Everything is a deterministic function of (seed, image index).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from phraseground.io import atomic_write, write_text

SHAPES = ("circle", "ring", "square", "diamond", "triangle", "hexagon", "star", "cross")
SHAPE_TYPES = {
    "circle": "round", "ring": "round",
    "square": "polygon", "diamond": "polygon", "triangle": "polygon", "hexagon": "polygon",
    "star": "figure", "cross": "figure",
}
COLOURS = {
    "red": (215, 35, 35), "green": (35, 165, 50), "blue": (40, 75, 215), "yellow": (235, 215, 35),
    "purple": (135, 45, 175), "orange": (245, 135, 25), "cyan": (35, 195, 205), "pink": (245, 125, 185),
}
SIZES = {"small": 0.14, "medium": 0.18, "large": 0.23}  # radius as a fraction of the image side
TEXTURES = ("striped", "checkered", "speckled", "cloudy")
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.04, "test": 0.16}
MAX_OVERLAP_IOU = 0.08


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float

    def polygon(self) -> list[tuple[float, float]]:
        """Outline vertices (for circles and rings: a fine polygon of the disc)."""
        n_pts = {"square": 4, "diamond": 4, "triangle": 3, "hexagon": 6}
        r, a = self.radius, self.angle
        if self.shape in ("circle", "ring"):
            angles, radii = np.linspace(0, 2 * math.pi, 48, endpoint=False), np.full(48, r)
        elif self.shape == "star":
            angles = a + np.arange(10) * math.pi / 5 - math.pi / 2
            radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        elif self.shape == "cross":
            w = 0.38 * r
            pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
            ca, sa = math.cos(a), math.sin(a)
            return [(self.cx + x * ca - y * sa, self.cy + x * sa + y * ca) for x, y in pts]
        else:
            k = n_pts[self.shape]
            offset = {"square": math.pi / 4, "diamond": 0.0, "triangle": -math.pi / 2, "hexagon": 0.0}[self.shape]
            angles, radii = a + offset + np.arange(k) * 2 * math.pi / k, np.full(k, r)
        return [(self.cx + rr * math.cos(t), self.cy + rr * math.sin(t)) for t, rr in zip(angles, radii)]

    def box(self, size: int) -> tuple[int, int, int, int]:
        """Tight 0-based continuous xyxy pixel box, clipped to the image."""
        pts = np.array(self.polygon())
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int)
        return max(0, int(x0)), max(0, int(y0)), min(size, int(x1)), min(size, int(y1))


def _box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A muted textured background (H, W, 3) uint8 and its texture name."""
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    base = rng.uniform(70, 170, size=3)
    alt = np.clip(base + rng.uniform(-45, 45, size=3), 30, 210)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if texture == "striped":
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 18)
        t = (np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif texture == "checkered":
        cell = rng.integers(6, 16)
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    elif texture == "speckled":
        t = (rng.random((size, size)) < 0.25).astype(np.float32)
    else:  # cloudy: smooth low-frequency noise
        coarse = rng.random((6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32) / 255
    img = base[None, None, :] * (1 - t[..., None]) + alt[None, None, :] * t[..., None]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), texture


def _sample_objects(rng: np.random.Generator, size: int) -> list[SceneObject]:
    """2–5 objects with unique (size, colour, shape) triples; most share shape or colour with another."""
    n_target = int(rng.integers(2, 6))
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    attempts = 0
    while len(objects) < n_target and attempts < 200:
        attempts += 1
        if objects and rng.random() < 0.75:  # a distractor sharing shape or colour with an earlier object
            ref = objects[int(rng.integers(len(objects)))]
            shape = ref.shape if rng.random() < 0.5 else SHAPES[rng.integers(len(SHAPES))]
            colour = ref.colour if shape != ref.shape else list(COLOURS)[rng.integers(len(COLOURS))]
        else:
            shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        size_name = list(SIZES)[rng.integers(len(SIZES))]
        if any((o.shape, o.colour, o.size) == (shape, colour, size_name) for o in objects):
            continue
        radius = SIZES[size_name] * size * rng.uniform(0.92, 1.08)
        margin = radius * 0.9
        obj = SceneObject(shape, colour, size_name, float(rng.uniform(margin, size - margin)),
                          float(rng.uniform(margin, size - margin)), float(radius), float(rng.uniform(-0.25, 0.25)))
        box = obj.box(size)
        if any(_box_iou(box, b) > MAX_OVERLAP_IOU for b in boxes):
            continue
        objects.append(obj)
        boxes.append(box)
    return objects


def _render(rng: np.random.Generator, size: int, objects: list[SceneObject]) -> tuple[Image.Image, str]:
    bg, texture = _background(rng, size)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    for o in objects:
        rgb = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLOURS[o.colour])
        outline = tuple(max(0, c - 60) for c in rgb)
        if o.shape == "ring":
            r = o.radius
            draw.ellipse([o.cx - r, o.cy - r, o.cx + r, o.cy + r], outline=rgb, width=max(2, int(r * 0.35)))
        elif o.shape == "circle":
            r = o.radius
            draw.ellipse([o.cx - r, o.cy - r, o.cx + r, o.cy + r], fill=rgb, outline=outline)
        else:
            draw.polygon(o.polygon(), fill=rgb, outline=outline)
    return img, texture


def render_single_object(rng: np.random.Generator, size: int) -> tuple[Image.Image, SceneObject]:
    """One random object on a textured background (the backbone's pretraining task)."""
    shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
    size_name = list(SIZES)[rng.integers(len(SIZES))]
    radius = SIZES[size_name] * size * rng.uniform(0.92, 1.08)
    cx, cy = rng.uniform(radius * 0.9, size - radius * 0.9, size=2)
    obj = SceneObject(shape, colour, size_name, float(cx), float(cy), float(radius), float(rng.uniform(-0.25, 0.25)))
    return _render(rng, size, [obj])[0], obj


_RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return _RELATIONS["left" if dx < 0 else "right"]
    return _RELATIONS["above" if dy < 0 else "below"]


def _describe(rng: np.random.Generator, obj: SceneObject, objects: list[SceneObject]) -> str:
    """A referring phrase naming the object's attributes; the size is dropped only when unambiguous."""
    same_cs = sum(1 for o in objects if (o.colour, o.shape) == (obj.colour, obj.shape))
    article = "a" if rng.random() < 0.7 else "the"
    if same_cs == 1 and rng.random() < 0.35:
        return f"{article} {obj.colour} {obj.shape}"
    return f"{article} {obj.size} {obj.colour} {obj.shape}"


def _caption(rng: np.random.Generator, objects: list[SceneObject], chains: list[int], scene_chain: int, texture: str) -> str:
    """One annotated caption in Flickr30k Entities markup."""
    k = int(rng.integers(1, min(3, len(objects)) + 1))
    picked = [int(i) for i in rng.permutation(len(objects))[:k]]

    def tag(i: int) -> str:
        o = objects[i]
        return f"[/EN#{chains[i]}/{SHAPE_TYPES[o.shape]} {_describe(rng, o, objects)}]"

    parts = [tag(picked[0])]
    for j in picked[1:]:
        joiner = "and" if len(parts) > 1 else ""
        parts.append(f"{joiner} {_relation(objects[picked[0]], objects[j])} {tag(j)}".strip())
    body = " ".join(parts)
    r = rng.random()
    if r < 0.3:
        body += f" on [/EN#{scene_chain}/scene a {texture} background]"
    elif r < 0.45:
        body = f"[/EN#0/notvisual this picture] shows {body}"
    tokens = (body + " .").split(" ")
    first = 1 if tokens[0].startswith("[/EN#") else 0  # capitalise the first word, not the tag
    tokens[first] = tokens[first].capitalize()
    return " ".join(tokens)


def _annotation_xml(image_id: str, size: int, objects: list[SceneObject], chains: list[int], scene_chain: int) -> str:
    lines = ["<annotation>", f"\t<filename>{image_id}.jpg</filename>",
             f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n\t</size>"]
    for o, c in zip(objects, chains):
        x0, y0, x1, y1 = o.box(size)  # continuous 0-based -> 1-based inclusive
        lines.append(f"\t<object>\n\t\t<name>{c}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{x0 + 1}</xmin>\n\t\t\t<ymin>{y0 + 1}</ymin>"
                     f"\n\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>")
    lines.append(f"\t<object>\n\t\t<name>{scene_chain}</name>\n\t\t<scene>1</scene>\n\t\t<nobndbox>1</nobndbox>\n\t</object>")
    lines.append("</annotation>\n")
    return "\n".join(lines)


def generate_image(out: Path, index: int, seed: int, size: int) -> str:
    """Write image ``index`` of the benchmark (image, sentences, annotation); return its id."""
    rng = np.random.default_rng([seed, index])
    image_id = f"{index + 1:06d}"
    objects = _sample_objects(rng, size)
    img, texture = _render(rng, size, objects)
    chains = [(index + 1) * 10 + k + 1 for k in range(len(objects))]
    scene_chain = (index + 1) * 10 + 9
    captions = [_caption(rng, objects, chains, scene_chain, texture) for _ in range(5)]
    with atomic_write(out / "images" / f"{image_id}.jpg", fsync=False) as f:  # regenerable: no fsync per file
        img.save(f, format="JPEG", quality=92)
    write_text(out / "Sentences" / f"{image_id}.txt", "\n".join(captions) + "\n", fsync=False)
    write_text(out / "Annotations" / f"{image_id}.xml", _annotation_xml(image_id, size, objects, chains, scene_chain), fsync=False)
    return image_id


def split_of(index: int, n_images: int) -> str:
    """Deterministic split by position: the first 80 % train, then 4 % val, the rest test
    (at least one image in each split)."""
    n_val = max(1, int(round(n_images * SPLIT_FRACTIONS["val"])))
    n_train = min(int(round(n_images * SPLIT_FRACTIONS["train"])), n_images - n_val - 1)
    return "train" if index < n_train else "val" if index < n_train + n_val else "test"


PARALLEL_FROM = 200  # images; below this, one process (a worker pool's start costs more than it saves)


def _generated_ids(out: Path, n_images: int, seed: int, size: int, workers: int) -> Iterator[str]:
    """The ids of images 0..n-1, in order, each written as it is generated: in ``workers``
    forked processes on Linux (every image draws from its own generator, seeded by (seed,
    index), so the files are the same in any process), else in this one."""
    if workers > 1 and n_images >= PARALLEL_FROM and sys.platform == "linux":
        ctx = multiprocessing.get_context("fork")  # no re-import of the caller's __main__, unlike spawn
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            yield from pool.map(generate_image, repeat(out), range(n_images), repeat(seed), repeat(size), chunksize=16)
        return
    for i in range(n_images):
        yield generate_image(out, i, seed, size)


def generate_benchmark(out: Path, n_images: int = 2500, seed: int = 0, size: int = 128, progress: bool = False,
                       workers: int | None = None) -> dict[str, int]:
    """Write the whole benchmark to ``out``; return the number of images per split.

    ``workers``: processes generating images (default: this process's CPUs); the files do not
    depend on it."""
    if n_images < 3:
        raise ValueError("the benchmark needs at least 3 images (one per split)")
    if size < 48:
        raise ValueError("image size must be at least 48 px")
    out = Path(out)
    for sub in ("images", "Sentences", "Annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {s: [] for s in SPLIT_FRACTIONS}
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ids = _generated_ids(out, n_images, seed, size, workers)
    if progress:
        from tqdm import tqdm

        ids = tqdm(ids, total=n_images, desc="synth", unit="img")
    for i, image_id in enumerate(ids):
        splits[split_of(i, n_images)].append(image_id)
    for name, ids in splits.items():
        write_text(out / f"{name}.txt", "\n".join(ids) + "\n")
    return {k: len(v) for k, v in splits.items()}
