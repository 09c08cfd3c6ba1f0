"""Grids of spatial mixes (CutMix boxes / per-position masks of the code grid) and `amr-fast mix --mode cutmix`."""

import numpy as np
import pytest
import torch
from test_grids import PAD, IdentityAE, cfg, const_images, tile_at
from test_mix import images, tiny_snapshot  # noqa: F401  (the images fixture)

from amr_fast import cli
from amr_fast.eval import grids, mix


@pytest.mark.parametrize(("mode", "k"), [("cutmix", 2), ("cutmix", 3), ("spatial_bernoulli", 2)])
def test_spatial_mixes_show_the_code_masks_on_the_pixels(mode, k):
    """Identity AE: the code grid is the image, so the pixel-space mask under each mix is the decoded mix itself."""
    xs = torch.stack([const_images([0, 40]), const_images([120, 160]), const_images([250, 200])][:k])
    img = grids.spatial_mixes(IdentityAE(), xs, cfg(mixer=mode, k=k), torch.Generator().manual_seed(0), n_mix=6)
    assert img.shape == (PAD + 4 * (5 + PAD), PAD + (k + 6) * (7 + PAD), 1)
    for i in range(2):
        for q in range(k):
            assert (tile_at(img, 2 * i, q, 5, 7) == int(xs[q, i, 0, 0, 0])).all()  # the sources
            assert (tile_at(img, 2 * i + 1, q, 5, 7) == grids.BACKGROUND).all()  # blank under them
        values = {int(xs[j, i, 0, 0, 0]) for j in range(k)}
        for q in range(k, k + 6):
            top, bottom = tile_at(img, 2 * i, q, 5, 7), tile_at(img, 2 * i + 1, q, 5, 7)
            assert (top == bottom).all() and set(np.unique(top).tolist()) <= values
    if mode == "cutmix" and k == 2:  # sorted by the partner's share along the row
        share = [(tile_at(img, 0, q, 5, 7) == 120).mean() for q in range(2, 8)]
        assert share == sorted(share)


def test_vector_code_masks_are_drawn_as_bands():
    masks = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1, 0]]), 2).float().transpose(1, 2)  # [1, 2, 5]
    pic = grids.mask_pictures(masks, torch.zeros(1, 1, 4, 10))
    assert pic.shape == (1, 1, 4, 10)
    assert torch.equal(pic[0, 0, 0], torch.tensor([1.0, 1, 1, 1, -1, -1, -1, -1, 1, 1]))


@pytest.mark.parametrize(("mixer", "k"), [("cutmix", 2), ("spatial_bernoulli", 3)])
def test_training_grid_has_a_spatial_panel(mixer, k):
    x = (torch.arange(8, dtype=torch.uint8) * 30)[:, None, None, None].expand(8, 1, 5, 7).contiguous()
    img = grids.training_grid(IdentityAE(), x, cfg(mixer=mixer, k=k), torch.Generator().manual_seed(0))
    recon_rows = PAD + 2 * (5 + PAD)
    assert img.shape[0] == recon_rows + grids.GAP + PAD + 2 * 4 * (5 + PAD)  # 4 examples x (mix row + pixel row)


@pytest.mark.parametrize("mode", ["cutmix", "spatial-bernoulli"])
def test_mix_cli_spatial_modes(tmp_path, images, mode):  # noqa: F811
    snap = tiny_snapshot(tmp_path / "snapshot.safetensors", 3)
    out = tmp_path / "mix.png"
    assert cli.main(["mix", str(snap), *map(str, images[:2]), "--out", str(out), "--mode", mode, "--steps", "4"]) == 0
    three = mix.mix_images(snap, images, mode=mode.replace("_", "-"), steps=3)  # one 3-way row
    assert three.shape == (PAD + 2 * (16 + PAD), PAD + 6 * (16 + PAD), 3)
