"""The "triton" impl: fused kernels for the mixing ops (docs/design.md, "The mixing-op contract").

    out[b, d] = sum_k W[b, k, g(d)] * h[perm[k, b], d]            g(d) = (d // inner) % G, the group of column d

simplex_mix is the one-group case (G = 1), mask_mix has one group per channel (G = C), or per position or element
for masks over positions (`layout.row_layout`: the block of dims the mask varies along). h and out are seen as
`[B, D]` rows in the output's memory order (`kernels/layout.py`): contiguous and channels-last inputs are used in
place through that permuted view (the group formula covers both); other strides are copied once to it.

- Forward, one launch: each program owns a tile of BLOCK_B rows x BLOCK_D columns (TILE_BYTES of h per partner,
  whatever the dtype). K is a compile-time constant: the program loads its K x BLOCK_B sources in one load, then
  issues the K gathers of h rows (an unrolled `static_range`: independent loads in flight together, coalesced along
  the row), accumulates in fp32 and stores once. Per launch: K reads of h and one write, (K+1) x |h|.
- grad_h, one launch: the forward kernel run on grad_out through the inverse permutations with the weights each
  source row received (`layout.weights_at_source`, a [B, K(, C)] gather on the host): a gather, no atomics.
- grad_w / grad_m, one launch: each program owns one row b, BLOCK_G groups and one piece of the group's elements,
  reads that piece of grad once and the same piece of its K partner rows in one [K, BLOCK_G, BLOCK_J] gather, and
  keeps K fp32 accumulators: sum_{d in group} grad[b, d] * h[perm[k, b], d] for every k in one pass, (K+1) x |h|
  per launch. The column of element j of a group has a division-free form when a row is one run per group
  (outer = 1: simplex_mix, per-channel masks on contiguous h) or the groups interleave (inner = 1: channels-last),
  a compile-time choice. When rows are few and long the pieces (at most MIN_PROGRAMS / programs) are summed by one
  torch `sum` (deterministic).

Block sizes come from a small heuristic (no autotuning: it does not run in the interpreter). Offsets into h and
the weights are int64 (a tensor may pass 2^31 elements); columns within a row are int32 (a row has < 2^31).
Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported) for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import empty_out, group_weights, row_layout, ungroup_weights

TILE_BYTES = 16384  # of h per partner per program in the forward (4096 fp32 / 8192 bf16 elements) at most,
IN_FLIGHT = 16384  # and at most this many elements loaded at once (K partners' tiles, + their weight tiles for masks)
WGRAD_TILE = 8192  # elements per program in the weight-grad kernel, all K partners together (K x BLOCK_G x BLOCK_J)
MIN_PROGRAMS = 1024  # the weight-grad reduction splits long rows until it has about this many programs


@triton.jit
def _mix_fwd_kernel(
    h_ptr,
    perm_ptr,
    w_ptr,
    out_ptr,
    B,
    D,
    G,
    inner,
    stride_perm_k,
    stride_w_b,
    stride_w_k,
    K: tl.constexpr,
    KP: tl.constexpr,
    PER_GROUP: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B] examples b
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D] int32: a row has < 2^31 elements
    row_ok = rows < B
    tile_ok = row_ok[:, None] & (cols < D)[None, :]
    ks = tl.arange(0, KP)  # the K partners, padded to a power of two
    k_ok = ks < K
    # Every partner's source row first, in one load: [KP, BLOCK_B].
    srcs = tl.load(
        perm_ptr + ks[:, None] * stride_perm_k + rows[None, :], mask=k_ok[:, None] & row_ok[None, :], other=0
    )
    w_rows = rows.to(tl.int64) * stride_w_b  # int64: B * K * G weights may pass 2^31
    if PER_GROUP:  # mask_mix: the weight of each column's group (channel, position)
        grp = (cols // inner) % G
    else:  # simplex_mix: one weight per row and partner, [BLOCK_B, KP] in one load
        w_ok = row_ok[:, None] & k_ok[None, :]
        ws = tl.load(w_ptr + w_rows[:, None] + ks[None, :] * stride_w_k, mask=w_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)  # fp32 accumulator whatever h's dtype
    for k in tl.static_range(K):  # unrolled: the K gathers are independent loads, in flight together
        src = tl.sum(tl.where(ks[:, None] == k, srcs, 0), axis=0).to(tl.int64)  # row k of srcs, in registers
        if PER_GROUP:
            w_off = w_rows[:, None] + k * stride_w_k + grp[None, :]
            wk = tl.load(w_ptr + w_off, mask=tile_ok, other=0.0).to(tl.float32)  # fp32 before arithmetic (bf16)
        else:
            wk = tl.sum(tl.where(ks[None, :] == k, ws, 0.0), axis=1)[:, None]
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
    D,
    G,
    inner,
    n_j,
    chunk_j,
    B,
    stride_perm_k,
    K: tl.constexpr,
    KP: tl.constexpr,
    COLS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G] groups (channels) of this program
    grp_ok = grp < G
    split = tl.program_id(2)  # which chunk_j elements of every group this program sums
    j_end = tl.minimum(n_j, (split + 1) * chunk_j)
    ks = tl.arange(0, KP)
    k_ok = ks < K
    srcs = tl.load(perm_ptr + ks * stride_perm_k + b, mask=k_ok, other=0).to(tl.int64)  # [KP] partner rows
    src_off = srcs[:, None, None] * D
    acc = tl.zeros([KP, BLOCK_G, BLOCK_J], dtype=tl.float32)  # K fp32 partial sums per element, reduced at the end
    for j0 in range(split * chunk_j, j_end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)  # element j of a group: (outer o, inner i)
        if COLS == 0:  # outer == 1: each group is one run of `inner` columns
            col = grp[:, None] * inner + j[None, :]
        elif COLS == 1:  # inner == 1: the groups interleave (channels-last per-channel masks)
            col = j[None, :] * G + grp[:, None]
        else:
            col = (j[None, :] // inner) * (G * inner) + grp[:, None] * inner + (j[None, :] % inner)
        ok = grp_ok[:, None] & (j < j_end)[None, :]  # [BLOCK_G, BLOCK_J]
        g = tl.load(grad_ptr + b * D + col, mask=ok, other=0.0).to(tl.float32)  # the gradient, read once
        x_ok = k_ok[:, None, None] & ok[None, :, :]
        x = tl.load(h_ptr + src_off + col[None, :, :], mask=x_ok, other=0.0).to(tl.float32)  # K partners at once
        acc += g[None, :, :] * x
    gw_off = ((split * B + b) * K + ks[:, None]) * G + grp[None, :]
    tl.store(gw_ptr + gw_off, tl.sum(acc, axis=2), mask=k_ok[:, None] & grp_ok[None, :])


_COMPILED: dict[str, tuple[object, dict]] = {}  # kernel -> (its last compiled launch, the launch's block sizes)


def _remember(name: str, compiled, **blocks) -> None:
    if compiled is not None:  # None under the interpreter
        _COMPILED[name] = (compiled, blocks)


def _kind(weights: torch.Tensor) -> str:
    return "mask_mix" if weights.dim() > 2 else "simplex_mix"


def compiled_info() -> dict[str, dict]:
    """Registers, spills, warps and shared memory of each kernel's last launch (the GPU check prints them)."""
    info = {}
    for name, (k, blocks) in _COMPILED.items():
        if hasattr(k, "_init_handles"):
            k._init_handles()  # n_regs / n_spills are read when the binary is loaded
        meta = getattr(k, "metadata", None)
        info[name] = {
            **blocks, "n_regs": getattr(k, "n_regs", None), "n_spills": getattr(k, "n_spills", None),
            "num_warps": getattr(meta, "num_warps", None), "shared": getattr(meta, "shared", None),
        }  # fmt: skip
    return info


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, n))


