"""The networks of both trainers and their factories: `build_networks(TrainConfig)` (AMR, Beckham et al.,
NeurIPS 2019) and `build_classifier(ClassifyConfig)` (Manifold Mixup, Verma et al., ICML 2019); `unwrap` takes a
module out of its DDP / torch.compile wrappers.

`build_networks(cfg)` returns a dict of plain modules (no losses inside, no DDP):
- "ae": `.encode(x) -> h` [B, *code_shape]; `.decode(h) -> x_rec` in [-1, 1] (tanh); `.decode_with_logits(h)
  -> (x_rec, logits)` (BCE reconstruction); `.forward(x) -> (h, x_rec)`; `.code_shape`; VAE: `.encode_stats`.
- "disc": `.forward(x) -> logits [B]`; `.forward_aux(x) -> (logits, class logits)` (ACGAN head, only with
  mixer=class); `.run(f, start, stop)` / `.outputs(f, aux)` / `.num_blocks` to mix real and fake hidden states
  after a block (disc_mix). Holds spectral-norm buffers (u, v): broadcast them from rank 0 with the weights.
- "probe": `nn.Linear(prod(code_shape), num_classes)`, used as `probe(h.detach().flatten(1))`.
- "mixer" (only when cfg.mixer == "class"): `ClassMixer`, `mixer(y_mix [B, num_classes]) -> m [B, K, C]`;
  trained with the autoencoder (it belongs in opt_ae and in the "ae" phase).

The Manifold Mixup classifiers (PreActResNet, WRN: `preact_resnet.py` / `wrn.py`) are `StagedClassifier`s:
`model(x, mix_layer=k, mix=f)` applies `f` to the hidden state before stage k.
"""

from __future__ import annotations

import math

from torch import nn

from amr_fast.config import ClassifyConfig, TrainConfig
from amr_fast.models.amr32 import AMR32AutoEncoder, AMR32Discriminator
from amr_fast.models.base import AutoEncoder, Discriminator
from amr_fast.models.dsprites import DSpritesAutoEncoder, DSpritesDiscriminator
from amr_fast.models.mixer import ClassMixer
from amr_fast.models.mlp import MLPAutoEncoder, MLPDiscriminator
from amr_fast.models.preact_resnet import preact_resnet18, preact_resnet34
from amr_fast.models.wrn import wrn28_10


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


def build_classifier(cfg: ClassifyConfig) -> nn.Module:
    """The classifier of cfg.arch for cfg.channels x 32 x 32 inputs (a StagedClassifier)."""
    if cfg.arch == "wrn28_10":
        model = wrn28_10(cfg.channels, cfg.num_classes, cfg.width, cfg.dropout)
    else:
        build = {"preactresnet18": preact_resnet18, "preactresnet34": preact_resnet34}[cfg.arch]
        model = build(cfg.channels, cfg.num_classes, cfg.width, cfg.head_bn)
    if cfg.norm_mean or cfg.norm_std:
        model.set_input_norm(cfg.norm_mean, cfg.norm_std)
    if cfg.mode == "manifold" and max(cfg.mix_layers) >= model.num_mix_layers:
        raise ValueError(
            f"mix_layers={cfg.mix_layers} goes past {cfg.arch}'s {model.num_mix_layers} mixable positions; "
            f"use values in 0..{model.num_mix_layers - 1}"
        )
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers (we call its methods, e.g.
    encode / decode, which a wrapper's forward would not see)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


__all__ = ["build_networks", "build_classifier", "unwrap", "AutoEncoder", "Discriminator", "ClassMixer"]
