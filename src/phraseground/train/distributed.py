"""Distributed training helpers: the global batch of contrastive losses under torchrun.

Under DDP every process holds its own ``batch_size`` items. Losses that compare every caption
with every image of the batch (mlmcs' batch softmax, dsve's triplet loss with hardest negatives)
then see only the local items, so results would depend on the number of processes. With
``train.global_batch: true`` (default) the models all-gather their embeddings through
``TrainBatch.gather``: each process computes the loss of the whole global batch, the local
part of the gathered tensors keeps its gradient (the other parts are constants, as in
open_clip), and the loss is multiplied by the world size before ``backward`` so that DDP's
gradient average equals the gradient of the one-process loss over the global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class Gatherer:
    """``gather(x)``: x of every rank concatenated along dim 0 in rank order, the local part
    differentiable. Other dims may differ across ranks (e.g. text length): they are padded with
    zeros (False for masks) to the largest. ``used`` tells whether the model gathered anything."""

    def __init__(self) -> None:
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.used = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.used = True
        is_bool = x.dtype == torch.bool
        local = x.to(torch.uint8) if is_bool else x
        shape = torch.tensor(local.shape, dtype=torch.long, device=local.device)
        shapes = [torch.empty_like(shape) for _ in range(self.world)]
        dist.all_gather(shapes, shape)
        sizes = torch.stack(shapes)  # (world, ndim)
        top = sizes.amax(0).tolist()
        pad = []
        for d in reversed(range(1, local.dim())):
            pad += [0, top[d] - local.shape[d]]
        padded = torch.nn.functional.pad(local, pad) if any(pad) else local
        if top[0] != local.shape[0]:
            padded = torch.cat([padded, padded.new_zeros(top[0] - local.shape[0], *padded.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.detach().contiguous())
        parts[self.rank] = padded  # the local part keeps its gradient
        out = torch.cat([p[: int(n)] for p, n in zip(parts, sizes[:, 0])])
        return out.bool() if is_bool else out

    def loss_scale(self) -> float:
        """Factor of the loss before backward: the world size when the loss was global."""
        return float(self.world) if self.used else 1.0


def wrap_ddp(net: torch.nn.Module, world: int, current: torch.nn.Module | None,
             signature: tuple | None) -> tuple[torch.nn.Module, tuple]:
    """The DDP wrapper of ``net`` for the current trainable set: rebuilt whenever a staged
    schedule changed which parameters require gradients (DDP registers them at construction;
    a parameter unfrozen later would otherwise train on each process's local gradient only,
    and one frozen later would make DDP wait for a gradient that never comes)."""
    now = tuple(p.requires_grad for p in net.parameters())
    if world == 1:
        return net, now
    if current is None or now != signature:
        return torch.nn.parallel.DistributedDataParallel(net), now
    return current, now
