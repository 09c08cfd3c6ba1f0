"""The mixing ops on a GPU (docs/design.md, "The mixing-op contract"; run by `scripts/gpu-check.sh`): the
"triton" impl against the "ref" spec, forward and backward, over odd shapes, K = 2..8, fp32 / fp16 / bf16,
contiguous / channels-last / strided layouts, the papers' code sizes and one h of more than 2^31 elements (int64
offsets); `torch.library.opcheck`; `torch.compile(fullgraph=True)` (inductor) of a model calling the ops; a
deterministic backward.

Every test is marked `cuda` (`pytest -m cuda`) and skips without a CUDA GPU. With TRITON_INTERPRET=1 set before
triton is imported, the small cases also run on the CPU with the kernels in the Triton interpreter: the CPU form of
the GPU check (.ci/run), which keeps this file from rotting; the big cases and inductor stay GPU-only.
"""

from __future__ import annotations

import os

import pytest
import torch
from mix_cases import LAYOUTS, TOLERANCES, assert_close, check_against_ref, make_case, shape_grid

from amr_fast import kernels, mixing

ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"
KINDS = ("simplex", "mask")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (ON_GPU or INTERPRET) or kernels.triton_import_error() is not None,
        reason="needs a CUDA GPU and triton (or TRITON_INTERPRET=1 for the small cases on the CPU)",
    ),
]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="GPU only: too big for the Triton interpreter, or needs inductor")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("B", "C", "S", "K"), shape_grid(full=not INTERPRET))  # the interpreter: every 4th
def test_triton_matches_ref_odd_shapes(B, C, S, K, kind):
    """B in {1, 5, 64}, C in {1, 2, 3}, no / 1-D / 2-D trailing dims, K cycling through 2..8; fp32."""
    check_against_ref("triton", B, C, S, K, kind, torch.float32, "contiguous", device=DEVICE)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("B", "C", "S", "K"), [(5, 3, (4, 5), 3), (64, 2, (3, 7), 8), (1, 3, (2, 2), 2), (33, 16, (8, 8), 6)]
)
def test_triton_matches_ref_dtypes_layouts(B, C, S, K, kind, dtype, layout):
    """fp32 / fp16 / bf16 x layouts. On the device a "strided" h arrives dense (`Tensor.to` packs a non-dense
    tensor); its grad keeps strides other than the output's, so the copy-once path is still exercised there."""
    check_against_ref("triton", B, C, S, K, kind, dtype, layout, device=DEVICE)


@gpu_only
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("B", "C", "S", "K"), [(256, 256, (8, 8), 3), (1000, 256, (4, 4), 8), (4096, 2, (4, 4), 2)])
def test_triton_matches_ref_paper_sizes(B, C, S, K, kind, dtype):
    """The papers' codes (SVHN-256 / CIFAR-1024 256x8x8 and 256x4x4, MNIST 2x4x4) at training batch sizes, in the
    trainer's channels-last layout: many programs per launch, the weight-grad split, full tiles."""
    check_against_ref("triton", B, C, S, K, kind, dtype, "channels_last", device=DEVICE)


def _assert_close_chunked(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """assert_close's rule (atol scaled by the largest |expected|, rtol), a slab of rows at a time: on tensors of
    2^31 elements its float copies would need tens of GB."""
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, expected.abs().max().item())
    worst = 0.0
    for i in range(0, actual.shape[0], 8192):
        a, e = actual[i : i + 8192].float(), expected[i : i + 8192].float()
        excess = (a - e).abs() - (atol * scale + rtol * e.abs())  # > 0 where the element is out of tolerance
        worst = max(worst, excess.max().item())
    assert worst <= 0, f"{what}: an element is off by {worst:.3g} beyond the tolerance"


