"""AMRLoss: phases touch only their own modules, every preset runs, the losses are the paper's equations."""

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from amr_fast import kernels, mixing
from amr_fast.losses import PHASE_MODULES, AMRLoss
from amr_fast.models import build_networks
from amr_fast.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

B = 6


def tiny(name: str, **overrides):
    cfg = PRESETS[name]
    small = dict(width=8 if cfg.arch == "mlp" else 4, disc_width=0, mixer_hidden=8, batch=B)
    return replace(cfg, **{**small, **overrides}).validate()


def batch(cfg, labelled=True):
    shape = (B, cfg.channels) if cfg.arch == "mlp" else (B, cfg.channels, cfg.img_size, cfg.img_size)
    x = torch.rand(shape) * 2 - 1
    y = torch.randint(0, cfg.num_classes, (B,)) if labelled else torch.full((B,), -1)
    return x, y


def setup(cfg, eval_disc=False):
    torch.manual_seed(0)
    nets = build_networks(cfg)
    if eval_disc:  # spectral norm's power iteration stays put, so D is one fixed function within a test
        nets["disc"].eval()
    return nets, AMRLoss(cfg, nets, "cpu")


def params(nets):
    return {f"{k}.{n}": p.detach().clone() for k, net in nets.items() for n, p in net.named_parameters()}


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("mnist-mixup", {}),
        ("mnist-bernoulli-k3", {"beta": 0.5}),
        ("fashion-mnist-class", {}),
        ("mnist-acai", {}),
        ("dsprites-betavae", {}),
        ("spiral-mixup-consistency", {}),
        ("mnist-mixup", {"disc_mix": "hidden", "disc_mix_layer": 2}),
    ],
)
def test_each_phase_changes_only_its_own_modules(name, overrides):
    cfg = tiny(name, **overrides)
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    for phase, owners in PHASE_MODULES.items():
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        loss.begin(x, y, update_ae=True, generator=torch.Generator().manual_seed(1))
        before = params(nets)
        stats = loss.accumulate_gradients(phase)
        assert all(torch.isfinite(v) and not v.requires_grad for v in stats.values())
        updated = [p for k, net in nets.items() if k in owners for p in net.parameters()]
        if phase == "disc" and cfg.method == "betavae":  # no discriminator in the beta-VAE baseline
            assert stats == {} and all(p.grad is None for net in nets.values() for p in net.parameters())
            continue
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in updated), phase
        if phase == "ae" and cfg.mixer == "class":  # the class mixer learns with the autoencoder
            assert all(p.grad is not None for p in nets["mixer"].parameters())
        for key, net in nets.items():
            if key not in owners:
                assert all(p.grad is None for p in net.parameters()), (phase, key)
        opt = torch.optim.SGD(updated, lr=0.1)
        opt.step()
        after = params(nets)
        for key in before:
            changed = not torch.equal(before[key], after[key])
            if key.split(".")[0] not in owners:
                assert not changed, (phase, key)


def test_every_preset_builds_and_runs_begin_and_all_phases():
    for name in PRESETS:
        cfg = tiny(name)
        nets, loss = setup(cfg)
        x, y = batch(cfg)
        g = torch.Generator().manual_seed(0)
        loss.begin(x, y, update_ae=True, generator=g)
        stats = {}
        for phase in ("ae", "disc", "probe"):
            stats.update(loss.accumulate_gradients(phase))
        assert all(torch.isfinite(v) for v in stats.values()), name
        assert {"loss/ae", "loss/recon", "probe/loss", "probe/acc"} <= set(stats), name
        if cfg.method != "betavae":
            assert "loss/disc" in stats, name


def _reference_mix(cfg, h, g):
    """The draws of AMRLoss.begin, replayed with the spec's ops (amr_fast.mixing)."""
    perm = mixing.sample_perm(cfg.k, B, g)
    if cfg.mixer == "mixup":
        w = mixing.sample_uniform_weights(B, g) if cfg.k == 2 else mixing.sample_dirichlet_weights(B, cfg.k, 1.0, g)
        return perm, w, mixing.simplex_mix(h, perm, w)
    if cfg.k == 2:
        m = mixing.sample_bernoulli_masks(B, h.shape[1], g)
    else:
        m = mixing.sample_kway_bernoulli_masks(B, cfg.k, h.shape[1], g)
    return perm, m, mixing.mask_mix(h, perm, m)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@pytest.mark.parametrize("name", ["mnist-mixup", "mnist-mixup-k3", "mnist-bernoulli", "mnist-bernoulli-k3"])
