"""The two module shapes every AMR architecture shares: an autoencoder and a block-structured discriminator.

AMR (Beckham et al., NeurIPS 2019): `h = enc(x)`, `x_rec = dec(h)`, a discriminator D on images.
Architectures (`amr32.py`, `dsprites.py`, `mlp.py`) only build the layers; the methods live here once:

- `AutoEncoder.encode(x) -> h` ([B, C, *S]); `decode(h) -> x_rec` in [-1, 1] (tanh); `decode_with_logits(h)
  -> (x_rec, logits)` where `sigmoid(logits) = (x_rec + 1) / 2`, for BCE reconstruction with logits (safe under
  autocast); `forward(x) -> (h, x_rec)`. A VAE (`vae = True`) also has `encode_stats(x) -> (mu, logvar)`, and
  `encode` returns the mean `mu` (the deterministic code used for mixing and the probe).
- `Discriminator` is a list of `blocks`, then a `head` to one logit per example and, for the supervised
  class-conditional mixer, an ACGAN `aux` head to class logits (Odena et al. 2017) on the pooled output of the last
  block. `forward(x) -> logits [B]`; `forward_aux(x) -> (logits [B], aux logits [B, num_classes])`; `run(f, start,
  stop)` runs a slice of the blocks and `outputs(f)` the heads, so that a loss can mix real and fake hidden
  states after block `l` (Manifold Mixup's GAN experiments, Verma et al. ICML 2019) without a second network.

Also the two helpers every architecture uses: `sn` (spectral normalisation) and `to_channels_last` (channels-last
strides for any number of channels). The layers with our own CPU kernels are in `cpu_ops`.
"""

from __future__ import annotations

import torch
from torch import nn


class AutoEncoder(nn.Module):
    encoder: nn.Module
    decoder: nn.Module  # outputs pre-activations z; decode = tanh(z)
    vae: bool = False
    code_shape: tuple[int, ...]  # shape of h without the batch dim

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE only: (mu, logvar), each [B, *code_shape]."""
        if not self.vae:
            raise ValueError("encode_stats is for VAEs; this autoencoder is deterministic (use encode)")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> h [B, *code_shape]
        if self.vae:
            return self.encode_stats(x)[0]
        return self.encoder(x)

    def decode_with_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_rec in [-1, 1], Bernoulli logits of (x_rec + 1) / 2): tanh(z) = 2 sigmoid(2 z) - 1."""
        z = self.decoder(h)
        return torch.tanh(z), 2 * z

    def decode(self, h: torch.Tensor) -> torch.Tensor:  # h [B, *code_shape] -> x_rec [B, C, H, W] in [-1, 1]
        return torch.tanh(self.decoder(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(x)
        return h, self.decode(h)


class Discriminator(nn.Module):
    blocks: nn.ModuleList
    head: nn.Module  # last features -> [B, ...] logit map, averaged to one logit per example
    aux: nn.Module | None  # ACGAN head: pooled last features -> class logits (None without the class mixer)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run(self, f: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Features after blocks[start:stop] (start = 0: f is the image)."""
        for block in self.blocks[start:stop]:
            f = block(f)
        return f

    def outputs(self, f: torch.Tensor, aux: bool = False):
        """Heads on the last block's output: logits [B] (and aux class logits [B, num_classes] if aux)."""
        logits = self.head(f).flatten(1).mean(dim=1)  # [B]: the public code averages D's output map
        if not aux:
            return logits
        if self.aux is None:
            raise ValueError("this discriminator has no ACGAN head; build it with mixer=class")
        pooled = f.flatten(2).mean(dim=2) if f.dim() > 2 else f  # [B, F]
        return logits, self.aux(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> logits [B]
        return self.outputs(self.run(x))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.run(x), aux=True)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] in channels-last memory with channels-last strides, also for C = 1: there torch keeps
    NCHW strides (both describe the same memory) and a channels-last stem conv then returns NCHW maps, which every
    following conv copies back, forward and backward."""
    if x.dim() != 4:
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    B, C, H, W = x.shape
    return x.as_strided(x.shape, (H * W, 1, W, 1)) if C == 1 else x


def sn(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018), one power iteration per training forward."""
    return nn.utils.parametrizations.spectral_norm(module)
