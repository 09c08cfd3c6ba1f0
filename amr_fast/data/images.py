"""The one conversion from stored images to model inputs: uint8 pixels [0, 255] -> float32 in [-1, 1].

Shards store images as uint8 `[N, C, H, W]` (docs/design.md, "The flow of one AMR training step"); every network
of both papers takes them in [-1, 1] (the decoders end in tanh). Point datasets (the spiral) store float32
coordinates, which pass unscaled.
"""

from __future__ import annotations

import numpy as np
import torch


def to_unit(x: torch.Tensor | np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1); float inputs are taken as already in range. With
    `device`, the uint8 tensor is moved first (a quarter of the bytes) and converted there."""
    x = torch.as_tensor(x)
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()