def _warps(tile: int) -> int:
    """8 warps from 1024 elements a program (4 to 32 a thread), 4 below."""
    return 8 if tile >= 1024 else 4


def _fwd_blocks(B: int, D: int, K: int, elem_size: int, per_group: bool) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_D) of the forward: TILE_BYTES of h per partner, fewer elements for more partners and for
    per-group weights: every partner's gather (and its weight tile) is in flight at once, and at 8 warps the
    registers grow with the elements in flight per thread. IN_FLIGHT keeps sm_90's ptxas at 54-120 registers
    without spills (simplex_mix and mask_mix, fp32 and bf16, K = 2..8; compiled ahead of time)."""
    tile = IN_FLIGHT // (_pow2(K) * (2 if per_group else 1))
    tile = max(512, min(TILE_BYTES // elem_size, tile))
    BLOCK_D = min(_pow2(D), tile)
    return min(_pow2(B), max(1, tile // BLOCK_D)), BLOCK_D


def _wgrad_blocks(G: int, n_j: int, K: int, cols: int) -> tuple[int, int]:
    """(BLOCK_G, BLOCK_J) of the weight-grad kernel: WGRAD_TILE elements for all K partners together, along the
    contiguous dim first (the groups when they interleave, cols == 1; a group's elements otherwise)."""
    per_k = max(1, WGRAD_TILE // _pow2(K))  # elements of each partner per chunk
    if cols == 1:
        BLOCK_G = min(_pow2(G), per_k)
        return BLOCK_G, min(_pow2(n_j), max(1, per_k // BLOCK_G))
    BLOCK_J = min(_pow2(n_j), per_k)
    return min(_pow2(G), max(1, per_k // BLOCK_J)), BLOCK_J


def _check_row(D: int) -> None:
    if D >= 2**31:
        raise ValueError(f"one example of h has {D} elements; the triton impl takes < 2^31 per example")


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
    _check_row(D)
    BLOCK_B, BLOCK_D = _fwd_blocks(B, D, K, h.element_size(), weights.dim() > 2)
    grid = (triton.cdiv(B, BLOCK_B), triton.cdiv(D, BLOCK_D))
    compiled = _mix_fwd_kernel[grid](
        h_rows, perm, wg, out_rows, B, D, lay.groups, lay.inner, perm.stride(0), wg.stride(0), wg.stride(1),
        K=K, KP=_pow2(K), PER_GROUP=weights.dim() > 2, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D,
        num_warps=_warps(BLOCK_B * BLOCK_D),
    )  # fmt: skip
    _remember(f"_mix_fwd_kernel {_kind(weights)}", compiled, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D)
    return out


def weight_grad(grad: torch.Tensor, h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """grad_w [B, K] / grad_m [B, K, *M]: per-group dot products of grad[b] and h[perm[k, b]]. One launch."""
    K, B = perm.shape
    lay = row_layout(h, weights.shape)
    G = lay.groups
    if h.numel() == 0:
        return torch.zeros_like(weights)
    _check_row(lay.row_len)
    h_rows, g_rows = lay.rows(h), lay.rows(grad)
    perm = perm.contiguous()
    n_j = lay.outer * lay.inner  # elements per group
    cols = 0 if lay.outer == 1 else 1 if lay.inner == 1 else 2  # the kernel's COLS: how a group's columns lie
    KP = _pow2(K)
    BLOCK_G, BLOCK_J = _wgrad_blocks(G, n_j, K, cols)
    # Few long rows (simplex_mix at small B): split each row's sum over up to MIN_PROGRAMS / programs pieces so
    # that the GPU has work; the pieces are summed by torch in a fixed order (deterministic, no atomics).
    programs = B * triton.cdiv(G, BLOCK_G)
    split = max(1, min(triton.cdiv(n_j, BLOCK_J), MIN_PROGRAMS // programs))
    chunk_j = triton.cdiv(triton.cdiv(n_j, split), BLOCK_J) * BLOCK_J
    split = triton.cdiv(n_j, chunk_j)
    gw = torch.empty(split, B, K, G, device=h.device, dtype=torch.float32)
    grid = (B, triton.cdiv(G, BLOCK_G), split)
    compiled = _mix_weight_grad_kernel[grid](
        g_rows, h_rows, perm, gw, lay.row_len, G, lay.inner, n_j, chunk_j, B, perm.stride(0),
        K=K, KP=KP, COLS=cols, BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J, num_warps=_warps(KP * BLOCK_G * BLOCK_J),
    )  # fmt: skip
    _remember(f"_mix_weight_grad_kernel {_kind(weights)}", compiled, BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
    return ungroup_weights(gw.sum(0), lay, weights.shape, h.shape).to(weights.dtype)
