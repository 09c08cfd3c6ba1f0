"""models.cpu_ops.StemBlock: a 1x1 stem and the 3x3 convolution after it run as one linear map on channels-last CPU
input, the same maths as the layers one by one (forward, every gradient, with spectral norm and InstanceNorm after
it); the layers one by one everywhere else; the same state_dict as nn.Sequential."""

import pytest
import torch
from torch import nn

from amr_fast.models import cpu_ops
from amr_fast.models.amr32 import AMR32AutoEncoder, AMR32Discriminator
from amr_fast.models.base import sn, to_channels_last
from amr_fast.models.cpu_ops import InstanceNorm, StemBlock


def _block(cin: int, padding: int, bias: bool, spectral: bool, norm: bool) -> StemBlock:
    conv = nn.Conv2d(4, 5, 3, padding=1)
    layers = [nn.Conv2d(cin, 4, 1, padding=padding, bias=bias), sn(conv) if spectral else conv]
    layers += [InstanceNorm(5)] if norm else []
    return StemBlock(*layers, nn.LeakyReLU(0.01)).double()


@pytest.mark.parametrize("cin, padding, bias, spectral, norm",
                         [(1, 1, True, True, False), (3, 1, True, False, True), (2, 0, False, False, False),
                          (1, 2, True, False, False), (1, 0, False, False, False)])  # fmt: skip
@pytest.mark.parametrize("channels_last", [True, False])
def test_stem_block_is_the_layers_one_by_one(cin, padding, bias, spectral, norm, channels_last, monkeypatch):
    fused = _block(cin, padding, bias, spectral, norm)
    plain = nn.Sequential(*[m for m in _block(cin, padding, bias, spectral, norm)])
    plain.load_state_dict(fused.state_dict())  # the same keys (spectral norm's u, v included)
    calls = []
    real = cpu_ops._stem_conv3x3
    monkeypatch.setattr(cpu_ops, "_stem_conv3x3", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, cin, 6, 7, dtype=torch.float64)
    x = to_channels_last(x) if channels_last else x
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y, r = fused(x1), plain(x2)
    assert bool(calls) == channels_last  # one linear map on channels-last CPU input only
    assert y.shape == r.shape == (3, 5, 6 + 2 * padding, 7 + 2 * padding)
    torch.testing.assert_close(y, r)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(r)
    y.backward(g)
    r.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_stem_block_in_bf16_autocast_is_within_rounding():
    fused = _block(1, 1, True, False, False).float()
    plain = nn.Sequential(*[m for m in _block(1, 1, True, False, False).float()])
    plain.load_state_dict(fused.state_dict())
    x = to_channels_last(torch.randn(8, 1, 8, 8))
    with torch.autocast("cpu", torch.bfloat16):
        y, r = fused(x), plain(x)
    assert y.dtype == r.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), r.float(), atol=3e-2, rtol=3e-2)


def test_stem_block_off_the_cpu_runs_the_layers(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_stem_conv3x3", None)  # never called off the CPU
    block = _block(1, 1, True, False, False).float().to("meta")
    x = torch.randn(2, 1, 4, 4, device="meta").contiguous(memory_format=torch.channels_last)
    assert block(x).shape == (2, 5, 6, 6)


def test_stem_block_refuses_other_layers():
    with pytest.raises(ValueError, match="1x1 convolution"):
        StemBlock(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="3x3 convolution"):
        StemBlock(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, padding=1, stride=2))


def test_the_amr32_models_open_with_a_stem_block():
    """Both 32x32 networks' first block is a StemBlock: the public quirk (a 1x1 stem with padding 1) is kept."""
    enc, disc = AMR32AutoEncoder().encoder[0], AMR32Discriminator().blocks[0]
    for block in (enc, disc):
        assert isinstance(block, StemBlock) and block[0].padding == (1, 1)
