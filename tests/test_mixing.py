"""Tests of the spec `amr_fast.mixing`: the reference ops (gradcheck in float64, the equations on a hand-made
case) and the samplers of both papers (support, one-hot masks, moments within statistical bounds, seeded
reproducibility)."""

from __future__ import annotations

import math

import pytest
import torch
from public_amr import PUBLIC_AMR

from amr_fast import mixing

N = 20_000  # draws for the moment checks: bounds below are 6 standard errors


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean(x: torch.Tensor, mean: float, var: float) -> None:
    se = math.sqrt(var / x.numel())
    assert abs(x.double().mean().item() - mean) < 6 * se, (x.double().mean().item(), mean, se)


def assert_var(x: torch.Tensor, var: float) -> None:
    # Relative standard error of a sample variance is about sqrt(2 / n) (kurtosis-free bound, generous below).
    assert abs(x.double().var().item() / var - 1) < 6 * math.sqrt(3 / x.numel()), (x.double().var().item(), var)


def test_ops_follow_the_equations():
    h = torch.arange(12.0).view(3, 2, 2)  # [B=3, C=2, S=2]
    perm = torch.tensor([[0, 1, 2], [2, 0, 1]])
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    out = mixing.simplex_mix(h, perm, w)
    torch.testing.assert_close(out[0], 0.25 * h[0] + 0.75 * h[2])
    torch.testing.assert_close(out[2], 0.5 * h[2] + 0.5 * h[1])
    m = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(3, 2, 2)  # channel 0 from self, channel 1 from partner
    out = mixing.mask_mix(h, perm, m)
    torch.testing.assert_close(out[0], torch.stack([h[0, 0], h[2, 1]]))
    torch.testing.assert_close(out[1], torch.stack([h[1, 0], h[0, 1]]))


@pytest.mark.parametrize("kind", ["simplex", "mask"])
def test_reference_gradcheck_float64(kind):
    B, C, K = 5, 3, 3
    h = torch.randn(B, C, 2, dtype=torch.float64, requires_grad=True)
    perm = mixing.sample_perm(K, B, gen())
    shape = (B, K) if kind == "simplex" else (B, K, C)
    weights = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    op = mixing.simplex_mix if kind == "simplex" else mixing.mask_mix
    assert torch.autograd.gradcheck(lambda a, b: op(a, perm, b), (h, weights))


@pytest.mark.parametrize("kind", ["simplex", "mask"])
def test_reference_accumulates_half_inputs_in_fp32_and_returns_their_dtype(kind):
    """bf16 h and weights, K = 8: the sum is accumulated in fp32 and rounded once to bf16, so it equals the
    float64 result rounded to bf16 (a bf16 accumulation rounds at every partner: ~40 % of the outputs differ)."""
    g = gen(9)
    B, C, K = 64, 16, 8
    h = torch.randn(B, C, 4, generator=g).bfloat16()
    perm = mixing.sample_perm(K, B, g)
    weights = torch.rand((B, K) if kind == "simplex" else (B, K, C), generator=g).bfloat16()
    op = mixing.simplex_mix if kind == "simplex" else mixing.mask_mix
    out = op(h, perm, weights)
    assert out.dtype == torch.bfloat16
    exact = op(h.double(), perm, weights.double()).bfloat16()
    assert (out == exact).float().mean() > 0.99


def test_sample_perm_rows():
    perm = mixing.sample_perm(5, 33, gen())
    assert perm.shape == (5, 33) and perm.dtype == torch.int64
    assert torch.equal(perm[0], torch.arange(33))
    for row in perm:
        assert torch.equal(row.sort().values, torch.arange(33))
    assert not torch.equal(perm[1], perm[2])
    assert torch.equal(perm, mixing.sample_perm(5, 33, gen()))
    with pytest.raises(ValueError, match="k must be >= 2"):
        mixing.sample_perm(1, 4, gen())


def test_uniform_weights_on_simplex_with_uniform_moments():
    w = mixing.sample_uniform_weights(N, gen())
    assert w.shape == (N, 2) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(N))
    assert_mean(w[:, 0], 0.5, 1 / 12)
    assert_var(w[:, 0], 1 / 12)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 2.5])
def test_gamma_moments(alpha):
    g = mixing.sample_gamma(alpha, (N,), gen())
    assert (g > 0).all()
    assert_mean(g, alpha, alpha)
    assert_var(g, alpha)


