"""Tests of `amr_fast.kernels` (docs/design.md, "The mixing-op contract"): the "torch" impl against the "ref" spec,
forward and backward, over odd shapes, K = 2..8, layouts and dtypes; dispatch; custom-op registration (opcheck,
torch.compile); determinism. The "triton" impl runs in its own process: `test_triton.py`."""

from __future__ import annotations

import math

import pytest
import torch
from mix_cases import (
    LAYOUTS,
    MASK_KINDS,
    TOLERANCES,
    assert_deterministic_backward,
    check_against_ref,
    make_case,
    shape_grid,
)
from torch.utils._python_dispatch import TorchDispatchMode

from amr_fast import kernels, mixing

KINDS = ("simplex", "mask")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("B", "C", "S", "K"), shape_grid())
def test_torch_matches_ref_fp32(B, C, S, K, kind):
    check_against_ref("torch", B, C, S, K, kind, torch.float32, "contiguous")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("B", "C", "S", "K"), [(5, 3, (4, 5), 3), (64, 2, (3, 7), 8), (1, 3, (2, 2), 2)])
def test_torch_matches_ref_layouts_and_dtypes(B, C, S, K, kind, dtype, layout):
    check_against_ref("torch", B, C, S, K, kind, dtype, layout)


@pytest.mark.parametrize("kind", MASK_KINDS[1:])
@pytest.mark.parametrize(("B", "C", "S", "K"), shape_grid(full=False))
def test_torch_position_masks_match_ref_fp32(B, C, S, K, kind):
    """Masks over positions / channels and positions ([B, K, 1, *S], [B, K, C, *S], [B, K, C, 1, W])."""
    check_against_ref("torch", B, C, S, K, kind, torch.float32, "contiguous")


@pytest.mark.parametrize("kind", MASK_KINDS[1:])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("B", "C", "S", "K"), [(5, 3, (4, 5), 3), (7, 20, (3, 6), 2), (1, 3, (2, 2), 8)])
def test_torch_position_masks_layouts_and_dtypes(B, C, S, K, kind, dtype, layout):
    """C = 20 channels-last: groups of >= BAG_MIN elements go through embedding_bag, the rest mix in place."""
    check_against_ref("torch", B, C, S, K, kind, dtype, layout)


