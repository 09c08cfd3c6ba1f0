"""Spatial mixing (the AMR paper's section 5 proposal, CutMix on hidden states): the samplers in amr_fast.mixing
and the `cutmix` / `spatial_bernoulli` mixers of AMRLoss."""

from dataclasses import replace

import pytest
import torch

from amr_fast import mixing
from amr_fast.losses import AMRLoss
from amr_fast.models import build_networks
from amr_fast.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")


def is_box(mask: torch.Tensor) -> bool:
    """A bool [*grid] mask is one axis-aligned box (or empty): it equals the product of its projections."""
    if not mask.any():
        return True
    box = torch.ones_like(mask)
    for d in range(mask.dim()):
        along = mask.movedim(d, 0).reshape(mask.shape[d], -1).any(1)  # [n_d]: cells of axis d the mask touches
        idx = along.nonzero().flatten()
        if not torch.equal(idx, torch.arange(int(idx[0]), int(idx[-1]) + 1)):
            return False
        box &= along.view(*([1] * d), -1, *([1] * (mask.dim() - d - 1)))
    return torch.equal(box, mask)


@pytest.mark.parametrize("grid", [(4, 4), (5, 3), (10,), (2, 3, 4)])
def test_cutmix_k2_takes_one_box_from_the_partner(grid):
    g = torch.Generator().manual_seed(0)
    m = mixing.sample_cutmix_masks(2000, 2, grid, 1.0, g)  # [B, 2, *grid]
    assert m.shape == (2000, 2, *grid) and m.dtype == torch.float32
    assert torch.equal(m.sum(1), torch.ones(2000, *grid))  # one-hot over the sources
    assert all(is_box(b) for b in m[:200, 1].bool())
    n = torch.tensor(grid).prod()
    area = m[:, 1].flatten(1).sum(1) / n
    assert abs(area.mean().item() - 0.5) < 0.03  # lam ~ U(0, 1); stochastic rounding keeps the area unbiased
    assert (area == 0).any() and (area == 1).any() and ((area > 0) & (area < 1)).float().mean() > 0.5


def test_cutmix_beta_alpha_concentrates_the_area():
    g = torch.Generator().manual_seed(0)
    area = mixing.sample_cutmix_masks(2000, 2, (8, 8), 20.0, g)[:, 1].flatten(1).mean(1)
    assert abs(area.mean().item() - 0.5) < 0.05 and area.std() < 0.15


def test_sample_boxes_extremes_and_placement():
    g = torch.Generator().manual_seed(0)
    assert mixing.sample_boxes(torch.ones(5), (4, 4), g).all()
    assert not mixing.sample_boxes(torch.zeros(5), (4, 4), g).any()
    boxes = mixing.sample_boxes(torch.full((4000,), 0.25), (4, 4), g)  # 2 x 2 boxes (exact sides), 9 placements
    assert torch.equal(boxes.flatten(1).sum(1), torch.full((4000,), 4))
    area = mixing.sample_boxes(torch.full((4000,), 0.3), (4, 4), g).flatten(1).float().mean(1)
    assert abs(area.mean().item() - 0.3) < 0.01 and set(area.unique().mul(16).tolist()) == {4.0, 6.0, 9.0}
    corner = boxes.float().mean(0)  # every cell's chance to be covered: corners 1/9, centre 4/9
    assert abs(corner[0, 0].item() - 1 / 9) < 0.03 and abs(corner[1, 1].item() - 4 / 9) < 0.04


@pytest.mark.parametrize("k", [3, 5])
def test_cutmix_kway_nests_boxes_in_order(k):
    g = torch.Generator().manual_seed(1)
    m = mixing.sample_cutmix_masks(500, k, (4, 4), 1.0, g)
    assert torch.equal(m.sum(1), torch.ones(500, 4, 4))
    share = m.mean(dim=(0, 2, 3))  # later sources cover earlier ones: the last box is whole, the others cut
    assert share[-1] == pytest.approx(0.5, abs=0.06) and all(s > 0.02 for s in share)
    assert all(is_box(b) for b in m[:100, k - 1].bool())  # the last box is never covered


