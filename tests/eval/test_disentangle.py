"""Disentanglement metrics: 1.0 for an oracle encoder returning the true factors, chance (1/5) for noise,
invariant to rescaling code dimensions; both factor samplers."""

import numpy as np
import pytest
import torch

from amr_fast.eval import disentangle as dis

FAST = dict(n_train=200, n_eval=200, n_std=2000)


def oracle_sampler():
    return dis.ProductFactors(dis.DSPRITES_SIZES, lambda f: torch.as_tensor(f, dtype=torch.float32))


def noise_encoder(dims=10):
    g = torch.Generator().manual_seed(3)
    return lambda x: torch.randn(len(x), dims, generator=g)


def test_factorvae_oracle_scores_one_on_all_five_factors():
    s = dis.factorvae_score(lambda x: x, oracle_sampler(), **FAST)
    assert s.score == 1.0 and s.train_accuracy == 1.0
    assert s.details["num_factors"] == 5 and s.details["dim_to_factor"] == [0, 1, 2, 3, 4]


def test_factorvae_noise_scores_chance():
    s = dis.factorvae_score(noise_encoder(), oracle_sampler(), n_train=400, n_eval=800, n_std=2000)
    assert abs(s.score - 0.2) < 0.07


def test_factorvae_missing_factor_caps_the_score():
    # An encoder that forgets posY can be right on at most 4 of 5 factors: the old 4-factor loop hid that.
    s = dis.factorvae_score(lambda x: x[:, :4], oracle_sampler(), **FAST)
    assert 0.7 < s.score <= 0.8 + 0.05


def test_factorvae_is_invariant_to_rescaling_and_prunes_constant_dims():
    scales = torch.tensor([1.0, 1000.0, 0.001, 7.0, 0.3])
    base = dis.factorvae_score(lambda x: x * 1.0, oracle_sampler(), seed=5, **FAST)
    noisy = lambda x: x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(len(x)))  # noqa: E731
    a = dis.factorvae_score(noisy, oracle_sampler(), seed=5, **FAST)
    b = dis.factorvae_score(lambda x: noisy(x) * scales, oracle_sampler(), seed=5, **FAST)
    assert base.score == 1.0 and a.score == b.score and a.details["dim_to_factor"] == b.details["dim_to_factor"]
    dead = dis.factorvae_score(lambda x: torch.cat([x, torch.zeros(len(x), 2)], 1), oracle_sampler(), **FAST)
    assert dead.score == 1.0 and dead.details["active_dims"] == 5 and dead.details["dims"] == 7


def test_factorvae_collapsed_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="collapsed"):
        dis.factorvae_score(lambda x: torch.zeros(len(x), 3), oracle_sampler(), **FAST)


def test_betavae_oracle_and_noise():
    s = dis.betavae_score(lambda x: x, oracle_sampler(), batch_size=8, n_train=150, n_eval=150, steps=100)
    assert s.score > 0.97
    n = dis.betavae_score(noise_encoder(), oracle_sampler(), batch_size=8, n_train=150, n_eval=250, steps=100)
    assert abs(n.score - 0.2) < 0.1


def test_indexed_sampler_conditions_on_the_shared_class():
    sizes = (3, 4, 5)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 3)
    fc = np.concatenate([grid, grid])  # every combination twice
    x = torch.as_tensor(fc, dtype=torch.float32) * 2 + 1  # "images" that reveal their factors
    sampler = dis.IndexedFactors(x, np.concatenate([np.zeros((len(fc), 1)), fc], 1), factors=[1, 2, 3])
    rng = np.random.default_rng(0)
    for k in range(3):
        batch = sampler.sample_fixed(k, 50, rng)
        assert len(batch) == 50 and (batch[:, k] == batch[0, k]).all() and batch[:, (k + 1) % 3].std() > 0
        x1, x2 = sampler.sample_pairs(k, 40, rng)
        assert (x1[:, k] == x2[:, k]).all() and not (x1 == x2).all()
    s = dis.factorvae_score(lambda x: x, sampler, **FAST)
    assert s.score == 1.0 and s.details["num_factors"] == 3


def test_procedural_dsprites_sampler_fixes_the_factor():
    sampler = dis.procedural_dsprites(size=32)
    rng = np.random.default_rng(0)
    x = sampler.sample(4, rng)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.uint8
    same_shape = sampler.sample_fixed(0, 3, rng)
    assert same_shape.shape == (3, 1, 32, 32) and not torch.equal(same_shape[0], same_shape[1])
