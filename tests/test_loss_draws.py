"""The partners and weights AMRLoss mixes with, by their distribution over many steps (recorded from its calls to
`amr_fast.kernels`, never by replaying its RNG): the public code's rules as each mixer's config asks for them."""

from __future__ import annotations

import math

import pytest
import torch
from test_loss_gradients import Recorder, inputs, tiny
from test_mixing import assert_bernoulli_p_rule, assert_uniform_partners

from amr_fast.losses import AMRLoss
from amr_fast.models import build_networks

pytestmark = pytest.mark.usefixtures("one_thread")

B, STEPS = 16, 300


def draws(monkeypatch, name: str, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm [STEPS, K, B], weights [STEPS, B, K, ...]) of the unsupervised mix of STEPS steps of a tiny MLP."""
    cfg = tiny(name, arch="mlp", channels=2, img_size=1, code_dim=32, batch=B, **overrides)
    loss = AMRLoss(cfg, build_networks(cfg), "cpu")
    x, y = inputs(cfg)
    rec = Recorder(monkeypatch)
    perms, weights = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        rec.calls.clear()
        loss.begin(x.float(), y, True, g)  # a training step's draws (with autograd: `Recorder.used` needs it)
        used = rec.used(cfg, loss.disc, x)
        perms.append(used["perm"])
        weights.append(used["w"])
    return torch.stack(perms), torch.stack(weights)


def test_mixup_k2_is_uniform_per_example(monkeypatch):
    from scipy import stats

    perm, w = draws(monkeypatch, "mnist-mixup")
    assert_uniform_partners(perm)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(STEPS, B))
    a = w[..., 0].double()
    assert stats.kstest(a.flatten().numpy(), "uniform").statistic < 0.03  # 4800 draws
    assert abs(a.var(dim=1).mean().item() * 12 - 1) < 0.1  # a new a for every example of a batch


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_mixup_k3_is_dirichlet_alpha_per_example(monkeypatch, alpha):
    """w ~ Dirichlet(alpha 1_3) (the public kgan: alpha = 1): each w_j ~ Beta(alpha, 2 alpha), drawn per example."""
    from scipy import stats

    perm, w = draws(monkeypatch, "mnist-mixup-k3", alpha=alpha)
    assert_uniform_partners(perm)
    torch.testing.assert_close(w.sum(dim=2), torch.ones(STEPS, B))
    for j in range(3):
        assert stats.kstest(w[..., j].flatten().double().numpy(), stats.beta(alpha, 2 * alpha).cdf).statistic < 0.03
    var = stats.beta(alpha, 2 * alpha).var()
    assert abs(w[..., 0].double().var(dim=1).mean().item() / var - 1) < 0.1


@pytest.mark.parametrize("per_example", [False, True])
def test_bernoulli_k2_draws_p_per_batch_as_configured(monkeypatch, per_example):
    perm, m = draws(monkeypatch, "mnist-bernoulli", per_example_mask=per_example)
    assert_uniform_partners(perm)
    assert_bernoulli_p_rule(m[:, :, 0], per_example)  # [STEPS, B, C] masks of source 0


def test_bernoulli_k3_takes_each_channel_from_a_uniform_source(monkeypatch):
    """The public gan3f (mixer=fm): a source uniform over the 3 per (example, channel), independent: a source's
    share of a batch has sd sqrt((1/3)(2/3) / (B C)); the Dirichlet variant's varies far more."""
    perm, m = draws(monkeypatch, "mnist-bernoulli-k3")
    assert_uniform_partners(perm)
    assert torch.equal(m.sum(dim=2), torch.ones(STEPS, B, m.shape[3]))
    share = m[:, :, 0].double().mean(dim=(1, 2))  # [STEPS]
    want = math.sqrt((1 / 3) * (2 / 3) / (B * m.shape[3]))
    assert abs(share.mean().item() - 1 / 3) < 6 * want / math.sqrt(STEPS)
    assert abs(share.std().item() / want - 1) < 0.2
    _, m = draws(monkeypatch, "mnist-bernoulli-k3", kway_sources="dirichlet")
    assert m[:, :, 0].double().mean(dim=(1, 2)).std() > 5 * want


def test_cutmix_takes_a_box_of_uniform_area_per_example(monkeypatch):
    """alpha = 1: the partner's box covers lam ~ U(0, 1) of the code (stochastic rounding: unbiased), per example."""
    perm, m = draws(monkeypatch, "fashion-mnist-cutmix")
    assert_uniform_partners(perm)
    area = m[:, :, 1].double().mean(dim=2)  # [STEPS, B]: vector code, a run of the 32 units
    assert abs(area.mean().item() - 0.5) < 6 * math.sqrt(1 / 12 / area.numel())
    assert abs(area.var(dim=1).mean().item() * 12 - 1) < 0.15  # + the rounding's small variance


@pytest.mark.parametrize("per_example", [False, True])
def test_kway_dirichlet_sources_draw_p_per_batch_or_per_example(monkeypatch, per_example):
    """kway_sources=dirichlet: p ~ Dirichlet(1_3) per batch (or per example), each channel's source ~ p. The
    examples' shares of source 0 inside a batch spread by the binomial noise only, E[p0 (1 - p0)] / C = 1 / (6 C)
    (per batch), or also by Var p0 = 1/18 (per example)."""
    _, m = draws(monkeypatch, "mnist-bernoulli-k3", kway_sources="dirichlet", per_example_mask=per_example)
    C = m.shape[3]
    within = m[:, :, 0].double().mean(dim=2).var(dim=1).mean().item()
    want = 1 / 18 + 1 / (6 * C) if per_example else 1 / (6 * C)
    assert abs(within / want - 1) < 0.2, (within, want)


@pytest.mark.parametrize("per_example", [False, True])
def test_spatial_bernoulli_draws_p_per_batch_as_configured(monkeypatch, per_example):
    """mixer=spatial_bernoulli, k = 2: each position from the partner with p ~ U(0, 1) per batch (per_example_mask:
    per example), as Bernoulli mixup draws channels; a vector code's positions are its units."""
    perm, m = draws(monkeypatch, "fashion-mnist-spatial-bernoulli", per_example_mask=per_example)
    assert_uniform_partners(perm)
    assert_bernoulli_p_rule(m[:, :, 0], per_example)
