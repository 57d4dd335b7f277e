"""Measure ``cam`` variants on the photo cases (15 phrases on 9 packaged photos): pointing
(``akbari2019``) and box accuracy (IoU >= 0.5) for class text, weighting, top-k, input size
and multi-scale (the heatmaps of several input sizes averaged).

    OMP_NUM_THREADS=1 python benchmarks/cam_variants.py
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from phraseground.data.images import load_image
from phraseground.data.photos import read_photo_cases
from phraseground.encoders.vision import create_backbone, get_backbone_spec
from phraseground.eval.boxes import BoxAccuracy
from phraseground.eval.pointing import PointingGame
from phraseground.features import images_to_tensor
from phraseground.models.registry import create_model


def main() -> None:
    torch.set_num_threads(1)
    samples = read_photo_cases()
    spec = get_backbone_spec("efficientnet_lite0")
    bb = create_backbone("efficientnet_lite0", taps=["head"])
    images = [load_image(s.image_path) for s in samples]
    sizes = (224, 320, 448)
    feats = {}
    with torch.no_grad():
        for size in sizes:
            # stored as float16, as the project's feature path does
            feats[size] = [bb(images_to_tensor([im], spec, size))["head"].half().float() for im in images]
    cases = [(i, cap) for i, s in enumerate(samples) for cap in s.captions]

    def run(scales, **cfg):
        model = create_model("cam", **cfg).eval()
        game, boxes, concepts = PointingGame("akbari2019"), BoxAccuracy("akbari2019"), []
        for i, cap in cases:
            s, words = samples[i], cap.text.split()
            maps = []
            for size in scales:
                res = model.ground({"head": feats[size][i]}, [words], [[(0, len(words))]])[0]
                maps.append(F.interpolate(res.heatmaps[None], size=feats[max(scales)][i].shape[-2:], mode="bilinear",
                                          align_corners=False)[0, 0])
            hm = torch.stack(maps).mean(0)
            game.update(cap.phrases[0], s.width, s.height, heatmap=hm)
            boxes.update(cap.phrases[0], s.width, s.height, heatmap=hm)
            concepts.append(res.extras["concepts"][0])
        p, b = game.compute(), boxes.compute()
        return p, b, concepts

    base = dict(class_text="lemmas+gloss", weighting="similarity*probability", top_k=3)
    print("phrase -> concepts (default):")
    _, _, concepts = run((224,), **base)
    for (i, cap), c in zip(cases, concepts):
        print(f"  {samples[i].image_id:28s} {cap.text!r:20s} {[(x['class'].split(',')[0], x['similarity']) for x in c]}")
    variants = [("default (lemmas+gloss, sim*prob, top 3, 224)", (224,), base)]
    for ct in ("lemmas", "gloss"):
        variants.append((f"class_text={ct}", (224,), {**base, "class_text": ct}))
    variants.append(("weighting=similarity", (224,), {**base, "weighting": "similarity"}))
    for k in (1, 5):
        variants.append((f"top_k={k}", (224,), {**base, "top_k": k}))
    variants.append(("min_similarity=0 (always a concept)", (224,), {**base, "min_similarity": -1.0}))
    for size in (320, 448):
        variants.append((f"input {size}", (size,), base))
    for scales in ((224, 320), (224, 320, 448)):
        variants.append((f"multi-scale {scales}", scales, base))
    print(f"{'variant':45s} pointing  box acc.  (n evaluated, skipped)")
    for name, scales, cfg in variants:
        p, b, _ = run(scales, **cfg)
        print(f"{name:45s} {p['accuracy']:.3f}     {b['accuracy']:.3f}     ({p['n_evaluated']}, {sum(p['skipped'].values())})")


if __name__ == "__main__":
    main()