def test_losses_are_the_papers_equations(name):
    cfg = tiny(name, beta=0.5)
    nets, loss = setup(cfg, eval_disc=True)
    ae, D = nets["ae"], nets["disc"]
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(3))
    got_ae = loss.accumulate_gradients("ae")
    got_d = loss.accumulate_gradients("disc")
    with torch.no_grad():
        h = ae.encode(x)
        _, _, h_mix = _reference_mix(cfg, h, torch.Generator().manual_seed(3))
        x_rec, x_mix = ae.decode(h), ae.decode(h_mix)
        recon = (x_rec - x).abs().mean()
        consist = (ae.encode(x_mix) - h_mix).abs().mean()
        want_ae = cfg.lamb * recon + bce(D(x_rec), 1) + bce(D(x_mix), 1) + cfg.beta * consist  # autoencoder
        want_d = bce(D(x), 1) + bce(D(x_rec), 0) + bce(D(x_mix), 0)  # discriminator
    torch.testing.assert_close(got_ae["loss/recon"], recon, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_ae["loss/consist"], consist, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_ae["loss/ae"], want_ae, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_d["loss/disc"], want_d, atol=1e-5, rtol=1e-4)


def test_beta_vae_is_reconstruction_of_a_sample_plus_beta_kl():
    cfg = tiny("dsprites-betavae", recon="l2")
    nets, loss = setup(cfg)
    ae = nets["ae"]
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(2))
    got = loss.accumulate_gradients("ae")
    with torch.no_grad():
        mu, logvar = ae.encode_stats(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(2))
        x_rec = ae.decode(mu + eps * (0.5 * logvar).exp())
        kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(dim=1).mean()  # KL(N(mu, sigma^2) || N(0, 1))
        want = cfg.lamb * (x_rec - x).square().mean() + cfg.vae_beta * kl
    torch.testing.assert_close(got["loss/kl"], kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["loss/ae"], want, atol=1e-5, rtol=1e-4)


def test_acai_regresses_the_folded_coefficient():
    cfg = tiny("mnist-acai")
    nets, loss = setup(cfg, eval_disc=True)
    ae, D = nets["ae"], nets["disc"]
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(5))
    got_ae, got_d = loss.accumulate_gradients("ae"), loss.accumulate_gradients("disc")
    with torch.no_grad():
        h = ae.encode(x)
        _, w, h_mix = _reference_mix(cfg, h, torch.Generator().manual_seed(5))
        x_rec, x_mix = ae.decode(h), ae.decode(h_mix)
        alpha = w[:, 0]
        target = 2 * torch.minimum(alpha, 1 - alpha)
        want_d = bce(D(x), 0) + bce(D(x_rec), 0) + F.binary_cross_entropy_with_logits(D(x_mix), target)
        want_ae = cfg.lamb * (x_rec - x).abs().mean() + bce(D(x_mix), 0)
    torch.testing.assert_close(got_d["loss/disc"], want_d, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_ae["loss/ae"], want_ae, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["pixel", "hidden"])
def test_disc_mix_shows_d_mixed_real_and_fake_as_fake(mode, monkeypatch):
    """Real i is mixed with fake i (per example) and D's loss has no other term. The public hidden-state experiment
    differs on purpose (README's differences table): vikasverma1077/manifold_mixup gan/exps/hidden.dnorm0.5.pp.sh
    runs `--network=networks/model_resnet_preproc.py --dnorm=0.5 --mixup=vh1`; that D's `forward` is
    `return preproc, self.partial_forward(preproc)` (one tensor, not a tuple of layers), so gan/mugan.py's
    `hs_mix = alpha*hs_reals[idx] + (1.-alpha)*hs_fakes[idx]` (commit cf8575a; `get_orig_mixup_mixes(hs_reals[idx],
    hs_fakes[idx])` in 6c39b93) mixes example 0's real and fake states only, and `(g_norm_x*self.dnorm).backward()`
    adds a second D step on 0.5 x the squared gradient norm of D(real)."""
    cfg = tiny("mnist-mixup", disc_mix=mode, disc_mix_layer=2, impl="ref")
    nets, loss = setup(cfg, eval_disc=True)
    ae, D = nets["ae"], nets["disc"]
    calls = []
    real_simplex = kernels.simplex_mix

    def spy(h, perm, w, impl="auto"):
        calls.append((tuple(h.shape), impl))
        return real_simplex(h, perm, w, impl=impl)

    monkeypatch.setattr(kernels, "simplex_mix", spy)
    x, y = batch(cfg)
    g = torch.Generator().manual_seed(7)
    loss.begin(x, y, False, g)
    got = loss.accumulate_gradients("disc")
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        h = ae.encode(x)
        _, _, h_mix = _reference_mix(cfg, h, g)
        x_mix = ae.decode(h_mix)
        w = mixing.sample_beta_weights(2 * B, 0.2, g, per_example=True)  # mugan: Beta(0.2, 0.2), folded
        lam = torch.minimum(w[:, 0], w[:, 1])[:B]
        layer = 0 if mode == "pixel" else int(torch.randint(0, 3, (1,), generator=g))  # {pixels, block 1, 2}
        assert loss._fwd.dm_layer == layer
        f_real, f_fake = D.run(x, 0, layer), D.run(x_mix, 0, layer)
        lam_ = lam.reshape(B, *[1] * (f_real.dim() - 1))
        f_dm = lam_ * f_real + (1 - lam_) * f_fake
        want = bce(D.outputs(D.run(f_dm, layer)), 0)
    torch.testing.assert_close(got["loss/disc_dm"], want, atol=1e-5, rtol=1e-4)
    terms = got["loss/disc_real"] + got["loss/disc_rec"] + got["loss/disc_mix"] + got["loss/disc_dm"]
    torch.testing.assert_close(got["loss/disc"], terms)  # no gradient penalty or other term
    assert len(calls) == 2 and all(impl == "ref" for _, impl in calls)  # the code mix and the real/fake mix
    assert calls[1][0][0] == 2 * B


