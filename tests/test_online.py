"""Online features (``data.features: online``): the backbone inside the training step, staged
unfreezing (``train.finetune_backbone_from``) on one process and under DDP (2 gloo processes)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from conftest import free_port, tiny_overrides
from phraseground.features import FeatureSpec, build_backbone
from phraseground.models.checkpoint import load_checkpoint
from phraseground.train.config import load_config
from phraseground.train.loop import train

ONLINE = {"data.features": "online", "train.finetune_backbone_from": 1, "train.caption_sampling": "one",
          "train.checkpoint_every": 0}


def _pretrained() -> dict[str, torch.Tensor]:
    return build_backbone(FeatureSpec("synthcnn", "pretrained", ("c2", "c3", "c4"), 4)).state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_online_training_unfreezes_the_backbone_at_its_epoch(tiny_bench, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_bench, **{**ONLINE, "train.epochs": 1}))
    summary = train(cfg, tmp_path, progress=False)
    assert summary["steps"] == 5  # 20 images, one caption each, batch 4
    frozen = load_checkpoint(tmp_path / "last.pt")["backbone"]
    assert _same(frozen, _pretrained())  # epoch 1: frozen
    cfg = load_config(None, tiny_overrides(tiny_bench, **{**ONLINE, "train.epochs": 2}))
    summary = train(cfg, tmp_path, resume=True, progress=False)  # epoch 2: a training step with the backbone unfrozen
    tuned = load_checkpoint(tmp_path / "last.pt")["backbone"]
    assert tuned.keys() == frozen.keys() and not _same(tuned, frozen)
    heads = [k for k in tuned if ".heads." in k]  # past the deepest tap: not trained (DDP needs every gradient)
    assert heads and all(torch.equal(tuned[k], frozen[k]) for k in heads)
    assert any(not torch.equal(tuned[k], frozen[k]) for k in tuned if k.startswith("net.c2"))
    assert all(torch.isfinite(v).all() for v in tuned.values())
    assert summary["extractor"].trainable
    # evaluation reads features of the fine-tuned backbone, in a store of its own
    from phraseground.features import FeatureExtractor
    from phraseground.models.checkpoint import model_from_checkpoint

    model, ckpt = model_from_checkpoint(tmp_path / "last.pt")
    ext = FeatureExtractor.for_checkpoint(model, ckpt)
    assert ext.spec.weights.startswith("state:") and _same(ext.backbone.state_dict(), tuned)


_RANKS = textwrap.dedent("""
    import sys, torch
    from phraseground.train.config import load_config
    from phraseground.train.loop import train
    out, sets = sys.argv[1], sys.argv[2:]
    summary = train(load_config(None, sets), out, progress=False)
    import torch.distributed as dist
    params = {k: p.detach() for k, p in summary["extractor"].backbone.named_parameters()}  # BN buffers: rank 0's rule
    torch.save(params, f"{out}/backbone-rank{dist.get_rank()}.pt")
""")


def test_staged_unfreezing_under_ddp(tiny_bench, tmp_path):
    """Unfreezing after the DDP wrap must still average the backbone's gradients: both processes
    end with the same fine-tuned backbone."""
    sets = tiny_overrides(tiny_bench, **{**ONLINE, "train.epochs": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PG_BACKEND": "gloo"}
    (tmp_path / "ranks.py").write_text(_RANKS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(tmp_path / "ranks.py"), str(tmp_path), *sets]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"backbone-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _same(a, b)  # gradients were averaged after the switch
    pretrained = _pretrained()
    assert any(not torch.equal(v, pretrained[k]) for k, v in a.items())  # and it did train
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["global_step"] == 2 * (20 // 8)
