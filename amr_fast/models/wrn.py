"""Wide ResNet WRN-28-10 for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016), used by Manifold Mixup (Verma et
al., ICML 2019, table 1) as the larger CIFAR classifier.

Depth 28 = 6 n + 4 with n = 4 pre-activation blocks per stage; widths 16, 16 k, 32 k, 64 k with widen factor
k = 10. Stages for mixing (see `StagedClassifier`): [stem conv + stage 1, stage 2, stage 3, head], so mix layers
0 (input), 1 and 2 are the paper's set. The width multiplier scales every channel count on top of k.
"""

from __future__ import annotations

from torch import nn

from amr_fast.models.preact_resnet import Head, StagedClassifier, residual_stage, scaled


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
        stem = nn.Conv2d(in_channels, c0, 3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(stem, residual_stage(c0, c[0], n, 1, dropout)),
                residual_stage(c[0], c[1], n, 2, dropout),
                residual_stage(c[1], c[2], n, 2, dropout),
                Head(c[2], num_classes),
            ]
        )


def wrn28_10(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10."""
    return WideResNet(28, 10, in_channels, num_classes, width, dropout)
