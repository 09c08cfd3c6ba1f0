"""The "torch" impl: the mixing ops (docs/design.md, "The mixing-op contract") as fast as plain torch gets on a CPU.

Forward. out[b] = sum_k W[b, k] * h[perm[k, b]] is a weighted sum of K gathered rows: exactly what
`torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)` computes, in one multithreaded pass that
reads each partner row once and writes the output once, with no temporaries (fp32 accumulation for fp16/bf16 too;
the weights are cast to h's dtype, as embedding_bag requires). Each example row is cut into G segments ("bags")
that share a weight: the C channels for mask_mix (each channel has its own weight), pieces of <= 4096 elements for
simplex_mix (long rows parallelise poorly). A naive gather + einsum writes K copies of h and reaches ~0.06x the
bandwidth of a same-size `Tensor.copy_` at B=256, h 256x8x8, K=3; this path 0.7-1.0x (`amr-fast bench kernels`,
figures in the README).

Backward. grad_h is the same op through the inverse permutations (a gather, deterministic, no index_add);
grad_w / grad_m are per-row dot products, computed in fp32 over chunks of rows so the gathered partners of a
chunk stay in cache and no K x h temporary exists.

Extra memory: the output, plus indices and weights (8 K bytes per bag, a few % of h for AMR codes; bounded by
chunking examples when groups are short, e.g. mask_mix of [B, C] codes), and one chunk of rows in the backward.
mask_mix on a tensor whose channel is not the outermost dim of a row (channels-last) runs on a contiguous copy.

Masks over positions (or channels and positions, `m [B, K, *M]`) are summed K times in place instead when their
groups are short (fewer than BAG_MIN elements share a weight: bags that small make embedding_bag slow) or not
outermost in a row: out = sum_k m_k * h[perm_k], one gathered partner (1x h) at a time, accumulated in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layout import empty_out, group_weights, mask_shape, row_layout, ungroup_weights

SEGMENT = 4096  # longest bag: longer rows are cut so both cores get work and a bag stays in L1/L2
PIECE_MIN = 256  # shortest piece a long row is cut into (odd lengths with no such divisor stay one bag)
BAG_MIN = 16  # shortest run of elements sharing a weight that a position mask sends through embedding_bag
CHUNK_ELEMS = 1 << 18  # elements of gathered partners per chunk in the weight gradient (1 MiB in fp32)


def _segments(group_len: int) -> int:
    """How many equal pieces to cut a run of `group_len` elements sharing one weight into."""
    if group_len <= SEGMENT:
        return 1
    piece = math.gcd(group_len, SEGMENT)
    return group_len // piece if piece >= PIECE_MIN else 1  # odd lengths: one long bag rather than tiny ones


def mix(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k W[b, k] * h[perm[k, b]]; weights [B, K] (one per example) or [B, K, C] (per channel)."""
    if h.numel() == 0:
        return empty_out(h)
    lay = row_layout(h, weights.shape)
    per_channel = lay.block == (1,) or weights.dim() == 2  # the bags of the AMR / Manifold Mixup mixes
    if not per_channel and (lay.outer != 1 or lay.inner < BAG_MIN):  # position masks: K passes in place
        return _mix_in_place(h, perm, weights)
    if lay.outer != 1:  # channels-last mask_mix: a weight per element of the row; mix a contiguous copy
        return empty_out(h).copy_(mix(h.contiguous(), perm, weights))
    B, K = perm.shape[1], perm.shape[0]
    wg = group_weights(weights, lay, h.shape)  # [B, K, G]
    G = wg.shape[2]
    seg = _segments(lay.inner)  # bags per group
    bags, L = G * seg, lay.inner // seg
    table = lay.rows(h).view(B * bags, L)  # [B * bags, L]: the rows embedding_bag gathers
    if bags == 1:  # one bag per example: perm and the weights are embedding_bag's arguments as they are
        res = F.embedding_bag(perm.t(), table, per_sample_weights=wg.view(B, K).to(h.dtype), mode="sum")
        return lay.unrows(res, h.shape)  # [B, D] is the output's memory: hand it back with h's strides
    # Indices and weights take 8 K bytes per bag (of L elements): for short groups (L < 8 K, e.g. mask_mix of
    # [B, C] codes) they would outgrow h, so examples are then mixed in chunks of bounded index size.
    step = B if 8 * K <= L * h.element_size() or B * bags * K <= CHUNK_ELEMS else max(1, CHUNK_ELEMS // (bags * K))
    out = empty_out(h) if step < B else None
    idx_dtype = torch.int32 if B * bags < 2**31 else torch.int64
    bag_ids = torch.arange(bags, device=h.device, dtype=idx_dtype)[:, None]  # [bags, 1]
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        # Bag (b, g, s) sums the K bags (perm[k, b], g, s): table row perm[k, b] * bags + g * seg + s.
        idx = perm[:, b0:b1].t().to(idx_dtype, memory_format=torch.contiguous_format).mul_(bags)
        idx = idx.view(b1 - b0, 1, K) + bag_ids  # [n, bags, K]
        psw = wg[b0:b1].transpose(1, 2).to(h.dtype)[:, :, None, :].expand(b1 - b0, G, seg, K)  # [n, G, seg, K]
        res = F.embedding_bag(idx.view(-1, K), table, per_sample_weights=psw.reshape(-1, K), mode="sum")
        if out is None:
            return lay.unrows(res, h.shape)  # [B * bags, L] is the output's memory: hand it back with h's strides
        lay.rows(out)[b0:b1] = res.view(b1 - b0, -1)
    return out


def _mix_in_place(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out = sum_k m[:, k] * h[perm[k]] with m broadcast over [C, *S]: one gathered partner at a time into a
    reused buffer, accumulated in fp32 (float64 stays float64)."""
    acc_dtype = torch.promote_types(h.dtype, torch.float32)
    m = weights.reshape(*weights.shape[:2], *mask_shape(weights.shape, h.dim())).to(acc_dtype)  # [B, K, *M]
    acc = torch.empty(h.shape, dtype=acc_dtype, device=h.device)
    buf = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    for k in range(perm.shape[0]):
        hk = torch.index_select(h, 0, perm[k], out=buf)  # [B, C, *S]: the k-th partners
        if k == 0:
            torch.mul(m[:, k], hk, out=acc)
        else:
            acc.addcmul_(m[:, k], hk)  # fp32 += fp32 * h's dtype
    return empty_out(h).copy_(acc)


def weight_grad(grad: torch.Tensor, h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """grad_w[b, k] = sum_{c,s} grad[b] * h[perm[k, b]] ([B, K]); per channel grad_m[b, k, c] ([B, K, C]).
    Accumulated in fp32, returned in weights' dtype."""
    K, B = perm.shape
    if h.numel() == 0:
        return torch.zeros_like(weights)
    lay = row_layout(h, weights.shape)
    if lay.block == (1,) and lay.outer != 1:
        h = h.contiguous()  # channels-last per-channel mask: reduce over the contiguous copy, channels outermost
        lay = row_layout(h, weights.shape)
    O, G, L = lay.outer, lay.groups, lay.inner
    h_rows = lay.rows(h).view(B, O, G, L)
    g_rows = lay.rows(grad).view(B, O, G, L)
    acc = torch.promote_types(h.dtype, torch.float32)  # fp32 for half inputs, float64 stays float64
    out = torch.empty(B, K, G, device=h.device, dtype=acc)
    step = max(1, CHUNK_ELEMS // (K * lay.row_len))
    buf = h_rows.new_empty(min(B, step) * K, O, G, L)  # the gathered partners of one chunk, reused
    src_all = perm.t().contiguous().view(-1)  # [B * K], example-major
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        hk = torch.index_select(h_rows, 0, src_all[b0 * K : b1 * K], out=buf[: (b1 - b0) * K])
        hk = hk.view(b1 - b0, K, O, G, L).to(acc)  # fp32: accumulate the products in fp32 (no copy for fp32)
        gb = g_rows[b0:b1, None].to(acc)  # [n, 1, O, G, L]
        torch.sum(hk.mul_(gb), dim=(2, 4), out=out[b0:b1])
    return ungroup_weights(out, lay, weights.shape, h.shape).to(weights.dtype)
