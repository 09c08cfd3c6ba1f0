"""The public AMR code's training schedule on our networks: the reference `amr-fast bench train` times ours against.

`ReferenceStep` is one iteration of `SwapGAN.train_on_instance` (Beckham et al. 2019, models/swapgan.py, with the
k = 2 mixup of models/twogan.py) written out: EVERY iteration runs the encoder and both decoder passes with
autograd and D on x_rec and x_mix for the autoencoder's loss (its backward only every `ae_every`-th iteration),
then recomputes D on x, x_rec and x_mix for D's own loss; the probe learns on the detached code. Mixing through
`amr_fast.mixing` (the plain-torch spec), the losses of `amr_fast.losses`, the optimisers of the trainer
(`amr_fast.train.Parts.build`): only the schedule differs from ours.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from amr_fast import mixing
from amr_fast.config import TrainConfig
from amr_fast.data import to_unit
from amr_fast.losses import gan_loss, recon_loss
from amr_fast.train import Parts


class ReferenceStep:
    """One iteration of the public AMR code's schedule on `nets`; `passes` counts the network calls."""

    def __init__(self, cfg: TrainConfig, nets: dict, generator: torch.Generator) -> None:
        if cfg.mixer != "mixup" or cfg.k != 2 or cfg.method != "amr":
            raise ValueError("the reference schedule is written for method=amr, mixer=mixup, k=2")
        self.cfg, self.g = cfg, generator
        self.ae, self.disc, self.probe = nets["ae"], nets["disc"], nets["probe"]
        parts = Parts.build(cfg, nets)
        self.opt_ae, self.opt_disc, self.opt_probe = parts.opt_ae, parts.opt_disc, parts.opt_probe
        self.passes = {"enc": 0, "dec": 0, "disc": 0}
        self.it = 0

    def _dec(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.passes["dec"] += 1
        return self.ae.decode_with_logits(h)

    def _disc(self, x: torch.Tensor) -> torch.Tensor:
        self.passes["disc"] += 1
        return self.disc(x)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        x = to_unit(batch["x"])
        y = batch["y"]
        for opt in (self.opt_ae, self.opt_disc, self.opt_probe):
            opt.zero_grad()
        # Autoencoder's loss, built every iteration (with autograd), stepped every ae_every-th.
        self.passes["enc"] += 1
        h = self.ae.encode(x)
        x_rec, logits = self._dec(h)
        recon = recon_loss(cfg.recon, x_rec, logits, x)
        g_rec = gan_loss(self._disc(x_rec), 1.0)
        perm = mixing.sample_perm(2, x.shape[0], self.g)
        w = mixing.sample_uniform_weights(x.shape[0], self.g)
        h_mix = mixing.simplex_mix(h, perm, w)
        x_mix, _ = self._dec(h_mix)
        g_mix = gan_loss(self._disc(x_mix), 1.0)
        gen_loss = cfg.lamb * recon + g_rec + g_mix
        if self.it % cfg.ae_every == 0:
            gen_loss.backward()
            self.opt_ae.step()
        # Discriminator: recomputed on x, x_rec and x_mix.
        self.opt_disc.zero_grad()
        d_loss = gan_loss(self._disc(x), 1.0) + gan_loss(self._disc(x_rec.detach()), 0.0)
        d_loss = d_loss + gan_loss(self._disc(x_mix.detach()), 0.0)
        d_loss.backward()
        self.opt_disc.step()
        # Probe on the detached code.
        F.cross_entropy(self.probe(h.detach().flatten(1)), y).backward()
        self.opt_probe.step()
        self.it += 1