def test_gamma_draws_one_at_a_time_and_a_scalar_shape():
    # The rejection loop must fill the last remaining draw too: single draws have the Gamma law.
    alpha, g = 2.5, gen()
    one = torch.cat([mixing.sample_gamma(alpha, (1,), g) for _ in range(1000)])
    assert (one > 0).all()
    assert_mean(one, alpha, alpha)
    assert 0.5 < one.double().var().item() / alpha < 2
    assert mixing.sample_gamma(alpha, (), g).shape == ()


def test_gamma_rejects_alpha_zero():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mixing.sample_gamma(0.0, (3,), gen())


@pytest.mark.parametrize(("k", "alpha"), [(2, 0.7), (3, 1.0), (8, 0.5)])
def test_dirichlet_on_simplex_with_dirichlet_moments(k, alpha):
    w = mixing.sample_dirichlet_weights(N, k, alpha, gen())
    assert w.shape == (N, k) and (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(N))
    a0 = k * alpha
    var = (alpha / a0) * (1 - alpha / a0) / (a0 + 1)
    for j in range(k):
        assert_mean(w[:, j], 1 / k, var)
    assert_var(w[:, 0], var)


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_beta_weights_per_batch_and_per_example(alpha):
    w = mixing.sample_beta_weights(7, alpha, gen())
    assert (w[:, 0] == w[0, 0]).all(), "one lambda per batch (Manifold Mixup)"
    torch.testing.assert_close(w.sum(1), torch.ones(7))
    w = mixing.sample_beta_weights(N, alpha, gen(), per_example=True)
    var = 1 / (4 * (2 * alpha + 1))
    assert_mean(w[:, 0], 0.5, var)
    assert_var(w[:, 0], var)