@gpu_only
def test_more_than_2_31_elements_uses_int64_offsets():
    """h of 131,075 x 256 x 8 x 8 = 2^31 + 49,152 bf16 elements (4.3 GB): element offsets overflow int32. Triton
    against the reference, forward and backward, for both ops (the reference needs ~70 GB at its peak)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 90 * 2**30:
        pytest.skip(f"needs ~90 GiB of free GPU memory for the reference at 2^31 elements; {free / 2**30:.0f} free")
    B, C, S, K, dtype = 131_075, 256, (8, 8), 2, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn((B, C, *S), generator=g, device="cuda", dtype=dtype)
    assert h.numel() > 2**31
    grad = torch.randn((B, C, *S), generator=g, device="cuda", dtype=dtype)
    perm = mixing.sample_perm(K, B, g)  # [K, B] on the GPU
    for kind in KINDS:
        shape = (B, K) if kind == "simplex" else (B, K, C)
        weights = torch.rand(shape, generator=g, device="cuda")
        op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
        results = {}
        for impl in ("ref", "triton"):
            hh, ww = h.clone().requires_grad_(True), weights.clone().requires_grad_(True)
            out = op(hh, perm, ww, impl=impl)
            out.backward(grad)
            results[impl] = (out.detach(), hh.grad, ww.grad)
            del hh, ww, out
            torch.cuda.empty_cache()
        (out_r, gh_r, gw_r), (out_t, gh_t, gw_t) = results["ref"], results["triton"]
        _assert_close_chunked(out_t, out_r, dtype, f"{kind} forward")
        _assert_close_chunked(gh_t, gh_r, dtype, f"{kind} grad of h")
        assert_close(gw_t, gw_r, dtype, f"{kind} grad of the weights")
        del results, out_r, gh_r, gw_r, out_t, gh_t, gw_t
        torch.cuda.empty_cache()


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("op_name", ("simplex_mix_op", "mask_mix_op"))
def test_opcheck(op_name, layout):
    """The custom ops' registrations (schema, fake impl with the real strides, autograd) with impl="triton"."""
    kind = "simplex" if op_name.startswith("simplex") else "mask"
    h, perm, weights, grad = (t.to(DEVICE) for t in make_case(6, 3, (4, 5), 3, kind, torch.float32, layout))
    op = getattr(kernels.ops, op_name)
    torch.library.opcheck(op, (h.requires_grad_(), perm, weights.requires_grad_(), "triton"))
    torch.library.opcheck(kernels.ops.mix_weight_grad_op, (grad, h.detach(), perm, weights.detach(), "triton"))


@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last), ids=str)
def test_compile_fullgraph_of_a_model_calling_the_ops(memory_format, monkeypatch):
    """torch.compile(fullgraph=True) fails on any graph break: both mixes are single nodes of the traced graph,
    forward and backward, and the compiled model (inductor on a GPU) matches the eager reference."""
    if ON_GPU:  # TF32 convolutions / matmuls could pick other algorithms eager and compiled: compare in fp32
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    class Mixer(torch.nn.Module):
        def __init__(self, impl: str):
            super().__init__()
            self.impl = impl
            self.enc = torch.nn.Conv2d(4, 16, 3, padding=1)
            self.dec = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x, perm, w, m):
            h = self.enc(x)  # [B, 16, H, W]
            h_mix = kernels.mask_mix(kernels.simplex_mix(h, perm, w, impl=self.impl), perm, m, impl=self.impl)
            return self.dec(h_mix)

    torch.manual_seed(0)
    B, K = 12, 3
    x = torch.randn(B, 4, 6, 5, device=DEVICE).to(memory_format=memory_format)
    g = torch.Generator().manual_seed(0)
    perm = mixing.sample_perm(K, B, g).to(DEVICE)
    w = mixing.sample_dirichlet_weights(B, K, 1.0, g).to(DEVICE)
    m = mixing.sample_kway_bernoulli_masks(B, K, 16, g).to(DEVICE)
    ref = Mixer("ref").to(DEVICE, memory_format=memory_format)
    fast = Mixer("triton").to(DEVICE, memory_format=memory_format)
    fast.load_state_dict(ref.state_dict())
    expected = ref(x, perm, w, m)
    expected.square().sum().backward()
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    out = compiled(x, perm, w, m)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=lambda s, n=name: f"grad {n}: {s}")


@pytest.mark.parametrize("kind", KINDS)
def test_backward_is_deterministic(kind):
    """Two backward passes give bit-identical grads (grad h is a gather through the inverse permutations, grad
    w / m a fixed-order reduction: no atomics)."""
    B, C, S, K = (1000, 256, (4, 4), 8) if ON_GPU else (33, 3, (2, 5), 8)
    h, perm, weights, grad = (t.to(DEVICE) for t in make_case(B, C, S, K, kind, torch.float32, "channels_last"))
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
    grads = []
    for _ in range(2):
        hh, ww = h.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        op(hh, perm, ww, impl="triton").backward(grad)
        grads.append((hh.grad, ww.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@gpu_only
def test_auto_picks_triton_on_cuda_and_torch_for_float64():
    h = torch.zeros(2, 3, device="cuda")
    assert kernels.resolve_impl("auto", h) == "triton"
    assert kernels.resolve_impl("auto", h.double()) == "torch"  # the kernels accumulate in fp32
