"""Memory layout of the mixing ops: every example b of h is one dense row, whatever h's strides.

Both mixes (docs/design.md, "The mixing-op contract") act on whole examples: out[b] = sum_k W[b, k] * h[perm[k, b]],
with W a scalar (simplex_mix) or one weight per channel (mask_mix). The fast paths therefore see h as a 2-D
`[B, D]` array of rows in the memory order of the output, which `empty_out(h)` fixes: `torch.empty_like(h)`
unless the batch is not the outermost dim. The fake (meta) implementations use the same rule, so eager and
compiled strides agree. Within a row the elements sit in the order `[outer, groups, inner]`: simplex_mix is one
group (`[1, 1, D]`); mask_mix on a contiguous h is `[1, C, S]`, on a channels-last h `[H*W, C, 1]`. The group
(channel) of column d is `(d // inner) % groups`.

Masks over positions, or over channels and positions (`m [B, K, *M]`, each entry of M 1 or h's size), use the
same three numbers: the dims m varies along, and any dims between them in memory order, form the `groups` block
(its weights laid out in that memory order by `group_weights`); `outer` and `inner` are the dims before and after
it. E.g. a position mask [B, K, 1, H, W] on a contiguous h is `[C, H*W, 1]`, on a channels-last h `[1, H*W, C]`.

Inputs already laid out like the output are used in place (a view); any other input (strided slices, a grad that
arrives with other strides) is copied once into that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowLayout:
    """Where the elements of one example live. `order`: h's dims 1.. from outermost to innermost in memory;
    `block`: the dims (in that order) whose elements have their own weight, the `groups` of a row."""

    order: tuple[int, ...]
    outer: int
    groups: int
    inner: int
    block: tuple[int, ...] = ()

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


def mask_shape(weights_shape: tuple[int, ...] | torch.Size, h_dim: int) -> tuple[int, ...]:
    """The weight's extent along each of h's dims 1.. (1 = shared): () for w [B, K] (simplex_mix); m [B, K, C]
    is per channel (C, 1, ...); m [B, K, *M] gives M."""
    if len(weights_shape) == 2:
        return ()
    return (*weights_shape[2:], *([1] * (h_dim + 1 - len(weights_shape))))


def row_layout(h: torch.Tensor, weights_shape: tuple[int, ...] | torch.Size) -> RowLayout:
    """Layout of `empty_out(h)` for weights of this shape: one group for simplex_mix (w [B, K]), C groups for a
    per-channel mask, the block of dims a general mask varies along otherwise."""
    out = empty_out(h, device="meta")  # strides only, no memory
    # Sort dims 1.. by stride, outermost first (stable: size-1 dims keep their place, their stride is arbitrary).
    order = tuple(sorted(range(1, out.dim()), key=lambda d: -out.stride(d)))
    sizes = [out.shape[d] for d in order]
    extent = mask_shape(weights_shape, h.dim())
    varying = [p for p, d in enumerate(order) if extent and extent[d - 1] != 1 and out.shape[d] != 1]
    if not varying:
        return RowLayout(order, 1, 1, math.prod(sizes))
    lo, hi = min(varying), max(varying)
    return RowLayout(
        order, math.prod(sizes[:lo]), math.prod(sizes[lo : hi + 1]), math.prod(sizes[hi + 1 :]), order[lo : hi + 1]
    )


def _block_sizes(lay: RowLayout, h_shape: torch.Size) -> list[int]:
    """Size of each of h's dims 1.. inside the block, 1 outside it."""
    return [h_shape[d] if d in lay.block else 1 for d in range(1, len(h_shape))]


def group_weights(weights: torch.Tensor, lay: RowLayout, h_shape: torch.Size) -> torch.Tensor:
    """w [B, K] -> [B, K, 1]; a mask -> [B, K, G]: its weights expanded over the block and listed in the row's
    memory order (a view when already so, e.g. m [B, K, C] per channel)."""
    B, K = weights.shape[:2]
    if weights.dim() == 2:
        return weights.unsqueeze(2)
    m = weights.reshape(B, K, *mask_shape(weights.shape, len(h_shape)))  # [B, K, *M]
    m = m.expand(B, K, *_block_sizes(lay, h_shape))  # broadcast dims inside the block get their copies
    return m.permute(0, 1, *[d + 1 for d in lay.order]).reshape(B, K, lay.groups)


def ungroup_weights(gw: torch.Tensor, lay: RowLayout, weights_shape: torch.Size, h_shape: torch.Size) -> torch.Tensor:
    """Inverse of `group_weights` for a gradient: [B, K, G] -> the weights' shape, summing over the copies that
    expanded a broadcast dim inside the block."""
    if len(weights_shape) == 2:
        return gw.reshape(weights_shape)
    B, K = gw.shape[:2]
    sizes = _block_sizes(lay, h_shape)
    g = gw.reshape(B, K, *[sizes[d - 1] for d in lay.order])  # [B, K, block dims in memory order]
    back = [0] * len(lay.order)
    for pos, d in enumerate(lay.order):
        back[d - 1] = pos + 2
    g = g.permute(0, 1, *back)  # [B, K, *sizes] in dim order
    extent = mask_shape(weights_shape, len(h_shape))
    summed = [i + 2 for i, (e, n) in enumerate(zip(extent, sizes)) if e == 1 and n != 1]
    if summed:
        g = g.sum(dim=summed, keepdim=True)
    return g.reshape(weights_shape)


def inverse_perm(perm: torch.Tensor) -> torch.Tensor:
    """inv [K, B] with inv[k, perm[k, b]] = b: the backward pass gathers through it (no atomics, deterministic)."""
    ar = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(1, perm, ar)  # each target index is written exactly once


def weights_at_source(weights: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The weight each source row receives in the backward pass: w_src[j, k] = weights[inv[k, j], k] (same shape)."""
    idx = inv.t()  # [B, K]: which output row took row j as its k-th partner
    idx = idx.reshape(*idx.shape, *([1] * (weights.dim() - 2))).expand_as(weights)
    return weights.gather(0, idx)
