"""models.cpu_ops.PointwiseConv: a padded 1x1 convolution as one matrix product on channels-last CPU input, the same
maths as nn.Conv2d forward and backward; torch's convolution everywhere else."""

import pytest
import torch

from amr_fast.models import cpu_ops
from amr_fast.models.base import to_channels_last
from amr_fast.models.cpu_ops import PointwiseConv


def _pair(cin: int, cout: int, padding: int, dtype=torch.float64) -> tuple[PointwiseConv, torch.nn.Conv2d]:
    ours = PointwiseConv(cin, cout, padding=padding).to(dtype)
    ref = torch.nn.Conv2d(cin, cout, 1, padding=padding).to(dtype)
    ref.load_state_dict(ours.state_dict())  # the same parameter names
    return ours, ref


@pytest.mark.parametrize("cin, cout, padding", [(1, 4, 1), (3, 5, 1), (2, 3, 0), (1, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_matches_conv2d(cin, cout, padding, channels_last, monkeypatch):
    ours, ref = _pair(cin, cout, padding)
    x = torch.randn(3, cin, 5, 7, dtype=torch.float64)
    if channels_last:
        x = to_channels_last(x)
    calls = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(cpu_ops.F, "linear", lambda *a: calls.append(1) or real(*a))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, r = ours(x1), ref(x2)
    assert bool(calls) == channels_last  # the matrix product on channels-last input only, torch's conv otherwise
    assert y.shape == r.shape == (3, cout, 5 + 2 * padding, 7 + 2 * padding)
    torch.testing.assert_close(y, r)
    if channels_last and cout > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)  # NHWC maps on, as torch's channels-last conv
    g = torch.randn_like(r)
    y.backward(g)
    r.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


def test_pointwise_conv_in_bf16_autocast_is_within_rounding():
    ours, ref = _pair(1, 16, 1, torch.float32)
    x = to_channels_last(torch.randn(8, 1, 6, 6))
    with torch.autocast("cpu", torch.bfloat16):
        y, r = ours(x), ref(x)
    assert y.dtype == r.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), r.float(), atol=2e-2, rtol=2e-2)


def test_pointwise_conv_on_another_device_is_torchs(monkeypatch):
    monkeypatch.setattr(cpu_ops.F, "linear", None)  # never called off the CPU
    ours = PointwiseConv(2, 3, padding=1).to("meta")
    x = torch.randn(2, 2, 4, 4, device="meta").contiguous(memory_format=torch.channels_last)
    assert ours(x).shape == (2, 3, 6, 6)