@pytest.mark.parametrize("per_example", [False, True])
def test_bernoulli_masks_are_one_hot(per_example):
    m = mixing.sample_bernoulli_masks(N // 10, 16, gen(), per_example=per_example)
    assert m.shape == (N // 10, 2, 16)
    assert ((m == 0) | (m == 1)).all()
    torch.testing.assert_close(m.sum(1), torch.ones(N // 10, 16))


def assert_bernoulli_p_rule(m: torch.Tensor, per_example: bool) -> None:
    """m [batches, B, C]: 0/1 masks of source 0, p ~ U(0, 1) per batch (the public fm2) or per example, m ~ Bern(p)
    per channel. Two spreads tell the rules apart: that of the examples' shares inside a batch (per batch:
    E[p (1 - p)] / C = 1 / (6 C), only the binomial noise; per example: Var p + 1 / (6 C)) and that of a batch's
    share over batches (per batch: sd ~ sqrt(1/12), the share is p; per example: sqrt(1/12) / sqrt(B))."""
    n, B, C = m.shape
    rows = m.double().mean(dim=2)  # [n, B] share of each example's channels from source 0
    within = rows.var(dim=1).mean().item()
    spread = rows.mean(dim=1).std().item()
    if per_example:
        want_within, want_spread = 1 / 12 + 1 / (6 * C), math.sqrt((1 / 12 + 1 / (6 * C)) / B)
    else:
        want_within, want_spread = 1 / (6 * C), math.sqrt(1 / 12 + 1 / (6 * B * C))
    assert abs(within / want_within - 1) < 0.2, (within, want_within)  # ~5 standard errors at n = 400
    assert abs(spread / want_spread - 1) < 0.2, (spread, want_spread)
    if not per_example:  # the batch's share is p itself (+ binomial noise, sd < 0.03): U(0, 1)
        from scipy import stats

        assert stats.kstest(rows.mean(dim=1).numpy(), "uniform").statistic < 0.1


BERNOULLI_SAMPLERS = {  # k = 2 Bernoulli mixup, as each sampler draws it: [B, C] masks of source 0
    "bernoulli": lambda B, C, g, pe: mixing.sample_bernoulli_masks(B, C, g, per_example=pe)[:, 0],
    "kway-k2": lambda B, C, g, pe: mixing.sample_kway_bernoulli_masks(B, 2, C, g, per_example=pe)[:, 0],
    "kway-k2-dirichlet": lambda B, C, g, pe: mixing.sample_kway_bernoulli_masks(
        B, 2, C, g, per_example=pe, sources="dirichlet"
    )[:, 0],
    "positions": lambda B, C, g, pe: mixing.sample_position_bernoulli_masks(B, 2, (C // 4, 4), g, pe)[:, 0].flatten(1),
}


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("sampler", list(BERNOULLI_SAMPLERS))
def test_bernoulli_p_is_per_batch_or_per_example(sampler, per_example):
    g = gen(4)
    m = torch.stack([BERNOULLI_SAMPLERS[sampler](16, 32, g, per_example) for _ in range(400)])  # [n, B, C]
    assert_bernoulli_p_rule(m, per_example)


def test_the_p_rule_check_tells_per_batch_from_per_example():
    """The check above fails each sampler run with the other rule (so it would catch a swapped rule)."""
    g = gen(5)
    for per_example in (False, True):
        m = torch.stack([mixing.sample_bernoulli_masks(16, 32, g, per_example=per_example)[:, 0] for _ in range(400)])
        with pytest.raises(AssertionError):
            assert_bernoulli_p_rule(m, not per_example)


def assert_uniform_partners(perms: torch.Tensor) -> None:
    """perms [n, K, B]: row 0 the example itself; rows 1..K-1 independent uniform permutations (the public code's
    torch.randperm per partner): each example is its own partner with probability 1/B (fixed points are allowed,
    one per row on average, and their count has variance 1), every partner equally likely, rows independent."""
    from scipy import stats

    n, K, B = perms.shape
    assert torch.equal(perms[:, 0], torch.arange(B).expand(n, B))
    for k in range(1, K):
        fixed = (perms[:, k] == torch.arange(B)).double().sum(dim=1)  # [n] fixed points of each permutation
        assert abs(fixed.mean().item() - 1) < 6 / math.sqrt(n), fixed.mean()  # E = 1, Var = 1 for B >= 2
        assert abs(fixed.var().item() - 1) < 6 * math.sqrt(3 / n), fixed.var()
        pairs = (torch.arange(B).repeat(n), perms[:, k].flatten())
        counts = torch.zeros(B, B).index_put_(pairs, torch.ones(n * B), accumulate=True)
        assert stats.chisquare(counts.flatten().numpy()).pvalue > 1e-4  # partner j of example b: uniform
    if K > 2:
        same = (perms[:, 1] == perms[:, 2]).double()  # independent rows share a partner with probability 1/B
        assert_mean(same, 1 / B, (1 / B) * (1 - 1 / B))


def test_partners_are_uniform_random_permutations_as_the_public_randperm():
    g = gen(6)
    assert_uniform_partners(torch.stack([mixing.sample_perm(3, 8, g) for _ in range(3000)]))


@pytest.mark.parametrize("k", [2, 3, 8])
def test_kway_bernoulli_masks_are_one_hot_with_uniform_sources(k):
    m = mixing.sample_kway_bernoulli_masks(N // 10, k, 8, gen(), per_example=True)
    assert m.shape == (N // 10, k, 8)
    assert ((m == 0) | (m == 1)).all()
    torch.testing.assert_close(m.sum(1), torch.ones(N // 10, 8))
    frac = m.mean(dim=(0, 2))  # source frequencies: 1/K each by symmetry
    torch.testing.assert_close(frac, torch.full((k,), 1 / k), atol=0.02, rtol=0)


SAMPLERS = {  # every sampler, with the `device` argument last
    "perm": lambda g, d: mixing.sample_perm(3, 9, g, device=d),
    "uniform": lambda g, d: mixing.sample_uniform_weights(9, g, device=d),
    "dirichlet": lambda g, d: mixing.sample_dirichlet_weights(9, 4, 1.0, g, device=d),
    "beta": lambda g, d: mixing.sample_beta_weights(9, 0.4, g, per_example=True, device=d),
    "bernoulli": lambda g, d: mixing.sample_bernoulli_masks(9, 5, g, device=d),
    "kway": lambda g, d: mixing.sample_kway_bernoulli_masks(9, 3, 5, g, device=d),
    "kway-dirichlet": lambda g, d: mixing.sample_kway_bernoulli_masks(9, 3, 5, g, device=d, sources="dirichlet"),
    "cutmix": lambda g, d: mixing.sample_cutmix_masks(9, 3, (4, 4), 1.0, g, device=d),
    "positions": lambda g, d: mixing.sample_position_bernoulli_masks(9, 2, (4, 4), g, device=d),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samplers_return_their_draws_on_the_device_asked_for(sampler):
    """device=None: the generator's device; else that device (here "meta": CPU draws moved there)."""
    draw = SAMPLERS[sampler]
    assert draw(gen(1), None).device == torch.device("cpu")
    on_meta = draw(gen(1), "meta")
    assert on_meta.device.type == "meta" and on_meta.shape == draw(gen(1), None).shape


def test_samplers_are_reproducible_with_a_seeded_generator():
    draws = [
        lambda g: mixing.sample_uniform_weights(9, g),
        lambda g: mixing.sample_dirichlet_weights(9, 4, 1.0, g),
        lambda g: mixing.sample_beta_weights(9, 0.4, g, per_example=True),
        lambda g: mixing.sample_bernoulli_masks(9, 5, g),
        lambda g: mixing.sample_kway_bernoulli_masks(9, 3, 5, g),
    ]
    for draw in draws:
        assert torch.equal(draw(gen(1)), draw(gen(1)))
        assert not torch.equal(draw(gen(1)), draw(gen(2)))


def _share_sd(m: torch.Tensor) -> float:
    """m [batches, B, K, C] one-hot -> sd over batches of the share of source 0 in a batch."""
    return m[:, :, 0].float().mean(dim=(1, 2)).std().item()


def test_kway_bernoulli_source_share_per_batch_is_the_public_codes():
    """k >= 3 default: a uniform, independent source per (example, channel), as the public gan3fm: the share of a
    source in a batch of B x C channels has sd sqrt((1/K)(1 - 1/K) / (B C)); the Dirichlet variant varies ~10x more."""
    n, B, K, C = 400, 64, 3, 10
    g = gen(3)
    uniform = torch.stack([mixing.sample_kway_bernoulli_masks(B, K, C, g) for _ in range(n)])
    dirichlet = torch.stack([mixing.sample_kway_bernoulli_masks(B, K, C, g, sources="dirichlet") for _ in range(n)])
    want = math.sqrt((1 / K) * (1 - 1 / K) / (B * C))  # 0.0186
    assert abs(_share_sd(uniform) / want - 1) < 0.2, (_share_sd(uniform), want)
    assert _share_sd(dirichlet) > 0.15  # Var p_0 = 2 / 36 under Dirichlet(1, 1, 1): sd 0.24
    assert_mean(uniform[:, :, 0].float(), 1 / K, (1 / K) * (1 - 1 / K))
    # k = 2 is Bernoulli mixup whatever `sources` says: p ~ U(0, 1) per batch (the public fm2)
    two = torch.stack([mixing.sample_kway_bernoulli_masks(B, 2, C, g) for _ in range(n)])
    assert _share_sd(two) > 0.2  # sd of U(0, 1) is 0.29
    with pytest.raises(ValueError, match="sources must be one of uniform, dirichlet"):
        mixing.sample_kway_bernoulli_masks(B, 3, C, g, sources="dirichlett")


@pytest.mark.skipif(not (PUBLIC_AMR / "amr" / "models" / "threegan.py").exists(), reason="public AMR code not here")
@pytest.mark.parametrize("k", [3, 4])
def test_kway_bernoulli_matches_the_public_sampler_by_many_draws(k, tmp_path):
    """Run the authors' own sampler (models/threegan.py for k = 3, models/kgan.py otherwise, mixer=fm) in a
    subprocess (its shims stay out of this process) and compare the statistics of many draws with ours."""
    import json
    import subprocess
    import sys

    n, B, C = 300, 64, 10
    code = f"""
import json, sys
import numpy as np
sys.path[:0] = [{str(PUBLIC_AMR / "amr")!r}, {str(PUBLIC_AMR / "shims")!r}]
from models.threegan import ThreeGAN
from models.kgan import KGAN
s = (ThreeGAN if {k} == 3 else KGAN).__new__(ThreeGAN if {k} == 3 else KGAN)
s.mixer, s.use_cuda, s.k = "fm", False, {k}
np.random.seed(0)
draws = np.stack([s.sampler({B}, {C}, True).numpy() for _ in range({n})])  # [n, B, K, C]
print(json.dumps(draws.argmax(axis=2).tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    public = torch.nn.functional.one_hot(torch.tensor(json.loads(out.stdout.splitlines()[-1])), k)  # [n, B, C, K]
    public = public.transpose(2, 3)  # [n, B, K, C]
    g = gen(11)
    ours = torch.stack([mixing.sample_kway_bernoulli_masks(B, k, C, g) for _ in range(n)])
    assert ours.shape == public.shape
    for m in (ours, public):
        assert ((m.sum(dim=2)) == 1).all()
    # per-batch share of a source: same sd (within sampling error of an sd over n batches, ~4%)
    assert abs(_share_sd(ours) / _share_sd(public) - 1) < 0.25, (_share_sd(ours), _share_sd(public))
    # per-example count of channels from source 0: same Binomial(C, 1/k) histogram
    hist = [
        torch.bincount(m[:, :, 0].sum(dim=2).flatten().long(), minlength=C + 1).double() / (n * B)
        for m in (ours, public)
    ]
    assert (hist[0] - hist[1]).abs().max() < 0.02, (hist[0], hist[1])
    # channels independent within an example: same-source rate of two channels is 1/k in both
    for m in (ours, public):
        same = (m[:, :, :, 0] == m[:, :, :, 1]).all(dim=2).double().mean().item()
        assert abs(same - 1 / k) < 0.02, same


@pytest.fixture(scope="module")
def public_draws(tmp_path_factory):
    """Many draws of the authors' own samplers (models/twogan.py: mixer=fm2, mixup and its partner permutation;
    models/kgan.py: k = 3 mixup), run in a subprocess (its shims stay out of this process)."""
    import json
    import subprocess
    import sys

    if not (PUBLIC_AMR / "amr" / "models" / "twogan.py").exists():
        pytest.skip("public AMR code not here")
    code = f"""
import json, sys
import numpy as np, torch
from torch.distributions import Dirichlet
sys.path[:0] = [{str(PUBLIC_AMR / "amr")!r}, {str(PUBLIC_AMR / "shims")!r}]
from models.twogan import TwoGAN
from models.kgan import KGAN
torch.manual_seed(0); np.random.seed(0)
two = TwoGAN.__new__(TwoGAN)
two.use_cuda = False
out = {{}}
two.mixer = "fm2"
out["fm2"] = [two.sampler({B_PUB}, {C_PUB}, True).tolist() for _ in range({N_PUB})]
two.mixer = "mixup"
out["mixup"] = [two.sampler({B_PUB}, {C_PUB}, True)[:, 0].tolist() for _ in range({N_PUB})]
out["perm"] = [two.mix(torch.zeros({B_PUB}, {C_PUB}))[1].tolist() for _ in range({N_PUB})]
k3 = KGAN.__new__(KGAN)
k3.use_cuda, k3.mixer, k3.k, k3.dirichlet = False, "mixup", 3, Dirichlet(torch.ones(3))  # as KGAN.__init__
out["dirichlet"] = [k3.sampler({B_PUB}, {C_PUB}, True).tolist() for _ in range({N_PUB})]
print(json.dumps(out))
"""
    cwd = tmp_path_factory.mktemp("public")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd)
    return {key: torch.tensor(value) for key, value in json.loads(res.stdout.splitlines()[-1]).items()}


N_PUB, B_PUB, C_PUB = 400, 16, 32


def ks2(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy import stats

    return stats.ks_2samp(a.flatten().numpy(), b.flatten().numpy()).statistic


def test_bernoulli_p_rule_is_the_public_fm2s(public_draws):
    """The public fm2 (p ~ U(0, 1) per batch, m ~ Bern(p)) passes the per-batch check and fails the per-example
    one; our masks' batch shares have the same distribution as its."""
    fm2 = public_draws["fm2"]  # [n, B, C]
    assert_bernoulli_p_rule(fm2, per_example=False)
    with pytest.raises(AssertionError):
        assert_bernoulli_p_rule(fm2, per_example=True)
    g = gen(7)
    ours = torch.stack([mixing.sample_bernoulli_masks(B_PUB, C_PUB, g)[:, 0] for _ in range(N_PUB)])
    assert ks2(ours.mean(dim=(1, 2)), fm2.mean(dim=(1, 2))) < 0.15  # two samples of 400 batch shares


def test_mixup_weights_and_partners_are_the_public_samplers(public_draws):
    """k = 2: a ~ U(0, 1) per example; k = 3: Dirichlet(1, 1, 1) per example; partners: torch.randperm."""
    g = gen(8)
    a = torch.stack([mixing.sample_uniform_weights(B_PUB, g)[:, 0] for _ in range(N_PUB)])  # [n, B]
    assert ks2(a, public_draws["mixup"]) < 0.04  # 6400 draws each
    for m in (a, public_draws["mixup"].double()):  # per example: the spread inside a batch is Var U(0, 1)
        assert abs(m.var(dim=1).mean().item() * 12 - 1) < 0.1
    w = torch.stack([mixing.sample_dirichlet_weights(B_PUB, 3, 1.0, g) for _ in range(N_PUB)])  # [n, B, 3]
    pub = public_draws["dirichlet"]
    assert ks2(w[..., 0], pub[..., 0]) < 0.04 and ks2(w.max(dim=2).values, pub.max(dim=2).values) < 0.04
    n, B = public_draws["perm"].shape
    assert_uniform_partners(torch.stack([torch.arange(B).expand(n, B), public_draws["perm"]], dim=1))
