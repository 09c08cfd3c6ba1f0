"""Pre-activation ResNets for 32x32 inputs (He et al., ECCV 2016), the classifier of Manifold Mixup.

Verma et al. (ICML 2019), section 2 / appendix: the network is cut into stages; Manifold Mixup draws k from a set
of "mixable" positions, runs the stages before k on the clean batch, mixes the hidden state there
(`h_mix = lam h + (1 - lam) h[perm]`, eq. 2), and runs the remaining stages on `h_mix`. Position 0 is the input
(input mixup), position 1 is after the first stage (stem + first residual stage), position 2 after the second.

`StagedClassifier` holds that forward pass once; PreActResNet18/34 here and WRN-28-10 (`models/wrn.py`) only
define their stages. A width multiplier scales every channel count (64, 128, 256, 512 at width 1) so that the
same architecture trains on a small CPU.

As the public code (vikasverma1077/manifold_mixup supervised/models/preresnet.py), PreActResNet's head is layer4 ->
average pool -> linear, without a final BN-ReLU (`head_bn=True` adds one, as He et al.'s pre-activation nets and
WRN do). `set_input_norm(mean, std)` makes the network standardise its [-1, 1] input per channel as the public
code's transforms.Normalize on [0, 1] pixels (CIFAR's per-channel statistics); inside the network, so FGSM and
input mixup still act on pixels (an affine map commutes with a convex mix).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class StagedClassifier(nn.Module):
    """A classifier as a list of stages; `forward(x, mix_layer, mix)` applies `mix` to the input of stage
    `mix_layer` (0 = the image itself) and nothing else. The last stage is the head (pool + linear)."""

    stages: nn.ModuleList

    def set_input_norm(self, mean: tuple[float, ...] = (), std: tuple[float, ...] = ()) -> None:
        """Standardise the input as (pixel - mean) / std per channel, pixel = (x + 1) / 2 in [0, 1]; () = keep
        [-1, 1] (the public code's SVHN normalisation, mean = std = 0.5). Non-persistent: the config carries it."""
        if len(mean) != len(std):
            raise ValueError(f"norm_mean and norm_std need one value per channel each; got {mean} and {std}")
        m, s = torch.tensor(mean or (0.5,)), torch.tensor(std or (0.5,))
        if (s <= 0).any():
            raise ValueError(f"norm_std must be > 0; got {std}")
        self.register_buffer("in_mean", (2 * m - 1).reshape(1, -1, 1, 1), persistent=False)  # in [-1, 1] units
        self.register_buffer("in_std", (2 * s).reshape(1, -1, 1, 1), persistent=False)

    def input_unit(self) -> torch.Tensor | float:
        """One unit of the standardised input (pixel - mean) / std, in [-1, 1] units: 2 std per channel [1, C, 1, 1]
        (1 when the network does not standardise: its input, [-1, 1], is then (pixel - 0.5) / 0.5)."""
        unit = getattr(self, "in_std", None)
        return 1.0 if unit is None else unit

    @property
    def num_mix_layers(self) -> int:
        """Positions where a hidden state may be mixed: the input of every stage but the head."""
        return len(self.stages) - 1

    def forward(
        self,
        x: torch.Tensor,  # [B, C, H, W] in [-1, 1]
        mix_layer: int | None = None,
        mix: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:  # logits [B, num_classes]
        if (mix_layer is None) != (mix is None):
            raise ValueError("pass both mix_layer and mix (or neither) to mix a hidden state")
        if mix_layer is not None and not 0 <= mix_layer < self.num_mix_layers:
            raise ValueError(f"mix_layer must lie in [0, {self.num_mix_layers}) for this network; got {mix_layer}")
        h = x
        if getattr(self, "in_mean", None) is not None:
            h = (h - self.in_mean) / self.in_std  # (pixel - mean) / std with pixel = (x + 1) / 2
        for i, stage in enumerate(self.stages):
            if i == mix_layer:
                h = mix(h)  # h_mix: every later stage sees the mixed state, every earlier one the clean batch
            h = stage(h)
        return h


def scaled(channels: int, width: float) -> int:
    """Channel count `channels` scaled by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or 1x1 conv) shortcut taken after the first BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(h))
        skip = h if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class Head(nn.Module):
    """[final BN-ReLU if bn (pre-activation nets end un-normalised),] global average pool, linear classifier."""

    def __init__(self, c_in: int, num_classes: int, bn: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in) if bn else None
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            h = F.relu(self.bn(h))
        return self.linear(h.mean(dim=(2, 3)))


def residual_stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` pre-activation blocks; the first one changes width and resolution."""
    layers = [PreActBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(blocks)]
    return nn.Sequential(*layers)


class PreActResNet(StagedClassifier):
    """PreActResNet for 32x32 images: stem conv3x3, four residual stages (widths 64, 128, 256, 512 times `width`,
    strides 1, 2, 2, 2), head (pool + linear; head_bn adds a BN-ReLU first). Stages for mixing: [stem + stage 1,
    stage 2, stage 3, stage 4, head]."""

    def __init__(
        self,
        blocks: tuple[int, ...],
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        head_bn: bool = False,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"PreActResNet needs 4 stage depths (e.g. (2, 2, 2, 2)); got {blocks}")
        c = [scaled(64 * 2**i, width) for i in range(4)]
        stem = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(stem, residual_stage(c[0], c[0], blocks[0], 1)),
                residual_stage(c[0], c[1], blocks[1], 2),
                residual_stage(c[1], c[2], blocks[2], 2),
                residual_stage(c[2], c[3], blocks[3], 2),
                Head(c[3], num_classes, bn=head_bn),
            ]
        )


def preact_resnet18(
    in_channels: int = 3, num_classes: int = 10, width: float = 1.0, head_bn: bool = False
) -> PreActResNet:
    """PreActResNet18 (the Manifold Mixup paper's network): 2 blocks per stage."""
    return PreActResNet((2, 2, 2, 2), in_channels, num_classes, width, head_bn)


def preact_resnet34(
    in_channels: int = 3, num_classes: int = 10, width: float = 1.0, head_bn: bool = False
) -> PreActResNet:
    """PreActResNet34: 3, 4, 6, 3 blocks per stage."""
    return PreActResNet((3, 4, 6, 3), in_channels, num_classes, width, head_bn)