def test_disc_mix_draws_folded_beta_weights_and_a_layer_per_step_as_mugan():
    """The public gan/mugan.py (sample_lambda; vh2): lam ~ Beta(0.2, 0.2) per example, min(lam, 1 - lam) on the
    real; the layer uniform over {pixels, hidden 1, hidden 2} per step. Compared with numpy's Beta by many draws."""
    import numpy as np

    cfg = tiny("mnist-mixup", disc_mix="hidden", disc_mix_layer=2, impl="ref")
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    g = torch.Generator().manual_seed(0)
    lams, layers = [], []
    with torch.no_grad():
        for _ in range(300):
            loss.begin(x, y, False, g)
            lams.append(loss._fwd.w_dm[:, 0])
            layers.append(loss._fwd.dm_layer)
    ours = torch.cat(lams).double().numpy()
    public = np.random.default_rng(0).beta(0.2, 0.2, size=ours.size)
    public = np.minimum(public, 1 - public)
    assert ours.max() <= 0.5
    grid = np.linspace(0, 0.5, 11)  # Kolmogorov-Smirnov distance of the two samples
    ks = np.abs((ours[:, None] <= grid).mean(0) - (public[:, None] <= grid).mean(0)).max()
    assert ks < 0.03, ks
    counts = np.bincount(layers, minlength=3)
    assert set(layers) == {0, 1, 2} and counts.min() > 300 / 3 - 4 * (300 * 2 / 9) ** 0.5, counts


def test_disc_mix_draws_lam_per_example_a_layer_per_step_and_nothing_when_off():
    for mode in ("pixel", "none"):
        cfg = tiny("mnist-mixup", disc_mix=mode)
        nets, loss = setup(cfg)
        x, y = batch(cfg)
        loss.begin(x, y, False, torch.Generator().manual_seed(0))
        if mode == "none":
            assert loss._fwd.w_dm is None
        else:  # Beta(0.2, 0.2) per example: B distinct shares (one per batch would repeat a single value)
            assert loss._fwd.w_dm[:B, 0].unique().numel() == B
            assert loss._fwd.w_dm[:, 0].max() <= 0.5  # folded: the real's share is at most 1/2
    cfg = tiny("mnist-mixup", disc_mix="hidden", disc_mix_layer=1)
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    layers = set()
    with torch.no_grad():
        for step in range(40):  # the layer uniform over {pixels, after block 1} per step: both seen, nothing else
            loss.begin(x, y, False, torch.Generator().manual_seed(step))
            layers.add(loss._fwd.dm_layer)
    assert layers == {0, 1}


def test_disc_mix_layer_must_exist():
    cfg = tiny("spiral-mixup", disc_mix="hidden", disc_mix_layer=4)
    with pytest.raises(ValueError, match=r"disc_mix_layer must lie in 1..3 for arch=mlp"):
        setup(cfg)
    setup(replace(cfg, disc_mix_layer=3))  # mixing D's last features, right before its heads


