"""The "triton" impl: fused kernels for the mixing ops (docs/design.md, "The mixing-op contract").

    out[b, d] = sum_k W[b, k, g(d)] * h[perm[k, b], d]            g(d) = (d // inner) % G, the group of column d

simplex_mix is the one-group case (G = 1), mask_mix has one group per channel (G = C), or per position or element
for masks over positions (`layout.row_layout`: the block of dims the mask varies along). h and out are seen as
`[B, D]` rows in the output's memory order (`kernels/layout.py`): contiguous and channels-last inputs are used in
place through that permuted view (the group formula covers both); other strides are copied once to it.

- Forward, one launch: each program owns a tile of BLOCK_B rows x BLOCK_D columns, loops over the K partners,
  loads rows of h along the contiguous dim (coalesced), accumulates in fp32, stores once. One pass over h.
- grad_h, one launch: the forward kernel run on grad_out through the inverse permutations with the weights each
  source row received (`layout.weights_at_source`, a [B, K(, C)] gather on the host): a gather, no atomics.
- grad_w / grad_m, one launch: each program owns one row b, BLOCK_G groups and one piece of the group's elements
  and reduces sum_{d in group} grad[b, d] * h[perm[k, b], d] for every k in a fixed order, in fp32; when rows are
  few and long the pieces (at most MIN_PROGRAMS / programs) are summed by one torch `sum` (deterministic).

Block sizes come from a small heuristic (no autotuning: it does not run in the interpreter). Offsets are int64.
Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported) for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import empty_out, group_weights, row_layout, ungroup_weights

TILE = 4096  # elements per program: enough work per program on a GPU, few programs in the interpreter
MIN_PROGRAMS = 1024  # the weight-grad reduction splits long rows until it has about this many programs


@triton.jit
def _mix_fwd_kernel(
    h_ptr,
    perm_ptr,
    w_ptr,
    out_ptr,
    B,
    K,
    D,
    G,
    inner,
    stride_perm_k,
    stride_w_b,
    stride_w_k,
    PER_GROUP: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B] examples b
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D] int64: D * B may pass 2^31
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (cols < D)[None, :]
    grp = (cols // inner) % G  # weight group (channel, position) of each column (0 for simplex_mix)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)  # fp32 accumulator whatever h's dtype
    for k in range(K):
        src = tl.load(perm_ptr + k * stride_perm_k + rows, mask=row_ok, other=0).to(tl.int64)
        if PER_GROUP:  # mask_mix: the weight of each column's group
            w_off = rows[:, None] * stride_w_b + k * stride_w_k + grp[None, :]
            wk = tl.load(w_ptr + w_off, mask=tile_ok, other=0.0).to(tl.float32)  # fp32 before arithmetic (bf16)
        else:  # simplex_mix: one weight per row
            wk = tl.load(w_ptr + rows * stride_w_b + k * stride_w_k, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        hk = tl.load(h_ptr + src[:, None] * D + cols[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        acc += wk * hk
    out_off = rows[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _mix_weight_grad_kernel(
    grad_ptr,
    h_ptr,
    perm_ptr,
    gw_ptr,
    K,
    D,
    G,
    inner,
    n_j,
    chunk_j,
    B,
    stride_perm_k,
    BLOCK_G: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G] groups (channels) of this program
    grp_ok = grp < G
    split = tl.program_id(2)  # which chunk_j elements of every group this program sums
    j_end = tl.minimum(n_j, (split + 1) * chunk_j)
    for k in range(K):
        src = tl.load(perm_ptr + k * stride_perm_k + b).to(tl.int64)
        acc = tl.zeros([BLOCK_G, BLOCK_J], dtype=tl.float32)  # fp32 partial sums, reduced once at the end
        for j0 in range(split * chunk_j, j_end, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)  # element j of a group: (outer o, inner i)
            col = (j // inner) * (G * inner) + grp[:, None] * inner + (j % inner)  # [BLOCK_G, BLOCK_J]
            ok = grp_ok[:, None] & (j < j_end)[None, :]
            g = tl.load(grad_ptr + b * D + col, mask=ok, other=0.0).to(tl.float32)
            x = tl.load(h_ptr + src * D + col, mask=ok, other=0.0).to(tl.float32)
            acc += g * x
        tl.store(gw_ptr + ((split * B + b) * K + k) * G + grp, tl.sum(acc, axis=1), mask=grp_ok)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _warps(tile: int) -> int:
    """4 warps for small tiles, 8 for full ones (4096 elements: 16 per thread)."""
    return 8 if tile >= 4096 else 4


def mix(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Forward: out[b] = sum_k W[b, k] * h[perm[k, b]]; weights [B, K] or [B, K, C]. One launch."""
    out = empty_out(h)
    if out.numel() == 0:
        return out
    lay = row_layout(h, weights.shape)
    h_rows, out_rows = lay.rows(h), lay.rows(out)  # out_rows is a view: out is dense in this order
    wg = group_weights(weights, lay, h.shape).contiguous()  # [B, K, G]
    perm = perm.contiguous()
    K, B = perm.shape
    D = lay.row_len
    BLOCK_D = min(_pow2(D), TILE)
    BLOCK_B = min(_pow2(B), max(1, TILE // BLOCK_D))
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    _mix_fwd_kernel[grid](
        h_rows, perm, wg, out_rows, B, K, D, lay.groups, lay.inner, perm.stride(0), wg.stride(0), wg.stride(1),
        PER_GROUP=weights.dim() > 2, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D, num_warps=_warps(BLOCK_B * BLOCK_D),
    )  # fmt: skip
    return out


def weight_grad(grad: torch.Tensor, h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """grad_w [B, K] / grad_m [B, K, *M]: per-group dot products of grad[b] and h[perm[k, b]]. One launch."""
    K, B = perm.shape
    lay = row_layout(h, weights.shape)
    G = lay.groups
    if h.numel() == 0:
        return torch.zeros_like(weights)
    h_rows, g_rows = lay.rows(h), lay.rows(grad)
    perm = perm.contiguous()
    n_j = lay.outer * lay.inner  # elements per group
    BLOCK_J = min(_pow2(n_j), 1024)
    BLOCK_G = min(_pow2(G), max(1, TILE // BLOCK_J))
    # Few long rows (simplex_mix at small B): split each row's sum over up to MIN_PROGRAMS / programs pieces so
    # that the GPU has work; the pieces are summed by torch in a fixed order (deterministic, no atomics).
    programs = B * triton.cdiv(G, BLOCK_G)
    split = max(1, min(triton.cdiv(n_j, BLOCK_J), MIN_PROGRAMS // programs))
    chunk_j = triton.cdiv(triton.cdiv(n_j, split), BLOCK_J) * BLOCK_J
    split = triton.cdiv(n_j, chunk_j)
    gw = torch.empty(split, B, K, G, device=h.device, dtype=torch.float32)
    grid = (B, triton.cdiv(G, BLOCK_G), split)
    _mix_weight_grad_kernel[grid](
        g_rows, h_rows, perm, gw, K, lay.row_len, G, lay.inner, n_j, chunk_j, B, perm.stride(0),
        BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J, num_warps=_warps(BLOCK_G * BLOCK_J),
    )  # fmt: skip
    return ungroup_weights(gw.sum(0), lay, weights.shape, h.shape).to(weights.dtype)
