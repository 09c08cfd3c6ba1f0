"""The class-conditional mixer of AMR's supervised mixing (Beckham et al., NeurIPS 2019).

An MLP maps a mixed label vector `y_mix` [B, num_classes] (each class taken from one of the k sources) to
per-channel mixing weights `m` [B, K, C] for `amr_fast.kernels.mask_mix`: for K = 2, p = sigmoid(mlp(y_mix))
[B, C] and m = [p, 1 - p] (the public code's formula); for K > 2, a softmax over the K sources per channel.

FIXED from the public code (architectures/discriminators.py ClassMixer): its MLP ended in a ReLU *before* the
sigmoid, so every mask probability was sigmoid(>= 0) >= 0.5 and the first source always dominated. Ours feeds the
last linear layer's output straight into the sigmoid, so masks cover (0, 1).
"""

from __future__ import annotations

import torch
from torch import nn


class ClassMixer(nn.Module):
    def __init__(self, num_classes: int, channels: int, k: int = 2, hidden: int = 128):
        super().__init__()
        self.k, self.channels = k, channels
        n_out = channels if k == 2 else k * channels
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_out),  # no ReLU here (the public code's bug)
        )  # fmt: skip

    def forward(self, y_mix: torch.Tensor) -> torch.Tensor:  # [B, num_classes] -> m [B, K, C]
        logits = self.net(y_mix.float())
        if self.k == 2:
            p = torch.sigmoid(logits)  # [B, C]
            return torch.stack([p, 1 - p], dim=1)
        return logits.view(-1, self.k, self.channels).softmax(dim=1)