@pytest.mark.parametrize("unsup", ["bernoulli", "mixup", "none"])
def test_class_mixer_terms_are_added_to_the_unsupervised_eq3(unsup):
    """Paper section 2.2: the supervised terms (eq. 7) come in addition to the unsupervised losses of eq. 3."""
    cfg = tiny("fashion-mnist-class", class_unsup_mixer=unsup, impl="ref")
    nets, loss = setup(cfg, eval_disc=True)
    ae, D, mixer = nets["ae"], nets["disc"], nets["mixer"]
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(4))
    got_ae, got_d = loss.accumulate_gradients("ae"), loss.accumulate_gradients("disc")
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        h = ae.encode(x)
        perm = mixing.sample_perm(2, B, g)
        onehot = F.one_hot(y, cfg.num_classes).float()
        y_mix = mixing.mask_mix(onehot, perm, mixing.sample_bernoulli_masks(B, cfg.num_classes, g))
        m = mixer(y_mix)
        h_cmix = mixing.mask_mix(h, perm, m)  # eq. 7's class-conditional mix
        x_rec, x_cmix = ae.decode(h), ae.decode(h_cmix)
        d_cmix, c_cmix = D.forward_aux(x_cmix)
        _, c_real = D.forward_aux(x)
        cls_mix = F.binary_cross_entropy_with_logits(c_cmix, y_mix)
        prior = (m.sum(dim=2) - m.shape[2] / 2).square().mean()
        want_ae = cfg.lamb * (x_rec - x).abs().mean() + bce(D(x_rec), 1) + bce(d_cmix, 1) + cls_mix + 1e-4 * prior
        want_d = bce(D(x), 1) + bce(D(x_rec), 0) + bce(d_cmix, 0) + F.binary_cross_entropy_with_logits(c_real, onehot)
        if unsup != "none":  # eq. 3's unsupervised mix, with the same partners
            if unsup == "bernoulli":
                h_mix = mixing.mask_mix(h, perm, mixing.sample_bernoulli_masks(B, h.shape[1], g))
            else:
                h_mix = mixing.simplex_mix(h, perm, mixing.sample_uniform_weights(B, g))
            x_mix = ae.decode(h_mix)
            want_ae, want_d = want_ae + bce(D(x_mix), 1), want_d + bce(D(x_mix), 0)
    assert ("loss/gan_mix" in got_ae) == (unsup != "none") and "loss/gan_cmix" in got_ae
    torch.testing.assert_close(got_ae["loss/cls_mix"], cls_mix, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_ae["loss/ae"], want_ae, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_d["loss/disc"], want_d, atol=1e-5, rtol=1e-4)


def test_class_mixer_mixes_labels_and_trains_the_aux_head():
    cfg = tiny("fashion-mnist-class", k=3)
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(0))
    fwd = loss._fwd
    assert fwd.m.shape == (B, 3, 2) and torch.allclose(fwd.m.sum(dim=1), torch.ones(B, 2))
    onehot = F.one_hot(y, cfg.num_classes).float()
    # each class of y_mix comes from one of the k sources' one-hot labels
    sources = onehot[fwd.perm]  # [K, B, classes]
    assert ((fwd.y_mix[None] == sources).any(dim=0)).all()
    stats = loss.accumulate_gradients("ae")
    assert stats["loss/cls_mix"] > 0
    assert loss.accumulate_gradients("disc")["loss/disc_cls"] > 0
    # unlabelled batches: the classification terms vanish
    loss.begin(x, torch.full((B,), -1), True, torch.Generator().manual_seed(0))
    assert loss.accumulate_gradients("ae")["loss/cls_mix"] == 0
    assert loss.accumulate_gradients("disc")["loss/disc_cls"] == 0


def test_probe_trains_on_the_detached_code_and_skips_unlabelled():
    cfg = tiny("mnist-mixup")
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    loss.begin(x, y, True, torch.Generator().manual_seed(0))
    stats = loss.accumulate_gradients("probe")
    logits = nets["probe"](nets["ae"].encode(x).flatten(1))
    torch.testing.assert_close(stats["probe/loss"], F.cross_entropy(logits, y), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats["probe/acc"], (logits.argmax(1) == y).float().mean())
    assert all(p.grad is None for p in nets["ae"].parameters())
    nets["probe"].zero_grad(set_to_none=True)
    loss.begin(x, torch.full((B,), -1), False, torch.Generator().manual_seed(0))
    stats = loss.accumulate_gradients("probe")
    assert stats["probe/loss"] == 0 and stats["probe/acc"] == 0
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in nets["probe"].parameters())


