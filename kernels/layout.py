"""Memory layout of the mixing ops: every example b of h is one dense row, whatever h's strides.

Both mixes (DESIGN.md "Contract: the mixing ops") act on whole examples: out[b] = sum_k W[b, k] * h[perm[k, b]],
with W a scalar (simplex_mix) or one weight per channel (mask_mix). The fast paths therefore see h as a 2-D
`[B, D]` array of rows in the memory order of the output, which `empty_out(h)` fixes: `torch.empty_like(h)`
unless the batch is not the outermost dim. The fake (meta) implementations use the same rule, so eager and
compiled strides agree. Within a row the elements sit in the order `[outer, groups, inner]`: simplex_mix is one
group (`[1, 1, D]`); mask_mix on a contiguous h is `[1, C, S]`, on a channels-last h `[H*W, C, 1]`. The group
(channel) of column d is `(d // inner) % groups`.

Inputs already laid out like the output are used in place (a view); any other input (strided slices, a grad that
arrives with other strides) is copied once into that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowLayout:
    """Where the elements of one example live. `order`: h's dims 1.. from outermost to innermost in memory."""

    order: tuple[int, ...]
    outer: int
    groups: int
    inner: int

    @property
    def row_len(self) -> int:
        return self.outer * self.groups * self.inner

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """t [B, C, *S] -> [B, D] rows in this layout (a view when t is already in it, else one copy)."""
        tp = t.permute(0, *self.order)
        return tp.contiguous().view(t.shape[0], self.row_len)

    def unrows(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Inverse of `rows`: contiguous [B, D] rows -> a [B, C, *S] view with the strides of empty_out(h)."""
        tp = rows.view(shape[0], *[shape[d] for d in self.order])
        back = [0] * len(shape)
        for pos, d in enumerate(self.order, start=1):
            back[d] = pos
        return tp.permute(*back)


def empty_out(h: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """The output of a mix of h (real and fake impls alike): `empty_like(h)` (same strides for dense h, so
    channels-last stays channels-last) when each example is one dense row there, else contiguous."""
    out = torch.empty_like(h, device=device)
    if out.shape[0] > 1 and out.stride(0) != out[0].numel():  # batch not the outermost dim (e.g. a transposed grad)
        out = torch.empty_like(h, device=device, memory_format=torch.contiguous_format)
    return out


def row_layout(h: torch.Tensor, per_channel: bool) -> RowLayout:
    """Layout of `empty_out(h)`: one group for simplex_mix, C groups for mask_mix."""
    out = empty_out(h, device="meta")  # strides only, no memory
    # Sort dims 1.. by stride, outermost first (stable: size-1 dims keep their place, their stride is arbitrary).
    order = tuple(sorted(range(1, out.dim()), key=lambda d: -out.stride(d)))
    sizes = [out.shape[d] for d in order]
    if not per_channel:
        return RowLayout(order, 1, 1, math.prod(sizes))
    p = order.index(1)  # where the channel dim sits in memory
    return RowLayout(order, math.prod(sizes[:p]), out.shape[1], math.prod(sizes[p + 1 :]))


def group_weights(weights: torch.Tensor) -> torch.Tensor:
    """w [B, K] -> [B, K, 1] (one group); m [B, K, C] unchanged: per-group weights [B, K, G] for every path."""
    return weights.unsqueeze(2) if weights.dim() == 2 else weights


def inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    """inv [K, B] with inv[k, perm[k, b]] = b: the backward pass gathers through it (no atomics, deterministic)."""
    ar = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(1, perm, ar)  # each target index is written exactly once


def weights_at_source(weights: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The weight each source row receives in the backward pass: w_src[j, k] = weights[inv[k, j], k] (same shape)."""
    idx = inv.t()  # [B, K]: which output row took row j as its k-th partner
    if weights.dim() == 3:
        idx = idx.unsqueeze(2).expand_as(weights)
    return weights.gather(0, idx)
