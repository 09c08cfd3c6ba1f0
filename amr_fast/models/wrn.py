"""Wide ResNet WRN-28-10 for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016) as the Manifold Mixup code builds it
(Verma et al., ICML 2019, table 1; vikasverma1077/manifold_mixup supervised/models/wide_resnet.py).

Depth 28 = 6 n + 4 with n = 4 blocks per stage; widths 16, 16 k, 32 k, 64 k with widen factor k = 10. As the
public network, and unlike the PreActResNet blocks: every convolution has a bias; a block is BN-ReLU-conv3x3
(stride 1) - BN-ReLU - conv3x3 (the stage's stride here, on the second conv); the shortcut (a 1x1 conv with bias
where the shape changes) takes the block's raw input, not BN-ReLU of it; the head is BN-ReLU-pool-linear with the
final BN built with momentum 0.9 in PyTorch's meaning (running = 0.1 running + 0.9 batch: the evaluation uses
almost the last training batch's statistics; the public code is PyTorch, so this is what it ran). Weights keep
PyTorch's default initialisation, as there (its `conv_init` is never applied). The public code removed WRN's
dropout; `dropout` > 0 puts it back between the two convs (off by default).

Stages for mixing (see `StagedClassifier`): [stem conv + stage 1, stage 2, stage 3, head], so mix layers 0 (input),
1 and 2 are the public code's `random.randint(0, 2)`. The width multiplier scales every channel count on top of k.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from amr_fast.models.preact_resnet import Head, StagedClassifier, scaled

HEAD_BN_MOMENTUM = 0.9  # the public Wide_ResNet's nn.BatchNorm2d(nStages[3], momentum=0.9) (PyTorch's meaning)


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3(stride) + shortcut(x); shortcut = identity or 1x1 conv(stride) of the raw x."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + self.shortcut(x)


def wide_stage(c_in: int, c_out: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    """`blocks` WideBlocks; the first one changes width and resolution."""
    return nn.Sequential(*[WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, dropout)
                           for i in range(blocks)])  # fmt: skip


class WideResNet(StagedClassifier):
    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6 n + 4 (e.g. 28); got {depth}")
        n = (depth - 4) // 6
        c0 = scaled(16, width)
        c = [scaled(16 * widen * 2**i, width) for i in range(3)]
        head = Head(c[2], num_classes)
        head.bn.momentum = HEAD_BN_MOMENTUM
        stem = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(stem, wide_stage(c0, c[0], n, 1, dropout)),
                wide_stage(c[0], c[1], n, 2, dropout),
                wide_stage(c[1], c[2], n, 2, dropout),
                head,
            ]
        )


def wrn28_10(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10."""
    return WideResNet(28, 10, in_channels, num_classes, width, dropout)
