"""The gradients of every AMRLoss phase equal those of the paper's losses written out here in plain torch (fp64).

For each mixer, one `begin` + phase of `AMRLoss` accumulates gradients into the networks; the reference builds the
same objective from the equations (Beckham et al. 2019 eq. 1-7, the public code's terms: ACAI's folded target,
the class mixer's prior, beta-VAE's KL, Manifold Mixup's mix inside D) with its own mixes, BCE and reconstruction,
and takes `torch.autograd.grad` with respect to every network's parameters. A value-only check cannot see a
detached term (e.g. the autoencoder's adversarial term cut from the mix); these do. What a phase must not touch
(D in the AE phase, the autoencoder in D's phase and in the probe's) is checked to get no gradient at all.

The reference uses the partners and weights that AMRLoss actually mixed with (recorded from its calls to
`amr_fast.kernels`, the sampled beta-VAE code from the decoder's input), never a replay of its RNG.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from amr_fast import kernels
from amr_fast.losses import AMRLoss
from amr_fast.models import build_networks
from amr_fast.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

B = 4
F64 = torch.float64
# Every weight of the objective away from 1, so that a term with the wrong weight (or none) shows.
WEIGHTS = dict(lamb=3.0, gan_weight=0.7, cls_weight=1.3, vae_beta=2.5)
MASK_PRIOR = 1e-4  # the public code's weight of the class mixer's mask prior

CASES = {
    "none": ("mnist-aegan", {}),
    "mixup": ("mnist-mixup", {}),
    "mixup-k3": ("mnist-mixup-k3", {}),
    "bernoulli": ("mnist-bernoulli", {}),
    "bernoulli-k3": ("mnist-bernoulli-k3", {}),
    "bernoulli-k3-dirichlet": ("mnist-bernoulli-k3", {"kway_sources": "dirichlet"}),
    "cutmix": ("fashion-mnist-cutmix", {}),
    "cutmix-k3": ("fashion-mnist-cutmix-k3", {}),
    "spatial-bernoulli": ("fashion-mnist-spatial-bernoulli", {}),
    "acai": ("mnist-acai", {"beta": 0.4}),
    "class": ("fashion-mnist-class", {}),
    "class-k3-mixup": ("fashion-mnist-class", {"k": 3, "class_unsup_mixer": "mixup"}),
    "class-only": ("fashion-mnist-class", {"class_unsup_mixer": "none"}),
    # the mask prior alone moves the class mixer (its weight 1e-4 hides it beside the other terms)
    "class-prior": ("fashion-mnist-class", {"k": 3, "gan_weight": 0.0, "cls_weight": 0.0}),
    "betavae": ("dsprites-betavae", {}),
    "consistency": ("mnist-bernoulli", {"beta": 0.6}),
    "consistency-mlp": ("spiral-mixup-consistency", {}),
    "dsprites-bce": ("dsprites-mixup", {}),
    "disc-mix-pixel": ("mnist-mixup", {"disc_mix": "pixel"}),
    "disc-mix-hidden-1": ("mnist-mixup", {"disc_mix": "hidden", "disc_mix_layer": 2}),
    "disc-mix-hidden-2": ("mnist-mixup", {"disc_mix": "hidden", "disc_mix_layer": 2}),
    "channels-last": ("mnist-bernoulli", {"channels_last": True, "beta": 0.5}),
}


def tiny(name: str, **overrides):
    cfg = PRESETS[name]
    small = dict(width=8 if cfg.arch == "mlp" else 4, disc_width=0, mixer_hidden=8, batch=B, impl="auto")
    return replace(cfg, **{**small, **WEIGHTS, **overrides}).validate()


def inputs(cfg, seed: int = 0):
    """x [cfg.batch, ...] in [-1, 1] (fp64), labels y with the last example unlabelled."""
    g = torch.Generator().manual_seed(seed)
    B = cfg.batch
    shape = (B, cfg.channels) if cfg.arch == "mlp" else (B, cfg.channels, cfg.img_size, cfg.img_size)
    x = (torch.rand(shape, generator=g, dtype=F64) * 2 - 1).clamp(-0.95, 0.95)
    y = torch.randint(0, cfg.num_classes, (B,), generator=g)
    y[0], y[-1] = 0, -1  # class 0 is a label; one unlabelled example: the classification terms must skip it
    return x, y


# ---------------------------------------------------------------------------------------------------------------
# The objective in plain torch.


def bce(logits: torch.Tensor, target) -> torch.Tensor:
    """-[t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))], mean over the batch."""
    logits = logits.double()
    return (F.softplus(logits) - target * logits).mean()


def recon(kind: str, x_rec: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if kind == "l1":
        return (x_rec - x).abs().mean()
    if kind == "l2":
        return (x_rec - x).square().mean()
    t = (x + 1) / 2  # bce: Bernoulli NLL of the pixels summed, mean over the batch (the public bce_sum)
    return (F.softplus(logits) - t * logits).sum() / x.shape[0]


def mix(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * h[perm[k]]: a weight per example [B, K], per channel [B, K, C] or [B, K, *M]."""
    out = 0
    for k in range(perm.shape[0]):
        wk = weights[:, k].to(h.dtype)
        wk = wk.reshape(*wk.shape, *[1] * (h.dim() - wk.dim()))
        out = out + wk * h[perm[k]]
    return out


