"""The 64x64 dSprites models of the AMR paper's table 4: Burgess et al. (2018, "Understanding disentangling in
beta-VAE") autoencoder with a 10-dim code, its beta-VAE variant, and a spectrally normalised conv discriminator.

Encoder: four 4x4 stride-2 convs (width channels, ReLU) 64 -> 4, flatten, FC 256, FC 256, FC to the code
(2 x code_dim for the VAE: mean and log-variance). Decoder: the mirror (FC 256, 256, width*16, four 4x4
stride-2 transposed convs), tanh. Discriminator: four spectrally normalised 4x4 stride-2 convs, FC 256, FC 256,
one logit (the public code's `architectures/konny/model.py` Discriminator). Kaiming-normal init of the Conv2d and
Linear layers as that code; its ConvTranspose2d layers keep PyTorch's default init (its `kaiming_init` matches
only Linear and Conv2d), and so do ours.

Quirks of the public code and what we did:
- FIXED: its VAE read the second half of the encoder output as the *standard deviation* of a Normal (it can be
  negative, which crashes or silently flips the sign); ours is the log-variance, std = exp(logvar / 2).
- CHANGED (same maths): D and the decoder end in sigmoid / tanh there; here D returns logits and the loss uses
  `binary_cross_entropy_with_logits`; BCE reconstruction uses the decoder's logits (AutoEncoder.decode_with_logits).
"""

from __future__ import annotations

from torch import nn

from amr_fast.models.base import AutoEncoder, Discriminator, sn


def _kaiming(module: nn.Module) -> None:
    """Kaiming-normal weights, zero biases, on Conv2d and Linear layers only, as the public `kaiming_init`: the
    decoder's ConvTranspose2d layers keep PyTorch's default init there (so here)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)


class DSpritesAutoEncoder(AutoEncoder):
    def __init__(self, channels: int = 1, width: int = 32, code_dim: int = 10, vae: bool = False):
        super().__init__()
        w = width
        self.vae = vae
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.ReLU(),  # [B, w, 32, 32]
            nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 16, 16]
            nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 8, 8]
            nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 4, 4]
            nn.Flatten(),  # [B, w * 16]
            nn.Linear(w * 16, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 2 * code_dim if vae else code_dim),  # [B, code_dim] (VAE: mu, logvar)
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, w * 16), nn.ReLU(),
            nn.Unflatten(1, (w, 4, 4)),
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 8, 8]
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 16, 16]
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(),  # [B, w, 32, 32]
            nn.ConvTranspose2d(w, channels, 4, 2, 1),  # [B, C, 64, 64] pre-activation
        )  # fmt: skip
        self.code_shape = (code_dim,)
        _kaiming(self)


class DSpritesDiscriminator(Discriminator):
    def __init__(self, channels: int = 1, width: int = 32, num_classes: int = 0):
        super().__init__()
        w = width
        convs = [nn.Conv2d(channels, w, 4, 2, 1)] + [nn.Conv2d(w, w, 4, 2, 1) for _ in range(3)]
        fc1, fc2, out = nn.Linear(w * 16, 256), nn.Linear(256, 256), nn.Linear(256, 1)
        aux = nn.Linear(256, num_classes) if num_classes else None
        _kaiming(nn.ModuleList(convs + [fc1, fc2, out] + ([aux] if aux else [])))
        blocks = [nn.Sequential(sn(conv), nn.ReLU()) for conv in convs]  # 64 -> 32 -> 16 -> 8 -> 4
        blocks.append(nn.Sequential(nn.Flatten(), sn(fc1), nn.ReLU(), sn(fc2), nn.ReLU()))  # [B, 256]
        self.blocks = nn.ModuleList(blocks)
        self.head = sn(out)
        self.aux = sn(aux) if aux else None
