"""Mixing over the global batch, whatever the number of processes (one place for both trainers).

- `draws(seed, step, phase, device)`: the generator of one step's random draws (partners, weights, masks,
  augmentations). It is counter-based: seeded by a hash of (seed, step, phase), so every rank holds the same
  generator without talking to the others, and a resumed run (on any number of processes) draws what the
  uninterrupted one would have; there is no generator state to save.
- `gather_rows(x, world)`: the rows of every rank, concatenated in rank order, differentiable: the backward pass
  gives each rank the gradient of its own rows summed over every rank's loss (an all-reduce of the gradient, then
  the rank's slice), which is what averaging the parameters' gradients over ranks expects.
- `local_rows(x, rank, world)`: this rank's slice of a tensor over the global (micro-)batch.

A step draws over the global batch (world x micro rows), mixes the gathered rows, and keeps its own rows: the
draws and mixes are those of a one-process run of the same global batch, on 1, 2 or N processes.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from amr_fast import comm


def draws(seed: int, step: int, phase: str | int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded by a hash of (seed, step, phase): the same on every rank and every launch."""
    key = hashlib.blake2b(f"{seed}/{step}/{phase}".encode(), digest_size=8).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(key, "little") >> 1)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return comm.all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        comm.all_reduce(grad)  # every rank's loss reaches every row
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor, world: int) -> torch.Tensor:
    """[B, ...] per rank -> [world * B, ...], rank r's rows at r * B; the identity on one process."""
    if world <= 1:
        return x
    return _GatherRows.apply(x) if x.requires_grad else comm.all_gather(x)


def local_rows(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of a tensor over the global batch (its first dimension, world x B rows)."""
    if world <= 1:
        return x
    n = x.shape[0] // world
    return x[rank * n : (rank + 1) * n]