def class_terms(y: torch.Tensor, perm: torch.Tensor, num_classes: int):
    """One-hot labels (zero rows for unlabelled) and which mixed rows have every source labelled."""
    onehot = F.one_hot(y.clamp_min(0), num_classes).double() * (y >= 0)[:, None]
    return onehot, (y[perm] >= 0).all(dim=0).double()


def masked_mean(per_row: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return (per_row * keep).sum() / keep.sum().clamp_min(1)


def reference_ae_loss(cfg, nets, x, y, used) -> torch.Tensor:
    """Eq. 3 (+ eq. 7, ACAI, beta-VAE, consistency) for the autoencoder, with the mixes AMRLoss used."""
    ae, D = nets["ae"], nets["disc"]
    if cfg.method == "betavae":
        mu, logvar = ae.encode_stats(x)
        eps = ((used["z"] - mu) / (0.5 * logvar).exp()).detach()  # the noise AMRLoss drew
        x_rec, logits = ae.decode_with_logits(mu + eps * (0.5 * logvar).exp())
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()
        return cfg.lamb * recon(cfg.recon, x_rec, logits, x) + cfg.vae_beta * kl
    h = ae.encode(x)
    x_rec, logits = ae.decode_with_logits(h)
    loss = cfg.lamb * recon(cfg.recon, x_rec, logits, x)
    h_mix = mix(h, used["perm"], used["w"]) if "w" in used else None
    x_mix = ae.decode(h_mix) if h_mix is not None else None
    if cfg.method == "acai":
        loss = loss + cfg.gan_weight * bce(D(x_mix), 0.0)
    else:
        loss = loss + cfg.gan_weight * bce(D(x_rec), 1.0)
        if x_mix is not None:
            loss = loss + cfg.gan_weight * bce(D(x_mix), 1.0)
    if cfg.mixer == "class":
        perm = used["perm"]
        onehot, known = class_terms(y, perm, cfg.num_classes)
        y_mix = mix(onehot, perm, used["m_y"])
        m = nets["mixer"](y_mix.float())  # [B, K, C]: the learnt masks
        x_cmix = ae.decode(mix(h, perm, m))
        d_cmix, c_cmix = D.forward_aux(x_cmix)
        c_cmix = c_cmix.double()
        cls_mix = masked_mean((F.softplus(c_cmix) - y_mix * c_cmix).mean(dim=1), known)
        prior = (m.double().sum(dim=2) - m.shape[2] / m.shape[1]).square().mean()
        loss = loss + cfg.gan_weight * bce(d_cmix, 1.0) + cfg.cls_weight * cls_mix + MASK_PRIOR * prior
    if cfg.beta > 0 and x_mix is not None:
        loss = loss + cfg.beta * (ae.encode(x_mix) - h_mix).abs().mean()
    return loss


def reference_disc_loss(cfg, nets, x, y, used) -> torch.Tensor:
    """D's side of eq. 3 (+ eq. 7's ACGAN term, ACAI's regression, the real/fake mix inside D)."""
    ae, D = nets["ae"], nets["disc"]
    with torch.no_grad():  # the autoencoder's images are inputs here
        h = ae.encode(x)
        x_rec = ae.decode(h)
        x_mix = ae.decode(mix(h, used["perm"], used["w"])) if "w" in used else None
        if cfg.mixer == "class":
            onehot, _ = class_terms(y, used["perm"], cfg.num_classes)
            m = nets["mixer"](mix(onehot, used["perm"], used["m_y"]).float())
            x_cmix = ae.decode(mix(h, used["perm"], m))
    if cfg.method == "acai":
        a = used["w"][:, 0].double()
        return bce(D(x), 0.0) + bce(D(x_rec), 0.0) + bce(D(x_mix), 2 * torch.minimum(a, 1 - a))
    loss = bce(D(x), 1.0) + bce(D(x_rec), 0.0)
    if x_mix is not None:
        loss = loss + bce(D(x_mix), 0.0)
    if cfg.mixer == "class":
        loss = loss + bce(D(x_cmix), 0.0)
        _, c_real = D.forward_aux(x)
        onehot = F.one_hot(y.clamp_min(0), cfg.num_classes).double()
        loss = loss + masked_mean((F.softplus(c_real) - onehot * c_real).mean(dim=1), (y >= 0).double())
    if cfg.disc_mix != "none":  # lam f(x_i) + (1 - lam) f(fake_i) after `layer` blocks, called fake
        fake = x_mix if x_mix is not None else x_rec
        layer = used["dm_layer"]
        f_real, f_fake = D.run(x, 0, layer), D.run(fake, 0, layer)
        lam = used["dm_w"][:B, 0].double().reshape(B, *[1] * (f_real.dim() - 1))
        loss = loss + bce(D.outputs(D.run(lam * f_real + (1 - lam) * f_fake, layer)), 0.0)
    return loss


# ---------------------------------------------------------------------------------------------------------------
# One AMRLoss step, recording what it mixed with.


class Recorder:
    """Records the mixing calls AMRLoss makes through `amr_fast.kernels` and the beta-VAE decoder's input."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (h, perm, weights)
        self.impls: list[str] = []
        for kind in ("simplex", "mask"):
            op = getattr(kernels, f"{kind}_mix")

            def spy(h, perm, weights, impl="auto", _op=op):
                self.calls.append((h, perm.clone(), weights))
                self.impls.append(impl)
                return _op(h, perm, weights, impl=impl)

            monkeypatch.setattr(kernels, f"{kind}_mix", spy)

    def used(self, cfg, disc, x) -> dict:
        """{"perm", "w" (the unsupervised mix's weights), "m_y" (class mixer's label masks), "dm_w", "dm_layer"}
        of the calls since `calls` was cleared, for a `begin(..., update_ae=True)`: the codes carry autograd there,
        the labels do not, and the class mix's masks come from the mixer network."""
        out: dict = {}
        B = x.shape[0]
        for h, perm, weights in self.calls:
            if h.shape[0] == 2 * B:  # mixup inside D: real rows then fake rows
                out["dm_w"] = weights.detach()
                assert all(set(perm[:, b].tolist()) == {b, B + b} for b in range(B)), "real i mixes with fake i"
                with torch.no_grad():
                    shapes = [disc.run(x[:1], 0, i).shape[1:] for i in range(cfg.disc_mix_layer + 1)]
                out["dm_layer"] = shapes.index(h.shape[1:])  # where D mixed: pixels (0) or after block i
                continue
            out["perm"] = perm
            if not h.requires_grad:  # the class mixer's labels
                out["m_y"] = weights.detach()
            elif not weights.requires_grad:  # the unsupervised mix (the class mix's masks come from the mixer)
                out["w"] = weights.detach()
        return out


def step_seed(case: str, loss: AMRLoss, x, y, rec: Recorder, disc) -> int:
    """The generator seed of the step to test: for "disc-mix-hidden-<l>" the first whose mix inside D falls
    after block l (the layer is drawn per step), else 1."""
    if not case.startswith("disc-mix-hidden"):
        return 1
    for seed in range(1, 100):
        loss.begin(x, y, False, torch.Generator().manual_seed(seed))
        rec.calls.clear()
        loss.accumulate_gradients("disc")
        with torch.no_grad():
            layer = rec.used(loss.cfg, disc, x)["dm_layer"]
        rec.calls.clear()
        disc.zero_grad(set_to_none=True)
        if layer == int(case.rsplit("-", 1)[1]):
            return seed
    raise AssertionError(f"no step mixed inside D at the layer {case} asks for")


def grads(nets) -> dict[str, torch.Tensor | None]:
    return {f"{k}.{n}": p.grad for k, net in nets.items() for n, p in net.named_parameters()}


def reference_grads(nets, owners, loss) -> dict[str, torch.Tensor]:
    names = [(f"{k}.{n}", p) for k in owners if k in nets for n, p in nets[k].named_parameters()]
    for _, p in names:
        p.requires_grad_(True)
    got = torch.autograd.grad(loss, [p for _, p in names], allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(names, got)}


def assert_grads_equal(got, want, owners, phase):
    for name, g in got.items():
        if name.split(".")[0] not in owners:
            assert g is None, f"{phase} phase left a gradient on {name}"
    for net in {name.split(".")[0] for name in want}:
        names = [n for n in want if n.startswith(net + ".")]
        scale = max(want[n].abs().max().item() for n in names)
        assert scale > 0, f"{phase}: no gradient reaches {net}"
        for n in names:
            assert got[n] is not None, f"{phase} phase left no gradient on {n}"
            torch.testing.assert_close(
                got[n].double(),
                want[n].double(),
                atol=1e-6 * scale,
                rtol=1e-5,
                msg=lambda m, n=n: f"{phase} phase, {n}: {m}",
            )


@pytest.mark.parametrize("case", list(CASES))
def test_phase_gradients_are_the_papers(case, monkeypatch):
    name, overrides = CASES[case]
    cfg = tiny(name, **overrides)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    for key, net in nets.items():
        if key in ("ae", "disc"):  # the class mixer and the probe compute in fp32 (AMRLoss casts their inputs)
            net.double()
    loss = AMRLoss(cfg, nets, "cpu")
    ae, D = nets["ae"], nets["disc"]
    rec = Recorder(monkeypatch)
    z = []
    hook = ae.decoder.register_forward_pre_hook(lambda mod, args: z.append(args[0].detach()))
    x, y = inputs(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(step_seed(case, loss, x, y, rec, D)))
    hook.remove()
    used = rec.used(cfg, D, x)
    used["z"] = z[0]
    ae_owners = ("ae", "mixer")

    stats = loss.accumulate_gradients("ae")
    got = grads(nets)
    D.eval()  # the reference sees the spectral-norm vectors the phase's power iteration left (no new iteration)
    want_loss = reference_ae_loss(cfg, nets, x, y, used)
    torch.testing.assert_close(stats["loss/ae"].double(), want_loss.detach(), rtol=1e-5, atol=1e-6)
    want = reference_grads(nets, ae_owners, want_loss)
    assert_grads_equal(got, want, ae_owners, "ae")

    for net in nets.values():
        net.zero_grad(set_to_none=True)
    D.train()
    rec.calls.clear()
    stats = loss.accumulate_gradients("disc")
    got = grads(nets)
    if cfg.method == "betavae":  # no discriminator in the beta-VAE baseline
        assert all(g is None for g in got.values()) and stats == {}
    else:
        D.eval()  # before `used` runs D's first blocks to tell the layer of its mix
        used.update({k: v for k, v in rec.used(cfg, D, x).items() if k.startswith("dm_")})
        want_loss = reference_disc_loss(cfg, nets, x, y, used)
        torch.testing.assert_close(stats["loss/disc"].double(), want_loss.detach(), rtol=1e-5, atol=1e-6)
        want = reference_grads(nets, ("disc",), want_loss)
        assert_grads_equal(got, want, ("disc",), "disc")

    for net in nets.values():
        net.zero_grad(set_to_none=True)
    loss.accumulate_gradients("probe")
    logits = nets["probe"](ae.encode(x).detach().flatten(1).float()).double()
    keep = (y >= 0).double()
    ce = -logits.log_softmax(dim=1).gather(1, y.clamp_min(0)[:, None])[:, 0]
    want = reference_grads(nets, ("probe",), masked_mean(ce, keep))
    assert_grads_equal(grads(nets), want, ("probe",), "probe")  # the code reaches the probe detached


@pytest.mark.parametrize("case", ["mixup", "bernoulli-k3", "cutmix", "class-k3-mixup", "disc-mix-pixel"])
def test_every_mix_runs_the_configured_impl(case, monkeypatch):
    name, overrides = CASES[case]
    cfg = tiny(name, **{**overrides, "impl": "ref"})
    loss = AMRLoss(cfg, build_networks(cfg), "cpu")
    rec = Recorder(monkeypatch)
    x, y = inputs(cfg)
    loss.begin(x.float(), y, True, torch.Generator().manual_seed(1))
    loss.accumulate_gradients("ae")
    loss.accumulate_gradients("disc")
    assert rec.impls and set(rec.impls) == {"ref"}, rec.impls


# What each phase reports by name (stats.jsonl, the status line, TensorBoard): one entry per term of its loss.
AE_TERMS = {"loss/recon", "loss/ae"}
D_TERMS = {"loss/disc_real", "loss/disc_rec", "loss/disc"}
REPORTED = {
    "none": (AE_TERMS | {"loss/gan_rec"}, D_TERMS),
    "mixup": (AE_TERMS | {"loss/gan_rec", "loss/gan_mix"}, D_TERMS | {"loss/disc_mix"}),
    "acai": (AE_TERMS | {"loss/gan_mix", "loss/consist"}, D_TERMS | {"loss/disc_mix"}),
    "class": (
        AE_TERMS | {"loss/gan_rec", "loss/gan_cmix", "loss/gan_mix", "loss/cls_mix", "mixer/mask_mean"},
        D_TERMS | {"loss/disc_cmix", "loss/disc_mix", "loss/disc_cls"},
    ),
    "betavae": (AE_TERMS | {"loss/kl"}, set()),
    "consistency": (AE_TERMS | {"loss/gan_rec", "loss/gan_mix", "loss/consist"}, D_TERMS | {"loss/disc_mix"}),
    "disc-mix-pixel": (AE_TERMS | {"loss/gan_rec", "loss/gan_mix"}, D_TERMS | {"loss/disc_mix", "loss/disc_dm"}),
}


@pytest.mark.parametrize("case", list(REPORTED))
def test_each_phase_reports_its_terms_by_name(case, monkeypatch):
    name, overrides = CASES[case]
    cfg = tiny(name, **overrides)
    loss = AMRLoss(cfg, build_networks(cfg), "cpu")
    rec = Recorder(monkeypatch)
    x, y = inputs(cfg)
    loss.begin(x.float(), y, True, torch.Generator().manual_seed(1))
    want_ae, want_d = REPORTED[case]
    stats = loss.accumulate_gradients("ae")
    assert set(stats) == want_ae
    if "mixer/mask_mean" in stats:  # the class mixer's share of the first source
        m = next(w for _, _, w in rec.calls if w.requires_grad)
        torch.testing.assert_close(stats["mixer/mask_mean"], m[:, 0].mean().detach())
    assert set(loss.accumulate_gradients("disc")) == want_d
    assert set(loss.accumulate_gradients("probe")) == {"probe/loss", "probe/acc"}


@pytest.mark.parametrize("labelled", [0, 1, 3])
def test_probe_averages_over_the_labelled_examples(labelled):
    """The probe's loss and accuracy are means over the labelled rows only (zero when there are none)."""
    cfg = tiny("mnist-mixup")
    nets = build_networks(cfg)
    loss = AMRLoss(cfg, nets, "cpu")
    x, y = inputs(cfg)
    y[labelled:] = -1
    loss.begin(x.float(), y, False, torch.Generator().manual_seed(1))
    stats = loss.accumulate_gradients("probe")
    logits = nets["probe"](nets["ae"].encode(x.float()).flatten(1)).detach()[:labelled]
    ce = -logits.log_softmax(dim=1).gather(1, y[:labelled, None])[:, 0]
    want_loss = ce.mean() if labelled else torch.tensor(0.0)
    want_acc = (logits.argmax(dim=1) == y[:labelled]).float().mean() if labelled else torch.tensor(0.0)
    torch.testing.assert_close(stats["probe/loss"], want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["probe/acc"], want_acc)
