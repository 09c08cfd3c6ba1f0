"""Cases shared by the mixing-op tests: inputs of every shape/layout/dtype, and the check of an impl against "ref".

Imported by `test_ops.py` (impl "torch", in-process) and by `triton_cases.py` (impl "triton", run in its own
process under TRITON_INTERPRET=1). Spec: docs/design.md, "The mixing-op contract"; reference: `amr_fast.mixing`.
"""

from __future__ import annotations

import torch
from amr_fast.kernels.layout import empty_out

from amr_fast import kernels

# (dtype, atol, rtol): fp32 accumulates either way; fp16/bf16 differ by the rounding of the output (and, for
# "torch", of the weights, which embedding_bag takes in h's dtype). atol is scaled by the largest reference value.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
LAYOUTS = ("contiguous", "channels_last", "strided")


MASK_KINDS = ("mask", "mask_pos", "mask_full", "mask_gap")  # per channel; per position; per element; C and W only


def weight_shape(B: int, C: int, S: tuple[int, ...], K: int, kind: str) -> tuple[int, ...]:
    """w [B, K] (simplex); m [B, K, C] (mask), [B, K, 1, *S] (mask_pos), [B, K, C, *S] (mask_full), and
    [B, K, C, 1, .., S[-1]] (mask_gap: varies along dims that are not next to each other in memory)."""
    if kind == "simplex":
        return (B, K)
    if kind == "mask":
        return (B, K, C)
    if kind == "mask_pos":
        return (B, K, 1, *S)
    if kind == "mask_full":
        return (B, K, C, *S)
    if kind == "mask_gap":
        return (B, K, C, *([1] * (len(S) - 1)), *S[-1:])
    raise ValueError(kind)


def make_case(B: int, C: int, S: tuple[int, ...], K: int, kind: str, dtype: torch.dtype, layout: str, seed: int = 0):
    """h [B, C, *S] in `layout`, perm [K, B] (row 0 the identity), weights (`weight_shape`), a grad for out."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, C, *S)
    if layout == "strided":  # every other channel of a wider tensor: not dense, so the fast paths copy it once
        h = torch.randn(B, 2 * C, *S, generator=g)[:, ::2]
    elif layout == "channels_last":  # [B, C, H, W] with C innermost in memory (4-D only)
        h = torch.randn(shape, generator=g).to(memory_format=torch.channels_last)
    else:
        h = torch.randn(shape, generator=g)
    h = h.to(dtype)
    perm = torch.stack([torch.arange(B)] + [torch.randperm(B, generator=g) for _ in range(K - 1)])
    wshape = weight_shape(B, C, S, K, kind)
    weights = torch.rand(wshape, generator=g)
    grad = torch.randn(shape, generator=g).to(dtype)
    if layout == "strided":
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)  # a grad with other strides than out
    return h, perm, weights, grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def check_against_ref(impl: str, B, C, S, K, kind, dtype, layout, device: str = "cpu") -> None:
    """Forward (values, dtype, strides) and backward (h and w / m) of `impl` equal those of "ref"."""
    h, perm, weights, grad = (t.to(device) for t in make_case(B, C, S, K, kind, dtype, layout))
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix  # every mask kind
    results = {}
    for name in ("ref", impl):
        hh = h.detach().clone().requires_grad_(True)  # clone keeps h's strides
        ww = weights.detach().clone().requires_grad_(True)
        out = op(hh, perm, ww, impl=name)
        out.backward(grad)
        results[name] = (out, hh.grad, ww.grad)
    (out_r, gh_r, gw_r), (out_i, gh_i, gw_i) = results["ref"], results[impl]
    assert out_i.dtype == h.dtype and out_i.shape == h.shape
    like = empty_out(h)  # the fake (compile-time) output: the real one must have its strides
    assert [st for st, n in zip(out_i.stride(), h.shape) if n > 1] == [
        st for st, n in zip(like.stride(), h.shape) if n > 1
    ], f"{impl} output strides {out_i.stride()} differ from empty_out(h) {like.stride()}"
    assert_close(out_i, out_r, dtype, f"{impl} forward")
    assert_close(gh_i, gh_r, dtype, f"{impl} grad of h")
    assert gw_i.dtype == weights.dtype
    assert_close(gw_i, gw_r, dtype, f"{impl} grad of {'w' if kind == 'simplex' else 'm'}")


def shape_grid(full: bool = True):
    """(B, C, S, K) over B in {1, odd, 64}, C in {1, 2, odd}, trailing dims none / 1-D / 2-D; K cycles 2..8."""
    cases = []
    Bs, Cs = (1, 5, 64), (1, 2, 3)
    trailing = ((), (7,), (4, 5))
    i = 0
    for B in Bs:
        for C in Cs:
            for S in trailing:
                cases.append((B, C, S, 2 + i % 7))
                i += 1
    return cases if full else cases[::4]


def assert_deterministic_backward(impl: str, B: int, C: int, S: tuple[int, ...], K: int, kind: str = "mask"):
    """Two backward passes of mask_mix give bit-identical grads (a gather, no atomics). Returns (h, perm, m)."""
    h, perm, m, grad = make_case(B, C, S, K, kind, torch.float32, "contiguous")
    grads = []
    for _ in range(2):
        hh, mm = h.clone().requires_grad_(True), m.clone().requires_grad_(True)
        kernels.mask_mix(hh, perm, mm, impl=impl).backward(grad)
        grads.append((hh.grad, mm.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    return h, perm, m
