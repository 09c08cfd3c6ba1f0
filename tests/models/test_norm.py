"""models.cpu_ops.InstanceNorm: GroupNorm(C, C)'s maths (InstanceNorm2d, affine) in every layout; its channels-last
path (our autograd function) against torch's group_norm, forward and backward, fp64 and bf16."""

import pytest
import torch
from torch.nn import functional as F

from amr_fast.models.cpu_ops import InstanceNorm


def _pair(shape, dtype, channels_last):
    torch.manual_seed(0)
    norm = InstanceNorm(shape[1]).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = (3 * torch.randn(shape) + 2).to(dtype)  # a non-zero mean per map, as conv outputs have
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return norm, x


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 8, 4, 4), (1, 2, 1, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_matches_group_norm_in_fp64(shape, channels_last):
    norm, x = _pair(shape, torch.float64, channels_last)
    x.requires_grad_(True)
    y = norm(x)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    ref_x = x.detach().clone().requires_grad_(True)
    w, b = norm.weight.detach().clone().requires_grad_(True), norm.bias.detach().clone().requires_grad_(True)
    ref = F.group_norm(ref_x, shape[1], w, b, norm.eps)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(norm.weight.grad, w.grad)
    torch.testing.assert_close(norm.bias.grad, b.grad)
    assert torch.autograd.gradcheck(norm, (x.detach().clone().requires_grad_(True),))


def test_instance_norm_channels_last_bf16_is_within_rounding_and_leaves_its_input_alone():
    norm, x = _pair((4, 16, 9, 9), torch.float32, True)
    xb = x.bfloat16().requires_grad_(True)
    before = xb.detach().clone()
    y = norm(xb)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xb.detach(), before)  # the fp32 copy is normalised in place, never the input
    ref = F.group_norm(xb.detach().float(), 16, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=2e-2)
    # backward: a random upstream gradient (sum(y^2) would give a near-zero one: the normalised maps' norm is fixed)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    y.backward(g)
    xr = xb.detach().float().requires_grad_(True)
    w, b = norm.weight.detach().clone().requires_grad_(True), norm.bias.detach().clone().requires_grad_(True)
    F.group_norm(xr, 16, w, b, norm.eps).backward(g.float())
    for got, want in ((xb.grad, xr.grad), (norm.weight.grad, w.grad), (norm.bias.grad, b.grad)):
        scale = want.abs().max().item()
        assert scale > 0.1  # a gradient worth comparing: an all-zero one must fail the check below
        torch.testing.assert_close(got.float(), want, atol=1e-2 * scale, rtol=2e-2)  # bf16 rounding of dx, 2^-8
