"""The 32x32 family of the public AMR code (ACAI-style, Berthelot et al. 2019; AMR tables 1-3).

Encoder: a 1x1 stem, then per scale two 3x3 convs with InstanceNorm (affine) and LeakyReLU, average pooling;
then a 3x3 conv to `width << scales` channels (128 at width 16) and a 3x3 conv to the bottleneck `L x 4 x 4`
(L = code_channels: 2, 16 or 64 -> 32, 256 or 1024 dims). Decoder: the mirror (3x3 convs, nearest upsampling).
Discriminator: the same encoder without normalisation, spectrally normalised, its `L_d x 4 x 4` output averaged to
one logit. The number of scales is log2(img_size / 4): 3 for 32x32 (the paper), 4 for 64x64.

Quirks of the public code (architectures/arch_kyle.py) and what we did with each:
- KEPT: the 1x1 stem has padding=1, so the first maps are 34x34 (then 17, 8, 4 after pooling). It changes the
  computation the tables were produced with, so it stays (and the speed comparison stays like for like).
- KEPT: LeakyReLU slope 0.01 (torch's default), although the initialiser assumes 0.2.
- KEPT: D's 1x1 stem is not spectrally normalised (only the 3x3 convs are).
- KEPT: D's spectrally normalised layers keep PyTorch's default init (uniform weights and biases): the public
  initialiser tests `hasattr(layer, 'weight')`, which is False on its SpectralNorm wrapper (the weight lives on
  the wrapped conv as `weight_bar`), so only D's stem gets the ACAI init there. The ACGAN head does the same.
- FIXED: the initialiser's fan-in used `prod(weight.shape[:-1])` = out*in*kh instead of in*kh*kw (weights ~sqrt(
  out/kw) too small); we use std = 1 / sqrt((1 + 0.2^2) * in*kh*kw).
- FIXED: that initialiser also drew the InstanceNorm scales from N(0, ~1) (it touched every layer with a
  `weight`); ours start at 1 (bias 0), the usual affine-norm init.
- CHANGED: the decoder ends in tanh (public: a linear output), so x_rec lies in [-1, 1] like x and BCE can be
  computed from logits (AutoEncoder.decode_with_logits).
- SAME MATHS, FASTER: InstanceNorm2d(C, affine=True) is `cpu_ops.InstanceNorm`, computed as GroupNorm(C, C) (one
  channel per group: the same per-example, per-channel normalisation and affine, same eps and parameter names;
  torch's CPU instance_norm goes through a slower batch-norm reshape), and by our own NHWC function on
  channels-last maps (the presets' default layout).
- SAME MATHS, FASTER: the first block is a `cpu_ops.StemBlock`: the 1x1 stem and the 3x3 conv right after it
  (nothing between them) run as one linear map on channels-last CPU input.
- SAME MATHS, FASTER: the 2x2 average pooling and the nearest 2x upsampling are `cpu_ops.AvgPool2` /
  `cpu_ops.Upsample2` (row-pair and column-pair adds / expand-copies, faster than torch's kernels on a CPU).
- The ACGAN head (class-conditional mixer only) is a spectrally normalised linear layer on D's pooled last
  features (public: a separate ResNet discriminator, architectures/discriminators.py).
"""

from __future__ import annotations

import math

from torch import nn

from amr_fast.models.base import AutoEncoder, Discriminator, sn
from amr_fast.models.cpu_ops import AvgPool2, InstanceNorm, StemBlock, Upsample2

SLOPE = 0.01  # the public code's nn.LeakyReLU() default


def _scales(img_size: int) -> int:
    return int(round(math.log2(img_size // 4)))


def _conv(cin: int, cout: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if norm:
        layers.append(InstanceNorm(cout))  # InstanceNorm2d(affine=True), our kernel on CPU
    layers.append(nn.LeakyReLU(SLOPE))
    return layers


def init_acai(module: nn.Module, slope: float = 0.2) -> None:
    """ACAI's init with the right fan-in: N(0, 1 / ((1 + slope^2) fan_in)), zero bias; norm scales 1."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()  # in * kh * kw
            nn.init.normal_(m.weight, std=1.0 / math.sqrt((1 + slope**2) * fan_in))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _encoder(channels: int, width: int, latent: int, scales: int, norm: bool) -> tuple[list[nn.Sequential], nn.Conv2d]:
    """Blocks [stem + scale 0], [scale 1], ..., [conv to width << scales], and the last conv to `latent` maps."""
    blocks: list[nn.Sequential] = []
    stem = nn.Conv2d(channels, width, 1, padding=1)  # quirk kept: 32x32 -> 34x34
    kp = width
    for s in range(scales):
        k = width << s
        layers = _conv(kp, k, norm) + _conv(k, k, norm) + [AvgPool2()]
        blocks.append(StemBlock(stem, *layers) if s == 0 else nn.Sequential(*layers))  # the stem and its conv: one
        kp = k
    blocks.append(nn.Sequential(*_conv(kp, width << scales, norm)))
    return blocks, nn.Conv2d(width << scales, latent, 3, padding=1)


class AMR32AutoEncoder(AutoEncoder):
    def __init__(self, channels: int = 1, width: int = 16, code_channels: int = 2, img_size: int = 32):
        super().__init__()
        scales = _scales(img_size)
        blocks, out = _encoder(channels, width, code_channels, scales, norm=True)
        self.encoder = nn.Sequential(*blocks, out)
        layers: list[nn.Module] = []
        kp = code_channels
        for s in range(scales - 1, -1, -1):
            k = width << s
            layers += _conv(kp, k, True) + _conv(k, k, True) + [Upsample2()]
            kp = k
        layers += _conv(kp, width, True) + [nn.Conv2d(width, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)
        self.code_shape = (code_channels, 4, 4)
        init_acai(self)


class AMR32Discriminator(Discriminator):
    def __init__(
        self, channels: int = 1, width: int = 16, code_channels: int = 2, img_size: int = 32, num_classes: int = 0
    ):
        super().__init__()
        blocks, out = _encoder(channels, width, code_channels, _scales(img_size), norm=False)
        feat = width << _scales(img_size)
        aux = nn.Linear(feat, num_classes) if num_classes else None
        init_acai(blocks[0][0])  # the plain 1x1 stem; the spectrally normalised layers keep PyTorch's default
        for block in blocks:  # spectral norm on every 3x3 conv; the 1x1 stem stays plain, as in the public code
            for i, m in enumerate(block):
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    block[i] = sn(m)
        self.blocks = nn.ModuleList(blocks)
        self.head = sn(out)
        self.aux = sn(aux) if aux else None