def test_forward_is_shared_between_phases_and_ae_needs_update_ae():
    cfg = tiny("mnist-mixup", beta=0.5)
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    loss.begin(x, y, False, torch.Generator().manual_seed(0))
    assert not loss._fwd.x_rec.requires_grad and not loss._fwd.h.requires_grad  # no autograd for a D-only step
    with pytest.raises(ValueError, match="update_ae=True"):
        loss.accumulate_gradients("ae")
    with pytest.raises(ValueError, match="phase must be one of ae, disc, probe"):
        loss.accumulate_gradients("gen")
    loss.accumulate_gradients("disc")
    loss.accumulate_gradients("probe")
    assert loss.passes == {"enc": 1, "dec": 1, "disc": 1}  # x_rec and x_mix decoded together, D on all at once
    loss.begin(x, y, True, torch.Generator().manual_seed(0))
    for phase in ("ae", "disc", "probe"):
        loss.accumulate_gradients(phase)
    assert loss.passes == {"enc": 3, "dec": 2, "disc": 3}  # + the consistency term's encoder pass


def test_begin_checks_y_and_a_failed_begin_leaves_no_stale_forward():
    cfg = tiny("mnist-mixup")
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="call begin"):  # nothing cached yet
        loss.accumulate_gradients("disc")
    for bad in (y[:-1], y[:, None]):  # wrong length; [B, 1] instead of [B]
        with pytest.raises(ValueError, match=r"y must be \[B\] int64 labels"):
            loss.begin(x, bad, True, g)
    loss.begin(x, y, True, g)
    with pytest.raises(RuntimeError):  # the encoder fails on images with the wrong channel count
        loss.begin(torch.cat([x, x], dim=1), y, True, g)
    with pytest.raises(ValueError, match="call begin"):  # the previous batch's forward is gone
        loss.accumulate_gradients("disc")


def test_betavae_counts_one_encoder_and_one_decoder_pass():
    cfg = tiny("dsprites-betavae")
    nets, loss = setup(cfg)
    loss.begin(*batch(cfg), True, torch.Generator().manual_seed(0))
    loss.begin(*batch(cfg), True, torch.Generator().manual_seed(1))
    assert loss.passes == {"enc": 2, "dec": 2, "disc": 0}


def test_betavae_noise_comes_from_the_generator_given():
    cfg = tiny("dsprites-betavae")
    nets, loss = setup(cfg)
    x, y = batch(cfg)
    rec = []
    for global_seed in (1, 2):  # the global RNG moves between the calls; the step's generator does not
        torch.manual_seed(global_seed)
        loss.begin(x, y, False, torch.Generator().manual_seed(0))
        rec.append(loss._fwd.x_rec)
    assert torch.equal(*rec)


def test_the_class_mixer_needs_its_network():
    cfg = tiny("mnist-mixup", mixer="class")
    nets = build_networks(cfg)
    assert "mixer" in nets
    AMRLoss(cfg, nets, "cpu")
    with pytest.raises(ValueError, match=r'mixer=class needs nets\["mixer"\]'):
        AMRLoss(cfg, {name: net for name, net in nets.items() if name != "mixer"}, "cpu")


def test_mixup_in_d_counts_one_d_pass_per_phase():
    cfg = tiny("mnist-mixup", disc_mix="pixel")  # D runs in two parts: the images, then the mixed features
    nets, loss = setup(cfg)
    loss.begin(*batch(cfg), False, torch.Generator().manual_seed(0))
    loss.accumulate_gradients("disc")
    assert loss.passes == {"enc": 1, "dec": 1, "disc": 1}


def test_gain_scales_the_gradients():
    cfg = tiny("mnist-bernoulli")
    grads = []
    for gain in (1.0, 2.5):
        nets, loss = setup(cfg, eval_disc=True)
        x, y = batch(cfg)
        loss.begin(x, y, True, torch.Generator().manual_seed(0))
        loss.accumulate_gradients("ae", gain=gain)
        grads.append(torch.cat([p.grad.flatten() for p in nets["ae"].parameters()]))
    torch.testing.assert_close(grads[1], 2.5 * grads[0], atol=1e-5, rtol=1e-4)


def test_bce_reconstruction_is_summed_over_pixels():
    cfg = tiny("dsprites-mixup")
    nets, loss = setup(cfg)
    x = (torch.rand(B, 1, 64, 64) < 0.5).float() * 2 - 1  # binary images as dSprites
    loss.begin(x, torch.zeros(B, dtype=torch.long), True, torch.Generator().manual_seed(0))
    got = loss.accumulate_gradients("ae")["loss/recon"]
    x_rec = nets["ae"].decode(nets["ae"].encode(x)).clamp(1e-6 - 1, 1 - 1e-6)
    want = F.binary_cross_entropy((x_rec + 1) / 2, (x + 1) / 2, reduction="sum") / B
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-4)