def test_position_mask_mixes_positions_not_channels():
    """A CutMix mask [B, 2, 1, H, W]: inside the box every channel comes from the partner, outside from self."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 3, 4, 4, generator=g)
    perm = mixing.sample_perm(2, 6, g)
    m = mixing.position_mask(mixing.sample_cutmix_masks(6, 2, (4, 4), 1.0, g), h)  # [6, 2, 1, 4, 4]
    for impl in ("ref", "torch"):
        out = kernels.mask_mix(h, perm, m, impl=impl)
        box = m[:, 1].bool().expand_as(h)  # [6, 1, 4, 4] -> every channel
        torch.testing.assert_close(out[box], h[perm[1]][box])
        torch.testing.assert_close(out[~box], h[~box])


def test_bad_mask_shape_names_the_broadcast_form():
    h, perm = torch.randn(5, 3, 4, 4), torch.stack([torch.arange(5), torch.arange(5).flip(0)])
    with pytest.raises(ValueError, match=r"or \[B, K, \*M\] with M each 1 or \[3, 4, 4\]"):
        kernels.mask_mix(h, perm, torch.rand(5, 2, 1, 4, 3))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_long_rows_are_cut_into_segments(kind):
    """Rows longer than SEGMENT are cut into several bags (simplex) or long channels split (mask)."""
    from amr_fast.kernels import torch_mix

    assert torch_mix._segments(2 * torch_mix.SEGMENT) > 1
    check_against_ref("torch", 3, 2, (torch_mix.SEGMENT // 8, 16), 3, kind, torch.float32, "contiguous")


@pytest.mark.parametrize("impl", ("ref", "torch", "auto"))
def test_labels_mix_like_hidden_states(impl):
    """Manifold Mixup mixes one-hot targets [B, num_classes] with the same call: rows stay on the simplex."""
    y = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()
    perm = torch.stack([torch.arange(4), torch.tensor([3, 2, 0, 1])])
    lam = torch.tensor([[0.7, 0.3]]).expand(4, 2)
    y_mix = kernels.simplex_mix(y, perm, lam, impl=impl)
    torch.testing.assert_close(y_mix, 0.7 * y + 0.3 * y[perm[1]])
    torch.testing.assert_close(y_mix.sum(1), torch.ones(4))


@pytest.mark.parametrize("kind", KINDS + MASK_KINDS[1:])
def test_torch_gradcheck_float64(kind):
    h, perm, weights, _ = make_case(5, 3, (2,), 3, kind, torch.float64, "contiguous")
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
    args = (h.requires_grad_(), weights.double().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: op(a, perm, b, impl="torch"), args)


@pytest.mark.parametrize("kind", ("mask", "mask_pos"))
def test_backward_is_deterministic(kind):
    assert_deterministic_backward("torch", 64, 3, (4, 5), 5, kind)


def test_auto_runs_torch_on_cpu_and_explicit_triton_explains():
    h = torch.randn(4, 2)
    assert kernels.resolve_impl("auto", h) == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.simplex_mix(h, torch.stack([torch.arange(4)] * 2), torch.rand(4, 2), impl="cuda")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":  # this process never sets it (triton_cases.py runs apart)
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            kernels.simplex_mix(h, torch.stack([torch.arange(4)] * 2), torch.rand(4, 2), impl="triton")


def test_without_triton_only_an_explicit_triton_fails(monkeypatch):
    monkeypatch.setattr(kernels, "triton_import_error", lambda: "ImportError: no module named triton")
    h = torch.randn(4, 2)
    assert kernels.resolve_impl("auto", h) == "torch" and kernels.resolve_impl("torch", h) == "torch"
    with pytest.raises(ValueError, match="triton does not import"):
        kernels.resolve_impl("triton", h)


def test_explicit_triton_runs_on_cpu_tensors_only_in_the_interpreter(monkeypatch):
    h = torch.randn(4, 2)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_impl("triton", h) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernels.resolve_impl("triton", h)


def test_outputs_keep_dense_strides_and_are_contiguous_when_the_batch_is_not_outermost():
    from amr_fast.kernels.layout import empty_out

    h = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    assert empty_out(h).stride() == h.stride()  # channels-last stays channels-last
    perm, w = torch.stack([torch.arange(4), torch.arange(4).flip(0)]), torch.rand(4, 2)
    assert kernels.simplex_mix(h, perm, w, impl="torch").is_contiguous(memory_format=torch.channels_last)
    for batch in (2, 4):
        t = torch.randn(3, batch, 5).transpose(0, 1)  # [B, 3, 5] with the batch inside
        assert empty_out(t).is_contiguous()


def test_ops_default_to_auto():
    h, perm, w = torch.randn(5, 3, 2), torch.stack([torch.arange(5), torch.arange(5).flip(0)]), torch.rand(5, 2)
    m = torch.rand(5, 2, 3)
    assert torch.equal(kernels.simplex_mix(h, perm, w), kernels.simplex_mix(h, perm, w, impl="auto"))
    assert torch.equal(kernels.mask_mix(h, perm, m), kernels.mask_mix(h, perm, m, impl="auto"))


@pytest.mark.parametrize("impl", ("ref", "torch"))
def test_bad_input_names_argument_and_shape(impl):
    h, perm, w = torch.randn(5, 3, 2), torch.stack([torch.arange(5), torch.arange(5).flip(0)]), torch.rand(5, 2)
    with pytest.raises(TypeError, match="h must be a floating-point tensor .*; got torch.int64$"):
        kernels.simplex_mix(torch.ones(5, 3, dtype=torch.int64), perm, w, impl=impl)
    with pytest.raises(TypeError, match="h must be a floating-point tensor .*; got list$"):
        kernels.simplex_mix([1.0, 2.0], perm, w, impl=impl)
    with pytest.raises(TypeError, match="perm must be an integer tensor .*; got list$"):
        kernels.simplex_mix(h, [[0, 1], [1, 0]], w, impl=impl)
    with pytest.raises(TypeError, match="w must be a floating-point tensor; got torch.int64$"):
        kernels.simplex_mix(h, perm, torch.ones(5, 2, dtype=torch.int64), impl=impl)
    with pytest.raises(TypeError, match="m must be a floating-point tensor; got list$"):
        kernels.mask_mix(h, perm, [[1.0, 0.0]], impl=impl)
    with pytest.raises(ValueError, match=r"perm must have shape \[K, B\] = \[K, 5\]"):
        kernels.simplex_mix(h, perm[:, :4], w, impl=impl)
    with pytest.raises(ValueError, match=r"w must have shape \[B, K\] = \[5, 2\] \(B, C, S from h"):
        kernels.simplex_mix(h, perm, torch.rand(5, 3), impl=impl)
    with pytest.raises(
        ValueError, match=r"m must have shape \[B, K, C\] = \[5, 2, 3\], or \[B, K, \*M\] with M each 1 or \[3, 2\] \(B"
    ):
        kernels.mask_mix(h, perm, torch.rand(5, 2, 4), impl=impl)
    with pytest.raises(ValueError, match=r"m must have shape \[B, K, C\] = \[5, 2, 3\] \(B, C, S from h"):
        kernels.mask_mix(h[..., 0], perm, torch.rand(5, 2, 4), impl=impl)  # a vector code: no [B, K, *M] form
    with pytest.raises(ValueError, match=r"perm values must lie in \[0, 1\)"):  # one example: still checked
        kernels.simplex_mix(h[:1], torch.tensor([[0], [1]]), w[:1], impl=impl)
    with pytest.raises(ValueError, match="must be on one device"):
        kernels.simplex_mix(h, perm, torch.rand(5, 2, device="meta"), impl=impl)
    with pytest.raises(TypeError, match="perm must be an integer tensor .*; got torch.float32$"):
        kernels.simplex_mix(h, perm.float(), w, impl=impl)
    with pytest.raises(ValueError, match=r"perm values must lie in \[0, 5\)"):
        kernels.simplex_mix(h, perm + 1, w, impl=impl)
    with pytest.raises(ValueError, match="permutation"):
        kernels.simplex_mix(h, torch.zeros(2, 5, dtype=torch.int64), w, impl=impl)


@pytest.mark.parametrize(
    ("op_name", "kind"), [("simplex_mix_op", "simplex"), ("mask_mix_op", "mask"), ("mask_mix_op", "mask_pos")]
)
def test_opcheck(op_name, kind):
    h, perm, weights, grad = make_case(5, 3, (4,), 3, kind, torch.float32, "contiguous")
    op = getattr(kernels.ops, op_name)
    torch.library.opcheck(op, (h.requires_grad_(), perm, weights.requires_grad_(), "torch"))
    torch.library.opcheck(kernels.ops.mix_weight_grad_op, (grad, h.detach(), perm, weights.detach(), "torch"))


@pytest.mark.parametrize("impl", ("torch", "ref"))
def test_torch_compile_traces_a_model_without_graph_breaks(impl):
    """fullgraph=True fails on any graph break: the mix must be one traced node, forward and backward."""

    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Conv2d(2, 3, 1)

        def forward(self, x, perm, w, m):
            h = self.enc(x)
            return kernels.mask_mix(kernels.simplex_mix(h, perm, w, impl=impl), perm, m, impl=impl)

    x, perm, w, _ = make_case(6, 2, (3, 3), 3, "simplex", torch.float32, "contiguous")
    m = torch.rand(6, 3, 3)
    model = Mixer()
    eager = model(x, perm, w, m)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x, perm, w, m)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", ("triton", "torch"))
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_ref(impl, kind):
    """On a GPU: "auto" picks triton, and every impl equals ref on device."""
    assert kernels.resolve_impl("auto", torch.zeros(1, device="cuda")) == "triton"
    for B, C, S, K in [(1, 1, (), 2), (64, 3, (8, 8), 3), (1000, 256, (4, 4), 8)]:
        for dtype in TOLERANCES:
            check_against_ref(impl, B, C, S, K, kind, dtype, "channels_last" if S else "contiguous", device="cuda")


def test_training_curve_is_the_same_with_the_fast_path():
    """A tiny encoder/decoder trained on mixed codes (mask_mix then simplex_mix) follows the same loss curve with
    impl="torch" as with the reference."""

    def train(impl: str) -> list[float]:
        torch.manual_seed(0)
        enc, dec = torch.nn.Linear(12, 6 * 2), torch.nn.Linear(6 * 2, 12)
        opt = torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.1)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(32, 12, generator=g)
        losses = []
        for _ in range(20):
            perm = mixing.sample_perm(3, 32, g)
            m = mixing.sample_kway_bernoulli_masks(32, 3, 6, g)
            w = mixing.sample_dirichlet_weights(32, 3, 1.0, g)
            h = enc(x).view(32, 6, 2)
            h_mix = kernels.simplex_mix(kernels.mask_mix(h, perm, m, impl=impl), perm, w, impl=impl)
            loss = (dec(h_mix.flatten(1)) - x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ref, fast = train("ref"), train("torch")
    assert ref[-1] < ref[0]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(ref), rtol=1e-4, atol=1e-5)


class _NewStorageBytes(TorchDispatchMode):
    """Counts the bytes of every new storage that aten ops create while active (views, meta tensors and inputs
    excluded): their sum and the largest."""

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in inputs}
        self.total = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                if t.untyped_storage().data_ptr() not in self.seen:
                    self.seen.add(t.untyped_storage().data_ptr())
                    self.total += t.untyped_storage().nbytes()
                    self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize(("kind", "B", "C", "S"), [("simplex", 64, 256, (8, 8)), ("mask", 64, 256, (8, 8))])
def test_torch_path_allocates_no_k_fold_temporaries(kind, B, C, S):
    """K = 8: the reference allocates K copies of h; the fast forward only its output (plus indices and weights
    of a few % of h), the weight gradient one chunk of gathered rows (and its fp32 result, the size of w / m)."""
    from amr_fast.kernels import torch_mix

    h, perm, weights, grad = make_case(B, C, S, 8, kind, torch.float32, "contiguous")
    h_bytes = h.numel() * h.element_size()
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
    with _NewStorageBytes(h, perm, weights) as ref:
        op(h, perm, weights, impl="ref")
    assert ref.total >= 8 * h_bytes  # the check can see a K-fold temporary
    with _NewStorageBytes(h, perm, weights) as fwd:
        torch_mix.mix(h, perm, weights)
    assert fwd.total <= 1.3 * h_bytes
    with _NewStorageBytes(h, perm, weights, grad) as bwd:
        torch_mix.weight_grad(grad, h, perm, weights)
    assert bwd.total <= 4 * torch_mix.CHUNK_ELEMS + 4 * weights.numel() + 0.01 * h_bytes < 0.5 * h_bytes


def test_torch_mask_mix_of_short_groups_bounds_its_indices():
    """mask_mix of [B, C] codes (one element per channel), K = 8: indices and weights for every (b, c) would be
    16x h; the torch path mixes chunks of examples instead, and still equals the reference."""
    from amr_fast.kernels import torch_mix

    h, perm, m, _ = make_case(1024, 600, (), 8, "mask", torch.float32, "contiguous")
    h_bytes = h.numel() * h.element_size()
    assert 1024 * 600 * 8 > torch_mix.CHUNK_ELEMS  # more indices than one chunk: the chunked path runs
    with _NewStorageBytes(h, perm, m) as fwd:
        out = torch_mix.mix(h, perm, m)
    assert fwd.largest <= h_bytes  # the output; unchunked, the indices alone would be 8x h
    torch.testing.assert_close(out, kernels.mask_mix(h, perm, m, impl="ref"))


# Every size-dependent branch of the torch impl, on small tensors: the thresholds that pick a branch at real sizes
# (CHUNK_ELEMS, SEGMENT, PIECE_MIN, BAG_MIN of torch_mix) are set small so that each runs here, against "ref".
# (name: thresholds, (B, C, S, K), kind, layout)
SIZE_PATHS = {
    # weight gradient in chunks of 2 examples (K x row = 3 x 60 elements each), the last one partial (B = 7)
    "weight-grad-chunks-simplex": ({"CHUNK_ELEMS": 2 * 3 * 60}, (7, 3, (4, 5), 3), "simplex", "contiguous"),
    "weight-grad-chunks-mask": ({"CHUNK_ELEMS": 2 * 3 * 60}, (7, 3, (4, 5), 3), "mask", "contiguous"),
    "weight-grad-chunks-channels-last": ({"CHUNK_ELEMS": 2 * 3 * 60}, (7, 3, (4, 5), 3), "mask", "channels_last"),
    "weight-grad-chunks-positions": ({"CHUNK_ELEMS": 2 * 3 * 60}, (7, 3, (4, 5), 3), "mask_pos", "contiguous"),
    "weight-grad-chunks-full": ({"CHUNK_ELEMS": 2 * 3 * 60}, (7, 3, (4, 5), 3), "mask_full", "strided"),
    # [B, C] codes (one element per channel): indices for 2 examples per chunk (5 bags x K = 3 each)
    "index-chunks": ({"CHUNK_ELEMS": 2 * 5 * 3}, (7, 5, (), 3), "mask", "contiguous"),
    "index-chunks-k8": ({"CHUNK_ELEMS": 3 * 5 * 8}, (9, 5, (), 8), "mask", "contiguous"),
    # long rows cut into bags of 8 elements (row of 24 = 3 bags; a channel of 24 = 3 bags per channel)
    "segments-simplex": ({"SEGMENT": 8, "PIECE_MIN": 4}, (5, 2, (3, 4), 3), "simplex", "contiguous"),
    "segments-mask": ({"SEGMENT": 8, "PIECE_MIN": 4}, (5, 2, (4, 6), 3), "mask", "contiguous"),
    "segments-and-index-chunks": (
        {"SEGMENT": 8, "PIECE_MIN": 4, "CHUNK_ELEMS": 2 * 2 * 3 * 8},
        (9, 2, (4, 6), 8),
        "mask",
        "contiguous",
    ),
    # an odd row length has no piece >= PIECE_MIN that divides it: one long bag
    "odd-long-row": ({"SEGMENT": 8, "PIECE_MIN": 4}, (5, 1, (5, 5), 3), "simplex", "contiguous"),
    # position masks: through embedding_bag when the channels-last groups reach BAG_MIN, else summed in place
    "positions-bags": ({"BAG_MIN": 2}, (5, 3, (4, 5), 3), "mask_pos", "channels_last"),
    "positions-in-place": ({"BAG_MIN": 64}, (5, 20, (4, 5), 3), "mask_pos", "channels_last"),
    "empty-batch-simplex": ({}, (0, 3, (4,), 2), "simplex", "contiguous"),
    "empty-batch-mask": ({}, (0, 3, (4,), 2), "mask", "contiguous"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(SIZE_PATHS))
def test_every_size_path_of_the_torch_impl_matches_ref(case, dtype, monkeypatch):
    from amr_fast.kernels import torch_mix

    thresholds, (B, C, S, K), kind, layout = SIZE_PATHS[case]
    for name, value in thresholds.items():
        assert hasattr(torch_mix, name)
        monkeypatch.setattr(torch_mix, name, value)
    if "SEGMENT" in thresholds:  # the rows are in fact cut (or, odd, kept whole)
        row = math.prod(S) * (C if kind == "simplex" else 1)
        assert (torch_mix._segments(row) > 1) != (case == "odd-long-row")
    check_against_ref("torch", B, C, S, K, kind, dtype, layout)


@pytest.mark.parametrize("kind", KINDS + MASK_KINDS[1:2])
@pytest.mark.parametrize("needs", ["h", "weights"])
def test_backward_computes_only_the_gradients_asked_for(kind, needs):
    """The custom op's backward with only h (or only the weights) requiring grad equals ref's."""
    h, perm, weights, grad = make_case(6, 3, (4,), 3, kind, torch.float32, "contiguous")
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
    got = {}
    for impl in ("ref", "torch"):
        hh, ww = h.clone().requires_grad_(needs == "h"), weights.clone().requires_grad_(needs == "weights")
        op(hh, perm, ww, impl=impl).backward(grad)
        assert (hh.grad is None) == (needs != "h") and (ww.grad is None) == (needs != "weights")
        got[impl] = hh.grad if needs == "h" else ww.grad
    torch.testing.assert_close(got["torch"], got["ref"], atol=1e-5 * got["ref"].abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS + MASK_KINDS[1:2])
def test_torch_float64_equals_ref_to_float64_rounding(kind, monkeypatch):
    """float64 stays float64 through the torch impl (forward, grad of h, grad of the weights, chunked too): it
    equals ref to ~1e-12 relative, where an fp32 accumulation anywhere would be ~1e-7 off."""
    from amr_fast.kernels import torch_mix

    monkeypatch.setattr(torch_mix, "CHUNK_ELEMS", 2 * 3 * 24)  # 2 examples per weight-gradient chunk
    h, perm, weights, grad = make_case(7, 3, (8,), 3, kind, torch.float64, "contiguous")
    weights, grad = weights.double(), grad.double()
    op = kernels.simplex_mix if kind == "simplex" else kernels.mask_mix
    got = {}
    for impl in ("ref", "torch"):
        hh, ww = h.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        out = op(hh, perm, ww, impl=impl)
        out.backward(grad)
        got[impl] = (out, hh.grad, ww.grad)
    for a, b in zip(got["torch"], got["ref"]):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-12 * b.abs().max().item(), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS + MASK_KINDS[1:2])
def test_torch_weight_grad_of_half_inputs_sums_exact_products_in_fp32(kind):
    """bf16 h, grad and weights: each product of two bf16 numbers is exact in fp32, and their sum is accumulated in
    fp32, so the weights' gradient is within fp32 rounding of the float64 one (rounding the products to bf16
    first would be ~1e-3 off), returned in the weights' dtype."""
    from amr_fast.kernels import torch_mix

    h, perm, weights, grad = make_case(7, 3, (8,), 3, kind, torch.bfloat16, "contiguous")
    weights = weights.bfloat16()
    got = torch_mix.weight_grad(grad, h, perm, weights)
    assert got.dtype == torch.bfloat16
    want = mixing.mask_mix if kind != "simplex" else mixing.simplex_mix
    ww = weights.double().requires_grad_(True)
    want(h.double(), perm, ww).backward(grad.double())
    exact = ww.grad.bfloat16()  # float64, rounded once to the weights' dtype
    assert (got == exact).float().mean() > 0.95


def test_torch_position_mix_of_half_inputs_sums_exact_products_in_fp32():
    """fp16 h and soft fp16 position masks (the in-place path, one partner at a time): each product is exact in
    fp32 and summed there, then rounded once to fp16, as the reference does (rounding a product to fp16 first
    moves some outputs by an ulp)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(16, 8, 6, 6, generator=g).half()
    m = torch.rand(16, 2, 1, 6, 6, generator=g).half()
    perm = torch.stack([torch.arange(16), torch.randperm(16, generator=g)])
    got = kernels.mask_mix(h, perm, m, impl="torch")
    assert got.dtype == torch.float16
    assert torch.equal(got, mixing.mask_mix(h, perm, m))
