"""The AMR objective as one object with phases `ae`, `disc`, `probe` (Beckham et al., NeurIPS 2019).

    h = enc(x)                 x_rec = dec(h)            h_mix = Mix({h[perm_j]}_j)          x_mix = dec(h_mix)
    L_ae   = lamb * rec(x_rec, x) + BCE(D(x_rec), 1) + BCE(D(x_mix), 1) [+ beta |enc(x_mix) - h_mix|_1]
    L_disc = BCE(D(x), 1) + BCE(D(x_rec), 0) + BCE(D(x_mix), 0)

The mixing function Mix is picked by `cfg.mixer` in ONE place (`AMRLoss.__init__`): mixup (k = 2: a ~ U(0, 1)
per example; k > 2: w ~ Dirichlet(alpha)), Bernoulli (a 0/1 mask per channel, p ~ U(0, 1) per batch; k-way: each
channel from one of k sources, uniform per (example, channel) as the public code, `kway_sources`), CutMix of the
code grid (`cutmix`: a box, area ~ Beta(alpha, alpha), from the partner; k > 2 nested boxes; beyond the papers,
their section 5 proposal), per-position Bernoulli masks (`spatial_bernoulli`), or none (the AE+GAN baseline). The
supervised class-conditional mixer (section 2.2, eq. 7) is added to eq. 3, as the paper:
with mixer=class the unsupervised mix of `cfg.class_unsup_mixer` (Bernoulli by default) keeps its terms above,
and a second, class-conditional mix h_cmix = Mix_sup(h, y_mix) (an MLP maps a mixed label vector y_mix to
per-channel masks) adds
    L_ae   += BCE(D(x_cmix), 1) + cls_weight * BCE(C(x_cmix), y_mix)        L_disc += BCE(D(x_cmix), 0) + BCE(C(x), y)
with C the ACGAN head of D. Every mix goes through
`amr_fast.kernels.simplex_mix` / `mask_mix` (impl = cfg.impl) with partners and weights drawn by the
`amr_fast.mixing` samplers from the caller's generator.

Baselines: ACAI as in the public code's `models/acai_f3.py` (Berthelot et al. 2019 with BCE): D regresses
2 min(a, 1 - a) from x_mix and 0 from x and x_rec; the autoencoder minimises lamb * rec + BCE(D(x_mix), 0).
beta-VAE (Higgins et al. 2017): lamb * rec(dec(mu + sigma eps), x) + vae_beta * KL(q(h|x) || N(0, I)), no D.
Reconstruction: "l1" / "l2" means over pixels, "bce" summed over pixels and averaged over the batch (the public
code's `bce_sum`), from the decoder's logits. GAN terms: `binary_cross_entropy_with_logits` (safe under autocast).

disc_mix (Manifold Mixup's GAN experiments, Verma et al. ICML 2019, the public gan/mugan.py): D also sees
`lam f(x) + (1 - lam) f(x_fake)` (x_fake = the last fake group: x_mix, else x_cmix, else x_rec) with lam ~
Beta(disc_mix_alpha, disc_mix_alpha) per example folded to min(lam, 1 - lam) <= 1/2, mixed in pixels ("pixel") or,
"hidden", at a layer drawn uniformly per step from {pixels, after D block 1, ..., after block disc_mix_layer}
(mugan's vh1 / vh2), and must call it fake. Drawing the layer reads one integer from the generator on the host
(a device sync per step on a GPU, only with disc_mix=hidden).

Protocol (the loop, amr_fast.train): per micro-batch `begin(x, y, update_ae, generator)` runs the autoencoder
ONCE (with autograd only if update_ae; x_rec and x_mix are decoded in one batched pass), then
`accumulate_gradients(phase, gain)` for "ae" (if update_ae), "disc", "probe"; each computes its loss from the cached
forward results, calls `(loss * gain).backward()` and returns detached scalars. Each phase enables gradients only
for its own modules (PHASE_MODULES), so a phase never leaves gradients on another phase's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from amr_fast import kernels, mixing
from amr_fast.config import TrainConfig
from amr_fast.models import unwrap
from amr_fast.models.base import to_channels_last

PHASES = ("ae", "disc", "probe")
PHASE_MODULES = {"ae": ("ae", "mixer"), "disc": ("disc",), "probe": ("probe",)}  # nets each phase updates
MASK_PRIOR = 1e-4  # public code's weight of the class mixer's prior: mean over batch of (sum_c m_c - C/K)^2


def gan_loss(logits: Tensor, target: float | Tensor) -> Tensor:
    """BCE(sigmoid(logits), target), mean over the batch; target a constant or a per-example tensor."""
    if not isinstance(target, Tensor):
        target = torch.full_like(logits, float(target))
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def recon_loss(kind: str, x_rec: Tensor, logits: Tensor, x: Tensor) -> Tensor:
    """l1 / l2: mean over pixels; bce: Bernoulli NLL of (x + 1) / 2 summed over pixels, mean over the batch."""
    if x_rec.shape != x.shape:
        raise ValueError(f"x_rec {tuple(x_rec.shape)} and x {tuple(x.shape)} differ: check channels / img_size")
    if kind == "l1":
        return (x_rec.float() - x.float()).abs().mean()
    if kind == "l2":
        return (x_rec.float() - x.float()).square().mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), (x.float() + 1) / 2, reduction="sum") / x.shape[0]
    raise ValueError(f"recon must be l1, l2 or bce; got {kind!r}")


@dataclass
class _Forward:
    """What begin() computed for one micro-batch; every phase reads from here, nothing is recomputed."""

    x: Tensor  # [B, C, H, W] in [-1, 1]
    y: Tensor  # [B] int64, -1 = unlabelled
    update_ae: bool
    h: Tensor  # [B, *code]  (VAE: the mean)
    x_rec: Tensor  # [B, C, H, W]
    logits: Tensor  # [B, C, H, W] Bernoulli logits of (x_rec + 1) / 2 (bce reconstruction)
    perm: Tensor | None = None  # [K, B]
    h_mix: Tensor | None = None  # [B, *code]
    x_mix: Tensor | None = None  # [B, C, H, W]
    x_cmix: Tensor | None = None  # [B, C, H, W] decoded class-conditional mix (mixer=class)
    w: Tensor | None = None  # [B, K] mixup weights (ACAI's alpha = w[:, 0])
    m: Tensor | None = None  # [B, K, C] masks of the class mixer (its prior)
    y_mix: Tensor | None = None  # [B, num_classes] mixed labels (class mixer)
    kl: Tensor | None = None  # beta-VAE KL, scalar
    w_dm: Tensor | None = None  # [2B, 2] disc_mix weights: lam per example for mix(real, fake)
    dm_layer: int = 0  # disc_mix: the layer of D where real and fake are mixed this step (0 = pixels)


class AMRLoss:
    def __init__(self, cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device | str):
        self.cfg = cfg
        self.nets = {name: unwrap(net) for name, net in nets.items()}
        self.ae, self.disc, self.probe = self.nets["ae"], self.nets["disc"], self.nets["probe"]
        self.mixer = self.nets.get("mixer")
        if cfg.mixer == "class" and self.mixer is None:
            raise ValueError('mixer=class needs nets["mixer"] (build the networks with models.build_networks(cfg))')
        self.device = torch.device(device)
        if cfg.disc_mix == "hidden" and not 1 <= cfg.disc_mix_layer <= self.disc.num_blocks:
            raise ValueError(
                f"disc_mix_layer must lie in 1..{self.disc.num_blocks} for arch={cfg.arch} (D's blocks); "
                f"got {cfg.disc_mix_layer}"
            )
        # THE place where cfg.mixer picks the (unsupervised) mixing function; mixer=class adds the class mix to it.
        unsup = cfg.class_unsup_mixer if cfg.mixer == "class" else cfg.mixer
        self.mix_codes: Callable[[Tensor, Tensor, Tensor, torch.Generator, dict], Tensor] | None = {
            "none": None,
            "mixup": self._mix_mixup,
            "bernoulli": self._mix_bernoulli,
            "cutmix": self._mix_spatial,
            "spatial_bernoulli": self._mix_spatial,
        }[unsup]
        self.class_mix = cfg.mixer == "class"
        self.passes = {"enc": 0, "dec": 0, "disc": 0}  # network calls (a batched call counts once): bench
        self._fwd: _Forward | None = None

    # -----------------------------------------------------------------------------------------------------------
    # Network calls (counted).

    def _images(self, x: Tensor) -> Tensor:
        """Images into a network: channels-last strides in a channels-last run (decoded images lose them in
        tanh / split / cat when C = 1)."""
        return to_channels_last(x) if self.cfg.channels_last else x

    def _encode(self, x: Tensor) -> Tensor:
        self.passes["enc"] += 1
        return self.ae.encode(self._images(x))

    def _decode(self, h: Tensor) -> tuple[Tensor, Tensor]:
        self.passes["dec"] += 1
        return self.ae.decode_with_logits(h)

    def _disc_run(self, f: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        if start == 0:
            self.passes["disc"] += 1
            f = self._images(f)
        return self.disc.run(f, start, stop)

    # -----------------------------------------------------------------------------------------------------------
    # Mixing functions. Each returns h_mix [B, *code] and records its weights in `rec`.

    def _masks(self, batch: int, channels: int, g: torch.Generator, device: torch.device) -> Tensor:
        """0/1 masks [B, K, C]: K = 2: m ~ Bern(p), p ~ U(0, 1); K > 2: each channel from one of K sources."""
        k, per_example = self.cfg.k, self.cfg.per_example_mask
        if k == 2:
            return mixing.sample_bernoulli_masks(batch, channels, g, per_example=per_example, device=device)
        return mixing.sample_kway_bernoulli_masks(
            batch, k, channels, g, per_example=per_example, device=device, sources=self.cfg.kway_sources
        )

    def _mix_mixup(self, h: Tensor, perm: Tensor, y: Tensor, g: torch.Generator, rec: dict) -> Tensor:
        """h_mix = sum_j w_j h[perm_j]; k = 2: a ~ U(0, 1) per example, w = (a, 1 - a); k > 2: w ~ Dir(alpha)."""
        B, k = h.shape[0], self.cfg.k
        if k == 2:
            w = mixing.sample_uniform_weights(B, g, device=h.device)  # [B, 2]
        else:
            w = mixing.sample_dirichlet_weights(B, k, self.cfg.alpha, g, device=h.device)  # [B, K]
        rec["w"] = w
        return kernels.simplex_mix(h, perm, w, impl=self.cfg.impl)

    def _mix_bernoulli(self, h: Tensor, perm: Tensor, y: Tensor, g: torch.Generator, rec: dict) -> Tensor:
        """h_mix[c] = h[perm_j][c] for the source j drawn for channel c (a one-hot mask over sources)."""
        m = self._masks(h.shape[0], h.shape[1], g, h.device)  # [B, K, C]
        return kernels.mask_mix(h, perm, m, impl=self.cfg.impl)

    def _mix_spatial(self, h: Tensor, perm: Tensor, y: Tensor, g: torch.Generator, rec: dict) -> Tensor:
        """h_mix[:, s] = h[perm_j][:, s] for the source j of position s of the code grid (all channels)."""
        B, k, grid = h.shape[0], self.cfg.k, mixing.code_grid(tuple(h.shape[1:]))
        if self.cfg.mixer == "cutmix":
            masks = mixing.sample_cutmix_masks(B, k, grid, self.cfg.alpha, g, device=h.device)  # [B, K, *grid]
        else:
            masks = mixing.sample_position_bernoulli_masks(B, k, grid, g, self.cfg.per_example_mask, device=h.device)
        return kernels.mask_mix(h, perm, mixing.position_mask(masks, h).to(h.dtype), impl=self.cfg.impl)

    def _mix_class(self, h: Tensor, perm: Tensor, y: Tensor, g: torch.Generator, rec: dict) -> Tensor:
        """Supervised: each class of y_mix from one of the k sources' one-hot labels; m = mixer(y_mix)."""
        y_onehot = F.one_hot(y.clamp_min(0), self.cfg.num_classes).float() * (y >= 0)[:, None]  # [B, classes]
        m_y = self._masks(h.shape[0], self.cfg.num_classes, g, h.device)  # [B, K, classes]
        y_mix = kernels.mask_mix(y_onehot, perm, m_y, impl=self.cfg.impl)  # [B, classes]
        m = self.mixer(y_mix)  # [B, K, C] in (0, 1)
        rec["y_mix"], rec["m"] = y_mix, m
        return kernels.mask_mix(h, perm, m.to(h.dtype), impl=self.cfg.impl)

    # -----------------------------------------------------------------------------------------------------------

    def _set_requires_grad(self, phase: str | None) -> None:
        for name, net in self.nets.items():
            net.requires_grad_(phase is not None and name in PHASE_MODULES[phase])

    def begin(self, x: Tensor, y: Tensor, update_ae: bool, generator: torch.Generator) -> None:
        """Encode, draw partners and weights, mix, decode x_rec and x_mix in one pass; cache for the phases."""
        cfg, g = self.cfg, generator
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be [B] int64 labels (-1 = unlabelled) with B = {x.shape[0]}; got {tuple(y.shape)}"
            )
        B = x.shape[0]
        self._fwd = None
        if update_ae:
            self._set_requires_grad("ae")
        with torch.set_grad_enabled(update_ae and torch.is_grad_enabled()):
            if cfg.method == "betavae":
                mu, logvar = self.ae.encode_stats(x)  # [B, D] each
                self.passes["enc"] += 1
                eps = torch.randn(mu.shape, generator=g, device=g.device).to(mu.device, mu.dtype)
                z = mu + eps * (0.5 * logvar).exp()  # reparameterisation
                kl = 0.5 * (mu.float().square() + logvar.float().exp() - 1 - logvar.float()).sum(dim=1).mean()
                x_rec, logits = self._decode(z)
                self._fwd = _Forward(x=x, y=y, update_ae=update_ae, h=mu, x_rec=x_rec, logits=logits, kl=kl)
                return
            h = self._encode(x)  # [B, *code]
            perm, h_mix, h_cmix, rec = None, None, None, {}
            if self.mix_codes is not None or self.class_mix:
                perm = mixing.sample_perm(cfg.k, B, g, device=x.device)  # [K, B], row 0 = identity
            if self.class_mix:
                h_cmix = self._mix_class(h, perm, y, g, rec)  # [B, *code], eq. 7: consistent with y_mix
            if self.mix_codes is not None:
                h_mix = self.mix_codes(h, perm, y, g, rec)  # [B, *code], eq. 3 (same partners as the class mix)
            codes = {"x_rec": h, "x_cmix": h_cmix, "x_mix": h_mix}
            codes = {name: code for name, code in codes.items() if code is not None}
            x_dec, logits = self._decode(torch.cat(list(codes.values())))  # one decoder pass for all of them
            x_parts = dict(zip(codes, x_dec.split(B)))
            w_dm, dm_layer = None, 0
            if cfg.disc_mix != "none":
                w = mixing.sample_beta_weights(2 * B, cfg.disc_mix_alpha, g, per_example=True, device=x.device)
                lam = torch.minimum(w[:, 0], w[:, 1])  # folded: the real's share is at most 1/2 (mugan)
                w_dm = torch.stack([lam, 1 - lam], dim=1)  # [2B, 2]
                if cfg.disc_mix == "hidden":  # uniform over {pixels, after block 1, ..., after block L}
                    dm_layer = int(torch.randint(0, cfg.disc_mix_layer + 1, (1,), generator=g, device=g.device))
        self._fwd = _Forward(
            x=x, y=y, update_ae=update_ae, h=h, x_rec=x_parts["x_rec"], logits=logits[:B], perm=perm, h_mix=h_mix,
            x_mix=x_parts.get("x_mix"), x_cmix=x_parts.get("x_cmix"), w=rec.get("w"), m=rec.get("m"),
            y_mix=rec.get("y_mix"), w_dm=w_dm, dm_layer=dm_layer,
        )  # fmt: skip

    def accumulate_gradients(self, phase: str, gain: float = 1.0) -> dict[str, Tensor]:
        """Loss of `phase` from the cached forward, `(loss * gain).backward()`, detached scalars to report."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}; got {phase!r}")
        fwd = self._fwd
        if fwd is None:
            raise ValueError("call begin(x, y, update_ae, generator) before accumulate_gradients()")
        if phase == "ae" and not fwd.update_ae:
            raise ValueError('phase "ae" needs begin(..., update_ae=True): the autoencoder ran without autograd')
        self._set_requires_grad(phase)
        loss, stats = {"ae": self._ae_loss, "disc": self._disc_loss, "probe": self._probe_loss}[phase](fwd)
        if loss is not None:
            (loss * gain).backward()
        return {name: value.detach() for name, value in stats.items()}

    # -----------------------------------------------------------------------------------------------------------
    # Phases.

    def _ae_loss(self, fwd: _Forward) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, B = self.cfg, fwd.x.shape[0]
        recon = recon_loss(cfg.recon, fwd.x_rec, fwd.logits, fwd.x)
        loss = cfg.lamb * recon
        stats = {"loss/recon": recon}
        if cfg.method == "betavae":
            loss = loss + cfg.vae_beta * fwd.kl
            stats["loss/kl"] = fwd.kl
        elif cfg.method == "acai":
            gan_mix = gan_loss(self.disc.outputs(self._disc_run(fwd.x_mix)), 0.0)  # AE: "no mixing here"
            loss = loss + cfg.gan_weight * gan_mix
            stats["loss/gan_mix"] = gan_mix
        else:
            groups = {"rec": fwd.x_rec, "cmix": fwd.x_cmix, "mix": fwd.x_mix}  # eq. 3 (rec, mix), eq. 7 (cmix)
            groups = {name: images for name, images in groups.items() if images is not None}
            if self.class_mix:
                d_fake, c_fake = self.disc.outputs(self._disc_run(torch.cat(list(groups.values()))), aux=True)
            else:
                d_fake = self.disc.outputs(self._disc_run(torch.cat(list(groups.values()))))
            for i, name in enumerate(groups):
                term = gan_loss(d_fake[i * B : (i + 1) * B], 1.0)
                loss = loss + cfg.gan_weight * term
                stats[f"loss/gan_{name}"] = term
            if self.class_mix:
                # The decoded class mix must carry its mixed labels (rows whose k sources are all labelled).
                known = (fwd.y >= 0)[fwd.perm].all(dim=0).float()  # [B]
                c_cmix = c_fake[B : 2 * B]  # the "cmix" group follows "rec"
                bce = F.binary_cross_entropy_with_logits(c_cmix.float(), fwd.y_mix.float(), reduction="none")
                cls_mix = (bce.mean(dim=1) * known).sum() / known.sum().clamp_min(1)
                K, C = fwd.m.shape[1], fwd.m.shape[2]
                prior = (fwd.m.float().sum(dim=2) - C / K).square().mean()
                loss = loss + cfg.cls_weight * cls_mix + MASK_PRIOR * prior
                stats["loss/cls_mix"], stats["mixer/mask_mean"] = cls_mix, fwd.m[:, 0].float().mean()
        if cfg.beta > 0 and fwd.x_mix is not None:
            consist = (self._encode(fwd.x_mix).float() - fwd.h_mix.float()).abs().mean()  # |enc(x_mix) - h_mix|_1
            loss = loss + cfg.beta * consist
            stats["loss/consist"] = consist
        stats["loss/ae"] = loss
        return loss, stats

    def _disc_loss(self, fwd: _Forward) -> tuple[Tensor | None, dict[str, Tensor]]:
        cfg, B = self.cfg, fwd.x.shape[0]
        if cfg.method == "betavae":
            return None, {}
        # Real, reconstructions, mixes (detached: D's phase never reaches the autoencoder) in one D pass.
        groups = {"real": fwd.x, "rec": fwd.x_rec.detach()}
        for name, images in (("cmix", fwd.x_cmix), ("mix", fwd.x_mix)):
            if images is not None:
                groups[name] = images.detach()
        if cfg.method == "acai":
            alpha = fwd.w[:, 0]
            targets = {"real": 0.0, "rec": 0.0, "mix": 2 * torch.minimum(alpha, 1 - alpha)}  # folded, in [0, 1]
        else:
            targets = {"real": 1.0, "rec": 0.0, "cmix": 0.0, "mix": 0.0}
        images = torch.cat(list(groups.values()))  # [G * B, C, H, W]
        if cfg.disc_mix == "none":
            f = self._disc_run(images)
        else:
            # lam f(x) + (1 - lam) f(x_fake) after `layer` blocks (0 = pixels), then the rest of D; target fake.
            layer = fwd.dm_layer
            f = self._disc_run(images, 0, layer)
            pair = torch.cat([f[:B], f[-B:]])  # [2B, ...]: real, then the last fake group (x_mix, x_cmix or x_rec)
            swap = torch.arange(2 * B, device=f.device).roll(B)  # partner of real i is fake i
            perm = torch.stack([torch.arange(2 * B, device=f.device), swap])  # [2, 2B]
            f_dm = kernels.simplex_mix(pair, perm, fwd.w_dm.to(pair.device), impl=cfg.impl)[:B]
            f = self.disc.run(torch.cat([f, f_dm]), layer)
            groups["dm"], targets["dm"] = f_dm, 0.0
        if self.class_mix:
            d_out, c_out = self.disc.outputs(f, aux=True)
        else:
            d_out = self.disc.outputs(f)
        stats: dict[str, Tensor] = {}
        loss = torch.zeros((), device=fwd.x.device)
        for i, name in enumerate(groups):
            term = gan_loss(d_out[i * B : (i + 1) * B], targets[name])
            loss = loss + term
            stats[f"loss/disc_{name}"] = term
        if self.class_mix:  # ACGAN: D's aux head classifies real x by its label
            known = (fwd.y >= 0).float()
            y_onehot = F.one_hot(fwd.y.clamp_min(0), cfg.num_classes).float()
            bce = F.binary_cross_entropy_with_logits(c_out[:B].float(), y_onehot, reduction="none").mean(dim=1)
            cls_real = (bce * known).sum() / known.sum().clamp_min(1)
            loss = loss + cls_real
            stats["loss/disc_cls"] = cls_real
        stats["loss/disc"] = loss
        return loss, stats

    def _probe_loss(self, fwd: _Forward) -> tuple[Tensor, dict[str, Tensor]]:
        """Linear probe on the detached code: cross-entropy with y over labelled rows (zero if none)."""
        logits = self.probe(fwd.h.detach().flatten(1).float())  # [B, num_classes]
        known = fwd.y >= 0
        n = known.sum().clamp_min(1)
        ce = F.cross_entropy(logits, fwd.y.clamp_min(0), reduction="none")
        loss = (ce * known).sum() / n
        acc = ((logits.argmax(dim=1) == fwd.y) & known).sum() / n
        return loss, {"probe/loss": loss, "probe/acc": acc}


__all__ = ["AMRLoss", "PHASES", "PHASE_MODULES", "gan_loss", "recon_loss"]
