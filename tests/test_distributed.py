"""DDP global batch: with ``train.global_batch`` the batch-softmax (mlmcs) and triplet (dsve)
losses of 2 gloo processes with batch B each equal those of 1 process with batch 2B on the same
items, and so do the gradients after DDP's average."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import free_port

VOCAB = ["a", "red", "blue", "star", "square", "left", "of", "the", "small", "big"]
B = 3
ARGS = {
    "mlmcs": {"dim": 16, "grid": 4, "word_dim": 16},
    "dsve": {"maps": 16, "dim": 16, "word_dim": 16, "sru_layers": 1, "sru_dropout": 0.0, "localize_k": 4,
             "warmup_epochs": 0},
}

# builds the model, the 2B items and the loss; shared by the parent (1 process) and the ranks
_COMMON = textwrap.dedent("""
    import torch
    from phraseground.models.base import TrainBatch
    from phraseground.models.registry import create_model
    from phraseground.encoders.vision import get_backbone_spec

    def setup(name, args, vocab, n):
        torch.manual_seed(0)
        model = create_model(name, vocab=vocab, **args)
        model.on_epoch_start(0)
        spec = get_backbone_spec(model.cfg.backbone)
        g = torch.Generator().manual_seed(1)
        side = model.feature_grid or 5
        feats = {t: torch.randn(n, spec.channels[t], side, side, generator=g) for t in model.feature_taps}
        tokens = [[vocab[int(i)] for i in torch.randint(len(vocab), (int(k),), generator=g)]
                  for k in torch.randint(2, 7, (n,), generator=g)]
        image_index = torch.arange(n)
        image_index[n - 1] = 0  # two captions of one image, on different ranks: not a negative pair
        return model, feats, tokens, image_index

    def batch(feats, tokens, image_index, lo, hi, gather=None):
        return TrainBatch({t: f[lo:hi] for t, f in feats.items()}, tokens[lo:hi], None, image_index[lo:hi], gather=gather)
""")

_RANK = _COMMON + textwrap.dedent("""
    import json, sys, torch.distributed as dist
    from phraseground.train.distributed import Gatherer
    out, b, vocab, all_args = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), json.loads(sys.argv[4])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, args in all_args.items():
        model, feats, tokens, image_index = setup(name, args, vocab, b * world)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        gather = Gatherer()
        loss = ddp(batch(feats, tokens, image_index, rank * b, (rank + 1) * b, gather))["loss"]
        (loss * gather.loss_scale()).backward()  # as the training loop does
        results[name] = {"loss": loss.detach(), "grads": {k: p.grad for k, p in model.named_parameters() if p.grad is not None}}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()  # neither rank tears gloo down while the other still uses it (rank 1 aborted at exit)
    dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Loss and DDP-averaged gradients of rank 0 when 2 gloo processes take B items each."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "rank.py").write_text(_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(tmp / "rank.py"), str(tmp / "rank0.pt"), str(B), ",".join(VOCAB), json.dumps(ARGS)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp / "rank0.pt", weights_only=True)


@pytest.mark.parametrize("name", ["mlmcs", "dsve"])
def test_two_processes_batch_b_equal_one_process_batch_2b(name, two_ranks):
    ranks = two_ranks[name]
    scope: dict = {}
    exec(_COMMON, scope)
    model, feats, tokens, image_index = scope["setup"](name, ARGS[name], VOCAB, 2 * B)
    loss = model(scope["batch"](feats, tokens, image_index, 0, 2 * B))["loss"]
    loss.backward()
    assert torch.allclose(ranks["loss"], loss.detach(), atol=1e-6), (float(ranks["loss"]), float(loss))
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ranks["grads"].keys()
    for k in grads:
        assert torch.allclose(ranks["grads"][k], grads[k], atol=1e-6, rtol=1e-4), k
    # without the gather each process would see only its own 3 items: a different loss
    local = model(scope["batch"](feats, tokens, image_index, 0, B))["loss"]
    assert not torch.allclose(local.detach(), loss.detach(), atol=1e-3)
