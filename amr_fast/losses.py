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

Distributed (`amr_fast.globalbatch`): partners, weights and masks are drawn over the GLOBAL micro-batch (every
rank's rows) from a generator every rank holds identically; the codes (and labels) are all-gathered with a
differentiable all-gather, every rank mixes the gathered codes and decodes its own rows of the mixes. Means over
labelled rows are over the global batch. A run draws and mixes the same on 1, 2 or N processes.

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

from amr_fast import globalbatch, kernels, mixing
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
    y_all: Tensor  # [world * B] every rank's labels (rank order)
    update_ae: bool
    h: Tensor  # [B, *code]  (VAE: the mean)
    x_rec: Tensor  # [B, C, H, W]
    logits: Tensor  # [B, C, H, W] Bernoulli logits of (x_rec + 1) / 2 (bce reconstruction)
    perm: Tensor | None = None  # [K, world * B] partners over the global batch
    h_mix: Tensor | None = None  # [B, *code]
    x_mix: Tensor | None = None  # [B, C, H, W]
    x_cmix: Tensor | None = None  # [B, C, H, W] decoded class-conditional mix (mixer=class)
    w: Tensor | None = None  # [B, K] this rank's mixup weights (ACAI's alpha = w[:, 0])
    m: Tensor | None = None  # [B, K, C] this rank's masks of the class mixer (its prior)
    y_mix: Tensor | None = None  # [B, num_classes] this rank's mixed labels (class mixer)
    kl: Tensor | None = None  # beta-VAE KL, scalar
    w_dm: Tensor | None = None  # [2B, 2] disc_mix weights: lam per example for mix(real, fake)
    dm_layer: int = 0  # disc_mix: the layer of D where real and fake are mixed this step (0 = pixels)


class AMRLoss:
    def __init__(
        self, cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device | str, rank: int = 0, world: int = 1
    ):
        self.cfg, self.rank, self.world = cfg, rank, world
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
        """Encode, draw partners and weights over the global batch, mix, decode this rank's x_rec and x_mix in one
        pass; cache for the phases. `generator` must be the same on every rank (`globalbatch.draws`)."""
        cfg, g, world = self.cfg, generator, self.world
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be [B] int64 labels (-1 = unlabelled) with B = {x.shape[0]}; got {tuple(y.shape)}"
            )
        B = x.shape[0]
        G = B * world  # the global micro-batch: every draw is over its rows
        mine = lambda t: globalbatch.local_rows(t, self.rank, world)  # noqa: E731 - this rank's rows
        self._fwd = None
        if update_ae:
            self._set_requires_grad("ae")
        y_all = globalbatch.gather_rows(y, world)
        with torch.set_grad_enabled(update_ae and torch.is_grad_enabled()):
            if cfg.method == "betavae":
                mu, logvar = self.ae.encode_stats(x)  # [B, D] each
                self.passes["enc"] += 1
                eps = torch.randn((G, *mu.shape[1:]), generator=g, device=g.device)
                z = mu + mine(eps).to(mu.device, mu.dtype) * (0.5 * logvar).exp()  # reparameterisation
                kl = 0.5 * (mu.float().square() + logvar.float().exp() - 1 - logvar.float()).sum(dim=1).mean()
                x_rec, logits = self._decode(z)
                self._fwd = _Forward(x=x, y=y, y_all=y_all, update_ae=update_ae, h=mu, x_rec=x_rec, logits=logits,
                                     kl=kl)  # fmt: skip
                return
            h = self._encode(x)  # [B, *code]
            perm, h_mix, h_cmix, rec = None, None, None, {}
            if self.mix_codes is not None or self.class_mix:
                h_all = globalbatch.gather_rows(h, world)  # [G, *code]; backward: each rank its rows' gradient
                perm = mixing.sample_perm(cfg.k, G, g, device=x.device)  # [K, G], row 0 = identity
            if self.class_mix:
                h_cmix = mine(self._mix_class(h_all, perm, y_all, g, rec))  # eq. 7: consistent with y_mix
            if self.mix_codes is not None:
                h_mix = mine(self.mix_codes(h_all, perm, y_all, g, rec))  # eq. 3 (same partners as the class mix)
            codes = {"x_rec": h, "x_cmix": h_cmix, "x_mix": h_mix}
            codes = {name: code for name, code in codes.items() if code is not None}
            x_dec, logits = self._decode(torch.cat(list(codes.values())))  # one decoder pass for all of them
            x_parts = dict(zip(codes, x_dec.split(B)))
            w_dm, dm_layer = None, 0
            if cfg.disc_mix != "none":
                w = mixing.sample_beta_weights(2 * G, cfg.disc_mix_alpha, g, per_example=True, device=x.device)
                w = mine(w[:G])  # real i's share (the second half of the draw goes unused, as it always did)
                lam = torch.minimum(w[:, 0], w[:, 1])  # folded: the real's share is at most 1/2 (mugan)
                w_dm = torch.stack([lam, 1 - lam], dim=1).repeat(2, 1)  # [2B, 2]: rows :B mix real i, fake i
                if cfg.disc_mix == "hidden":  # uniform over {pixels, after block 1, ..., after block L}
                    dm_layer = int(torch.randint(0, cfg.disc_mix_layer + 1, (1,), generator=g, device=g.device))
        local = {k: mine(v) for k, v in rec.items()}
        self._fwd = _Forward(
            x=x, y=y, y_all=y_all, update_ae=update_ae, h=h, x_rec=x_parts["x_rec"], logits=logits[:B], perm=perm,
            h_mix=h_mix, x_mix=x_parts.get("x_mix"), x_cmix=x_parts.get("x_cmix"), w=local.get("w"),
            m=local.get("m"), y_mix=local.get("y_mix"), w_dm=w_dm, dm_layer=dm_layer,
        )  # fmt: skip

    def _known_mean(self, values: Tensor, known: Tensor, known_all: Tensor) -> Tensor:
        """The mean of `values` over the labelled rows of the GLOBAL batch, as this rank's share (rows `known` of
        its own, `known_all` of every rank): averaged over ranks, the gradients are those of the global mean."""
        return self.world * (values * known.float()).sum() / known_all.float().sum().clamp_min(1)

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
                known_all = (fwd.y_all >= 0)[fwd.perm].all(dim=0)  # [world * B]
                known = globalbatch.local_rows(known_all, self.rank, self.world)
                c_cmix = c_fake[B : 2 * B]  # the "cmix" group follows "rec"
                bce = F.binary_cross_entropy_with_logits(c_cmix.float(), fwd.y_mix.float(), reduction="none")
                cls_mix = self._known_mean(bce.mean(dim=1), known, known_all)
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
            y_onehot = F.one_hot(fwd.y.clamp_min(0), cfg.num_classes).float()
            bce = F.binary_cross_entropy_with_logits(c_out[:B].float(), y_onehot, reduction="none").mean(dim=1)
            cls_real = self._known_mean(bce, fwd.y >= 0, fwd.y_all >= 0)
            loss = loss + cls_real
            stats["loss/disc_cls"] = cls_real
        stats["loss/disc"] = loss
        return loss, stats

    def _probe_loss(self, fwd: _Forward) -> tuple[Tensor, dict[str, Tensor]]:
        """Linear probe on the detached code: cross-entropy with y over labelled rows (zero if none)."""
        logits = self.probe(fwd.h.detach().flatten(1).float())  # [B, num_classes]
        known, known_all = fwd.y >= 0, fwd.y_all >= 0  # the mean over the global batch's labelled rows
        ce = F.cross_entropy(logits, fwd.y.clamp_min(0), reduction="none")
        loss = self._known_mean(ce, known, known_all)
        acc = self._known_mean((logits.argmax(dim=1) == fwd.y).float(), known, known_all)
        return loss, {"probe/loss": loss, "probe/acc": acc}


__all__ = ["AMRLoss", "PHASES", "PHASE_MODULES", "gan_loss", "recon_loss"]
