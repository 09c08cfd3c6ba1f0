"""Networks of the AMR trainer, built from a TrainConfig (Beckham et al., NeurIPS 2019).

`build_networks(cfg)` returns a dict of plain modules (no losses inside, no DDP):
- "ae": `.encode(x) -> h` [B, *code_shape]; `.decode(h) -> x_rec` in [-1, 1] (tanh); `.decode_with_logits(h)
  -> (x_rec, logits)` (BCE reconstruction); `.forward(x) -> (h, x_rec)`; `.code_shape`; VAE: `.encode_stats`.
- "disc": `.forward(x) -> logits [B]`; `.forward_aux(x) -> (logits, class logits)` (ACGAN head, only with
  mixer=class); `.run(f, start, stop)` / `.outputs(f, aux)` / `.num_blocks` to mix real and fake hidden states
  after a block (disc_mix). Holds spectral-norm buffers (u, v): broadcast them from rank 0 with the weights.
- "probe": `nn.Linear(prod(code_shape), num_classes)`, used as `probe(h.detach().flatten(1))`.
- "mixer" (only when cfg.mixer == "class"): `ClassMixer`, `mixer(y_mix [B, num_classes]) -> m [B, K, C]`;
  trained with the autoencoder (it belongs in opt_ae and in the "ae" phase).

The Manifold Mixup classifiers (PreActResNet, WRN) live in `preact_resnet.py` / `wrn.py`.
"""

from __future__ import annotations

import math

from torch import nn

from amr_fast.config import TrainConfig
from amr_fast.models.amr32 import AMR32AutoEncoder, AMR32Discriminator
from amr_fast.models.base import AutoEncoder, Discriminator
from amr_fast.models.dsprites import DSpritesAutoEncoder, DSpritesDiscriminator
from amr_fast.models.mixer import ClassMixer
from amr_fast.models.mlp import MLPAutoEncoder, MLPDiscriminator


def build_networks(cfg: TrainConfig) -> dict[str, nn.Module]:
    """{"ae", "disc", "probe"[, "mixer"]} for cfg.arch, on the CPU in fp32 (the loop moves them)."""
    cfg.validate()
    vae = cfg.method == "betavae"
    aux_classes = cfg.num_classes if cfg.mixer == "class" else 0
    dw = cfg.disc_width or cfg.width
    if cfg.arch == "amr32":
        ae: AutoEncoder = AMR32AutoEncoder(cfg.channels, cfg.width, cfg.code_channels, cfg.img_size)
        disc: Discriminator = AMR32Discriminator(cfg.channels, dw, cfg.code_channels, cfg.img_size, aux_classes)
    elif cfg.arch == "dsprites64":
        ae = DSpritesAutoEncoder(cfg.channels, cfg.width, cfg.code_dim, vae=vae)
        disc = DSpritesDiscriminator(cfg.channels, dw, aux_classes)
    else:  # "mlp" (validate() admits nothing else)
        ae = MLPAutoEncoder(cfg.channels, cfg.img_size, cfg.width, cfg.code_dim, vae=vae)
        disc = MLPDiscriminator(cfg.channels, cfg.img_size, dw, aux_classes)
    nets: dict[str, nn.Module] = {
        "ae": ae,
        "disc": disc,
        "probe": nn.Linear(math.prod(ae.code_shape), cfg.num_classes),
    }
    if cfg.mixer == "class":
        nets["mixer"] = ClassMixer(cfg.num_classes, ae.code_shape[0], cfg.k, cfg.mixer_hidden)
    return nets


__all__ = ["build_networks", "AutoEncoder", "Discriminator", "ClassMixer"]
