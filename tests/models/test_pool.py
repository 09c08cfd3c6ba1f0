"""models.cpu_ops.AvgPool2 and Upsample2: the same maths as nn.AvgPool2d(2) and nearest 2x upsampling, forward and
backward, any layout and parity."""

import pytest
import torch
from torch.nn import functional as F

from amr_fast.models import cpu_ops
from amr_fast.models.cpu_ops import AvgPool2, Upsample2

CASES = [
    (AvgPool2, lambda t: F.avg_pool2d(t, 2), shape)
    for shape in [(2, 3, 9, 7), (2, 3, 8, 8), (1, 1, 2, 3), (3, 4, 17, 17)]
]
CASES += [
    (Upsample2, lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), s) for s in [(2, 3, 4, 5), (1, 1, 1, 1)]
]


@pytest.mark.parametrize("module, reference, shape", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_and_upsample_match_torch(module, reference, shape, channels_last):
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = module()(x)
    if channels_last and shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)  # the output keeps the input's memory format
    ref_x = x.detach().clone().requires_grad_(True)
    ref = reference(ref_x)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad)
    assert torch.autograd.gradcheck(module(), (x.detach().clone().requires_grad_(True),))


def test_avgpool2_bf16_is_within_rounding():
    x = torch.randn(2, 4, 10, 10)
    y = AvgPool2()(x.bfloat16()).float()
    torch.testing.assert_close(y, F.avg_pool2d(x, 2), atol=2e-2, rtol=2e-2)


def test_to_channels_last_gives_one_channel_images_strides_a_channels_last_stem_keeps():
    from amr_fast.models.base import to_channels_last

    stem = torch.nn.Conv2d(1, 4, 1, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 8, 8)
    assert not stem(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    y = to_channels_last(x)
    assert torch.equal(y, x) and y.stride() == (64, 1, 8, 1)
    assert stem(y).is_contiguous(memory_format=torch.channels_last)  # NHWC maps from the stem on
    z = to_channels_last(torch.randn(2, 3, 5, 5))
    assert z.is_contiguous(memory_format=torch.channels_last) and to_channels_last(torch.randn(4, 2)).shape == (4, 2)


@pytest.mark.parametrize(
    "module, tuned", [(AvgPool2, "_AvgPool2"), (Upsample2, "_Upsample2"), (None, "_InstanceNormNHWC")]
)
def test_cpu_tunings_run_on_cpu_only(module, tuned, monkeypatch):
    """The CPU tunings (our pooling, upsampling, NHWC InstanceNorm) are chosen by device: on a CPU tensor they run,
    on any other device (a meta tensor here, CUDA on a GPU) torch's own op does, in either memory format."""
    calls = []
    fn = getattr(cpu_ops, tuned)
    real = fn.apply
    monkeypatch.setattr(fn, "apply", lambda *a: calls.append(a[0].device.type) or real(*a))
    net = module() if module else cpu_ops.InstanceNorm(4)
    for device in ("cpu", "meta"):
        x = torch.randn(2, 4, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
        y = net.to(device)(x)
        assert y.shape[:2] == x.shape[:2]
    assert calls == ["cpu"]
