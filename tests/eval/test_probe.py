"""Offline probes: the linear one ~100% on linearly separable synthetic codes, chance on unrelated labels; the MLP
one reads what the linear one cannot."""

import torch

from amr_fast.eval import probe


def separable(n, g):
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [-3.0, -3.0, -3.0]])
    h = centres[y] + 0.5 * torch.randn(n, 3, generator=g)
    h = torch.cat([h, 5 * torch.randn(n, 5, generator=g)], 1) * torch.tensor([1, 100, 0.01, 1, 1, 1, 1, 1.0])
    return h, y


def test_probe_separates_separable_codes():
    g = torch.Generator().manual_seed(0)
    (h_tr, y_tr), (h_te, y_te) = separable(600, g), separable(400, g)
    r = probe.offline_probe(h_tr, y_tr, h_te, y_te, num_classes=4)
    assert r["test_acc"] > 0.99 and r["train_acc"] > 0.99 and r["dims"] == 8 and r["n_test"] == 400


def test_probe_is_at_chance_on_unrelated_labels():
    g = torch.Generator().manual_seed(1)
    h_tr, h_te = torch.randn(500, 8, generator=g), torch.randn(2000, 8, generator=g)
    y_tr, y_te = torch.randint(0, 4, (500,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(probe.offline_probe(h_tr, y_tr, h_te, y_te, num_classes=4)["test_acc"] - 0.25) < 0.06


def test_encode_batches_scales_uint8_and_stops_at_limit():
    batches = [{"x": torch.full((4, 1, 2, 2), 255, dtype=torch.uint8), "y": torch.arange(4)} for _ in range(5)]
    h, y = probe.encode_batches(lambda x: x.mean(dim=(2, 3)), batches, limit=10)
    assert h.shape == (10, 1) and torch.allclose(h, torch.ones(10, 1)) and y.tolist() == [0, 1, 2, 3] * 2 + [0, 1]


def test_code_probes_tell_a_nonlinear_code_from_a_lost_one():
    """Labels held by the code but not linearly (the quadrant parity of two coordinates: XOR): the linear probe is
    at chance, the MLP probe near 1; on unrelated labels both stay at chance."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(3000, 4, generator=g)
    y = ((h[:, 0] > 0) ^ (h[:, 1] > 0)).long()
    r = probe.code_probes(h[:2000], y[:2000], h[2000:], y[2000:], num_classes=2)
    assert r["linear"] < 0.6 and r["mlp"] > 0.95 and (r["n_train"], r["n_test"]) == (2000, 1000)
    noise = torch.randint(0, 2, (3000,), generator=g)
    r = probe.code_probes(h[:2000], noise[:2000], h[2000:], noise[2000:], num_classes=2)
    assert abs(r["linear"] - 0.5) < 0.06 and abs(r["mlp"] - 0.5) < 0.08


def test_fit_mlp_leaves_the_global_rng_alone():
    h, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    state = torch.get_rng_state()
    probe.fit_mlp(h, y, num_classes=2, steps=2)
    assert torch.equal(torch.get_rng_state(), state)