@pytest.mark.parametrize("k", [2, 4])
def test_position_bernoulli_is_kway_bernoulli_over_positions(k):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m = mixing.sample_position_bernoulli_masks(7, k, (3, 5), g1, per_example=True)
    ref = mixing.sample_kway_bernoulli_masks(7, k, 15, g2, per_example=True)
    assert m.shape == (7, k, 3, 5) and torch.equal(m.flatten(2), ref)


def test_position_bernoulli_draws_p_per_batch_by_default():
    default = mixing.sample_position_bernoulli_masks(7, 2, (3, 5), torch.Generator().manual_seed(3))
    per_batch = mixing.sample_position_bernoulli_masks(7, 2, (3, 5), torch.Generator().manual_seed(3), False)
    assert torch.equal(default, per_batch)


def test_cutmix_masks_have_k_sources_when_the_last_box_is_empty():
    # One cell, one example: the last source's box is empty (side rounded to 0) in about half the draws, and the
    # masks must still be [B, K, *grid] one-hot over all K sources.
    g = torch.Generator().manual_seed(0)
    masks = [mixing.sample_cutmix_masks(1, 3, (1,), 1.0, g) for _ in range(20)]
    assert all(m.shape == (1, 3, 1) for m in masks)
    assert any(m[0, 2, 0] == 0 for m in masks)  # the case did occur


def test_samplers_are_reproducible():
    for fn in (
        lambda g: mixing.sample_cutmix_masks(9, 3, (4, 4), 1.0, g),
        lambda g: mixing.sample_position_bernoulli_masks(9, 2, (4, 4), g),
    ):
        assert torch.equal(fn(torch.Generator().manual_seed(5)), fn(torch.Generator().manual_seed(5)))


def test_code_grid_and_position_mask():
    assert mixing.code_grid((2, 4, 4)) == (4, 4) and mixing.code_grid((10,)) == (10,)
    assert mixing.code_grid((2, 7)) == (7,)  # a 1-D feature map [C, L]: its L positions
    assert mixing.position_mask(torch.rand(3, 2, 7), torch.zeros(3, 2, 7)).shape == (3, 2, 1, 7)
    m = torch.rand(3, 2, 4, 4)
    assert mixing.position_mask(m, torch.zeros(3, 2, 4, 4)).shape == (3, 2, 1, 4, 4)
    assert mixing.position_mask(torch.rand(3, 2, 10), torch.zeros(3, 10)).shape == (3, 2, 10)


def tiny(name, **kw):
    return replace(PRESETS[name], width=4, disc_width=0, batch=6, **kw).validate()


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("fashion-mnist-cutmix", {}),
        ("fashion-mnist-cutmix-k3", {}),
        ("fashion-mnist-spatial-bernoulli", {}),
        ("dsprites-cutmix", {}),
        ("fashion-mnist-cutmix", {"impl": "ref"}),
    ],
)
def test_spatial_mixers_take_each_position_whole_from_one_source(name, kw):
    """Every position (all channels at once; a code unit for a vector code) of h_mix is that position of one of the
    k partners, and one AE step trains."""
    cfg = tiny(name, **kw)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    loss = AMRLoss(cfg, nets, "cpu")
    shape = (6, cfg.channels, cfg.img_size, cfg.img_size)
    x, y = torch.rand(shape) * 2 - 1, torch.randint(0, cfg.num_classes, (6,))
    loss.begin(x, y, True, torch.Generator().manual_seed(0))
    fwd = loss._fwd
    h, h_mix, perm = fwd.h.detach(), fwd.h_mix.detach(), fwd.perm
    parts = torch.stack([h[perm[j]] for j in range(cfg.k)])  # [K, B, C, *S]
    same = (parts == h_mix).all(dim=2) if h.dim() > 2 else parts == h_mix  # [K, B, *grid]
    assert same.any(dim=0).all()
    if h.dim() > 2 and cfg.mixer == "cutmix" and cfg.k == 2:
        assert all(is_box(b) for b in (~same[0]).cpu())  # where h_mix is not h: one box
    stats = loss.accumulate_gradients("ae")
    assert torch.isfinite(stats["loss/ae"])
