"""The "triton" impl against "ref" (docs/design.md, "The mixing-op contract"), run by `test_triton.py` in its own
process with TRITON_INTERPRET=1 set before triton is imported (the interpreter runs the kernels on CPU tensors,
about 1 ms per program instance: a few tiny shapes that still cover B = 1 / odd / 64, C = 1 / 2 / odd, K = 2..8,
trailing dims none / 1-D / 2-D, every layout and dtype). Not collected by a plain `pytest tests` (no test_ prefix).
"""

from __future__ import annotations

import os

import pytest
import torch
from mix_cases import assert_deterministic_backward, check_against_ref, make_case

from amr_fast import kernels

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton.py with TRITON_INTERPRET=1"
)

CASES = [  # (B, C, S, K, kind, dtype, layout)
    (1, 1, (), 2, "simplex", torch.float32, "contiguous"),
    (64, 2, (), 5, "simplex", torch.float32, "contiguous"),
    (5, 3, (7,), 3, "mask", torch.float32, "strided"),
    (6, 2, (3, 5), 4, "simplex", torch.float16, "channels_last"),
    (4, 3, (2, 2), 8, "mask", torch.bfloat16, "channels_last"),
    (3, 3, (2, 3), 7, "mask", torch.float16, "contiguous"),
    (5, 1, (4,), 6, "simplex", torch.bfloat16, "strided"),
    (2, 3, (700,), 2, "simplex", torch.float32, "contiguous"),  # rows > 1024: the weight grad splits each row
    # masks over positions ([B, K, 1, *S]), every element ([B, K, C, *S]), channels and W only ([B, K, C, 1, W])
    (5, 3, (4, 5), 3, "mask_pos", torch.float32, "contiguous"),
    (4, 3, (3, 2), 2, "mask_pos", torch.bfloat16, "channels_last"),
    (3, 2, (7,), 5, "mask_pos", torch.float16, "strided"),
    (5, 3, (2, 3), 4, "mask_full", torch.float32, "channels_last"),
    (1, 1, (), 2, "mask_full", torch.float32, "contiguous"),
    (3, 3, (2, 5), 3, "mask_gap", torch.float16, "contiguous"),
    (2, 3, (3, 4), 8, "mask_gap", torch.float32, "channels_last"),
]


@pytest.mark.parametrize(("B", "C", "S", "K", "kind", "dtype", "layout"), CASES)
def test_triton_matches_ref(B, C, S, K, kind, dtype, layout):
    check_against_ref("triton", B, C, S, K, kind, dtype, layout)


def test_triton_backward_is_deterministic_and_opcheck_passes():
    for kind in ("mask", "mask_pos"):
        h, perm, m = assert_deterministic_backward("triton", 5, 3, (2,), 3, kind)
        torch.library.opcheck(kernels.ops.mask_mix_op, (h.requires_grad_(), perm, m.requires_grad_(), "triton"))


@pytest.mark.parametrize("kind", ("simplex", "mask", "mask_pos"))
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_each_kernel_moves_k_plus_one_h_per_launch(kind, layout, monkeypatch):
    """The bytes of h-sized tensors (fp16 here; the weights are fp32, perm int64) that the kernels load and store,
    counted in the interpreter: the forward reads each partner row once (K x |h|) and writes |h|; the weight-grad
    kernel reads the gradient once and each partner row once ((K+1) x |h|), not the gradient once per partner."""
    from amr_fast.kernels import triton_mix
    from triton.runtime import interpreter

    moved = {"load": 0, "store": 0}
    builder = interpreter.InterpreterBuilder
    load, store = builder.create_masked_load, builder.create_masked_store

    def counting_load(self, ptrs, mask, *args):
        out = load(self, ptrs, mask, *args)
        if out.data.dtype.itemsize == 2:
            moved["load"] += 2 * int(mask.data.sum())
        return out

    def counting_store(self, ptrs, value, mask, *args):
        if value.data.dtype.itemsize == 2:
            moved["store"] += 2 * int(mask.data.sum())
        return store(self, ptrs, value, mask, *args)

    monkeypatch.setattr(builder, "create_masked_load", counting_load)
    monkeypatch.setattr(builder, "create_masked_store", counting_store)
    B, C, S, K = 6, 3, (4, 5), 3
    h, perm, weights, grad = make_case(B, C, S, K, kind, torch.float16, layout)
    h_bytes = h.numel() * h.element_size()
    triton_mix.mix(h, perm, weights)
    assert moved == {"load": K * h_bytes, "store": h_bytes}
    moved.update(load=0, store=0)
    triton_mix.weight_grad(grad, h, perm, weights)
    assert moved == {"load": (K + 1) * h_bytes, "store": 0}
