"""MLP autoencoder and discriminator for the 2-D spiral toy of the AMR supplement (the consistency loss).

Points arrive as float [B, 2] (the data stream's point datasets; cfg channels=2, img_size=1); inputs of any
shape are flattened to [B, channels * img_size^2], three hidden layers of `width` units with LeakyReLU(0.2) map
them to the code [B, code_dim]; the decoder mirrors it, tanh, and returns [B, channels] for img_size 1 (points)
or [B, channels, img_size, img_size] otherwise. The
discriminator is a spectrally normalised MLP of the same width. Mixing a [B, code_dim] code is `mask_mix` over
"channels" (one channel per code dimension, no spatial dims) or `simplex_mix`.
"""

from __future__ import annotations

from torch import nn

from amr_fast.models.base import AutoEncoder, Discriminator, sn


def _mlp(n_in: int, width: int, n_out: int, depth: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.LeakyReLU(0.2)]
    return layers + [nn.Linear(width, n_out)]


class MLPAutoEncoder(AutoEncoder):
    def __init__(self, channels: int = 2, img_size: int = 1, width: int = 128, code_dim: int = 2, vae: bool = False):
        super().__init__()
        n = channels * img_size * img_size
        self.vae = vae
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(n, width, 2 * code_dim if vae else code_dim))
        out_shape = (channels,) if img_size == 1 else (channels, img_size, img_size)
        self.decoder = nn.Sequential(*_mlp(code_dim, width, n), nn.Unflatten(1, out_shape))
        self.code_shape = (code_dim,)


class MLPDiscriminator(Discriminator):
    def __init__(self, channels: int = 2, img_size: int = 1, width: int = 128, num_classes: int = 0):
        super().__init__()
        n = channels * img_size * img_size
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Flatten(), sn(nn.Linear(n, width)), nn.LeakyReLU(0.2)),
                nn.Sequential(sn(nn.Linear(width, width)), nn.LeakyReLU(0.2)),
                nn.Sequential(sn(nn.Linear(width, width)), nn.LeakyReLU(0.2)),
            ]
        )
        self.head = sn(nn.Linear(width, 1))
        self.aux = sn(nn.Linear(width, num_classes)) if num_classes else None
