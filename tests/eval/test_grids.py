"""Image grids (amr_fast.eval.grids): sizes, tile positions and pixel values with an identity autoencoder, whose
decoded mixes are exactly the pixel mixes, so every tile's value is known."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from amr_fast.eval import grids

PAD = grids.PAD


class IdentityAE(torch.nn.Module):
    """h = x, dec(h) = h: decoded mixes are the pixel mixes."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x + 0 * self.dummy

    def decode(self, h):
        return h


def cfg(**kw):
    base = dict(mixer="mixup", k=2, alpha=1.0, impl="auto", recon="l1", arch="amr32", num_classes=10)
    base.update(kw)
    return SimpleNamespace(**base)


def const_images(values, c=1, h=5, w=7):
    """uint8 images [N, C, H, W], image i filled with values[i]."""
    return torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(len(values), c, h, w).contiguous()


def tile_at(img, r, q, h, w):
    top, left = PAD + r * (h + PAD), PAD + q * (w + PAD)
    return img[top : top + h, left : left + w]


def test_tile_layout_and_background():
    x = const_images([10, 20, 30, 40, 50, 60], c=3)
    img = grids.tile(x.reshape(2, 3, 3, 5, 7))
    assert img.shape == (PAD + 2 * (5 + PAD), PAD + 3 * (7 + PAD), 3) and img.dtype == np.uint8
    for r in range(2):
        for q in range(3):
            assert (tile_at(img, r, q, 5, 7) == 10 * (1 + 3 * r + q)).all()
    assert (img[:PAD] == grids.BACKGROUND).all() and (img[:, :PAD] == grids.BACKGROUND).all()


def test_interpolation_strip_pixels_match_the_blend():
    x_a, x_b = const_images([0, 255]), const_images([255, 0])
    img = grids.interpolation_strips(IdentityAE(), x_a, x_b, cfg(), steps=10)
    assert img.shape == (PAD + 4 * (5 + PAD), PAD + 10 * (7 + PAD), 1)
    a = np.linspace(1, 0, 10)
    for pair, (va, vb) in enumerate([(0, 255), (255, 0)]):
        for row in range(2):  # code-space row, then the pixel-blend row
            for s in range(10):
                want = a[s] * va + (1 - a[s]) * vb
                got = tile_at(img, 2 * pair + row, s, 5, 7).astype(float)
                assert np.abs(got - want).max() <= 1.0


def test_bernoulli_strip_switches_channels_from_a_to_b():
    x_a, x_b = const_images([200], c=3), const_images([40], c=3)
    img = grids.bernoulli_strips(IdentityAE(), x_a, x_b, cfg(mixer="bernoulli"), torch.Generator().manual_seed(1))
    assert img.shape[1] == PAD + 12 * (7 + PAD)
    assert (tile_at(img, 0, 0, 5, 7) == 200).all() and (tile_at(img, 0, 1, 5, 7) == 40).all()
    assert (tile_at(img, 0, 2, 5, 7) == 200).all() and (tile_at(img, 0, 11, 5, 7) == 40).all()
    n_a = [int((tile_at(img, 0, 2 + s, 5, 7)[0, 0] == 200).sum()) for s in range(10)]
    assert n_a == sorted(n_a, reverse=True)  # channels only ever switch from a to b along the strip
    for s in range(10):  # every channel is one source or the other
        assert set(np.unique(tile_at(img, 0, 2 + s, 5, 7))) <= {40, 200}


def test_triangle_grid_corners_and_centre():
    x3 = const_images([255, 0, 0], c=3)
    x3[1, 1], x3[2, 2] = 255, 255  # three colours: red, green, blue
    steps = 5
    img = grids.triangle_grid(IdentityAE(), x3, cfg(k=3), steps=steps)
    h, w = 5, 7
    assert img.shape == (PAD + steps * (h + PAD), PAD + steps * (w + PAD), 3)
    for r, q, wt in grids.simplex_points(steps):
        top = PAD + r * (h + PAD)
        left = PAD + ((steps - 1 - r) * (w + PAD)) // 2 + q * (w + PAD)
        want = (to_f(x3)[:, :, 0, 0] * wt[:, None]).sum(0)  # [3] in [-1, 1]
        got = img[top : top + h, left : left + w].reshape(-1, 3).astype(float) / 127.5 - 1
        assert np.abs(got - want.numpy()).max() < 0.01
    assert (img[PAD : PAD + h, PAD : PAD + w] == grids.BACKGROUND).all()  # left of the top tile is empty


def test_triangle_grid_with_pixel_draws_the_pixel_blend_beside_it():
    x3 = const_images([255, 0, 0], c=3)
    x3[1, 1], x3[2, 2] = 255, 255
    plain = grids.triangle_grid(IdentityAE(), x3, cfg(k=3), steps=4)
    both = grids.triangle_grid(IdentityAE(), x3, cfg(k=3), steps=4, pixel=True)
    h, w = plain.shape[:2]
    assert both.shape == (h, 2 * w + grids.GAP, 3)
    assert (both[:, :w] == plain).all() and (both[:, w + grids.GAP :] == plain).all()  # identity: code = pixels
    assert (both[:, w : w + grids.GAP] == grids.BACKGROUND).all()


def test_k3_training_grid_has_the_triangles_and_the_strips():
    x = (torch.arange(8, dtype=torch.uint8) * 30)[:, None, None, None].expand(8, 1, 5, 7).contiguous()
    img = grids.training_grid(IdentityAE(), x, cfg(mixer="mixup", k=3), torch.Generator().manual_seed(0))
    tri = grids.triangle_grid(IdentityAE(), x[:3], cfg(k=3), steps=6, pixel=True)
    strips = grids.interpolation_strips(IdentityAE(), x[:4], x[4:], cfg())
    recon_h = PAD + 2 * (5 + PAD)
    assert img.shape[0] == recon_h + grids.GAP + tri.shape[0] + grids.GAP + strips.shape[0]
    top = recon_h + grids.GAP
    assert (img[top : top + tri.shape[0], : tri.shape[1]] == tri).all()
    top += tri.shape[0] + grids.GAP
    assert (img[top:, : strips.shape[1]] == strips).all()


def to_f(x):
    return x.float() / 127.5 - 1


def test_kway_mixes_lie_in_the_convex_hull():
    xs = torch.stack(
        [const_images([0, 60]), const_images([120, 180]), const_images([240, 250]), const_images([30, 90])]
    )
    img = grids.kway_mixes(IdentityAE(), xs, cfg(k=4), torch.Generator().manual_seed(0), n_mix=5)
    assert img.shape == (PAD + 2 * (5 + PAD), PAD + 9 * (7 + PAD), 1)
    for i in range(2):
        lo, hi = int(xs[:, i].min()), int(xs[:, i].max())
        for q in range(4, 9):
            t = tile_at(img, i, q, 5, 7)
            assert lo - 1 <= t.min() and t.max() <= hi + 1 and (t == t[0, 0]).all()


@pytest.mark.parametrize("mixer,k", [("none", 2), ("mixup", 2), ("bernoulli", 2), ("mixup", 3), ("bernoulli", 5)])
def test_training_grid_shape_and_recon_rows(mixer, k, tmp_path):
    x = (torch.arange(8, dtype=torch.uint8) * 30)[:, None, None, None].expand(8, 1, 5, 7).contiguous()
    img = grids.training_grid(IdentityAE(), x, cfg(mixer=mixer, k=k), torch.Generator().manual_seed(0))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 1
    for q in range(8):  # rows 0 and 1: inputs and reconstructions (identity)
        assert (tile_at(img, 0, q, 5, 7) == 30 * q).all() and (tile_at(img, 1, q, 5, 7) == 30 * q).all()
    grids.save_png(tmp_path / "s.png", img)
    back = np.asarray(Image.open(tmp_path / "s.png"))
    assert back.shape == img.shape[:2] and (back == img[:, :, 0]).all()


def test_class_mixes_use_the_mixer_probabilities():
    class Mixer(torch.nn.Module):  # weight of source a per channel = y[:, 0], the same for every channel
        def forward(self, y):
            p = y[:, :1].expand(-1, 3)
            return torch.stack([p, 1 - p], dim=1)  # [T, 2, C] as amr_fast.models.mixer.ClassMixer

    x_a, x_b = const_images([250], c=3), const_images([50], c=3)
    y_mix = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    img = grids.class_mixes(IdentityAE(), Mixer(), x_a, x_b, y_mix, cfg())
    assert (tile_at(img, 0, 2, 5, 7) == 250).all() and (tile_at(img, 0, 3, 5, 7) == 50).all()


@pytest.mark.parametrize("shape", [(64, 2), (64, 2, 1, 1)])
def test_spiral_grid_is_an_rgb_plot(shape):
    x = torch.rand(shape) * 2 - 1
    img = grids.training_grid(IdentityAE(), x, cfg(arch="mlp"), torch.Generator().manual_seed(0))
    assert img.dtype == np.uint8 and img.shape[2] == 3 and img.shape[0] > 100
    orange = (img[:, :, 0] > 200) & (img[:, :, 1] > 100) & (img[:, :, 1] < 160) & (img[:, :, 2] < 60)
    assert orange.sum() > 10  # the decoded mixes are drawn


def test_save_png_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        grids.save_png("x.png", np.zeros((4, 4, 3)))


def test_training_grid_class_mixer_panel():
    class Mixer(torch.nn.Module):  # all channels from a if a's class is on alone, else from b
        def forward(self, y):
            p = ((y[:, 0] == 1) & (y.sum(1) == 1)).float()[:, None].expand(-1, 1)
            return torch.stack([p, 1 - p], dim=1)

    x = (torch.arange(4, dtype=torch.uint8) * 60)[:, None, None, None].expand(4, 1, 5, 7).contiguous()
    y = torch.tensor([0, 0, 1, 1])
    img = grids.training_grid(IdentityAE(), x, cfg(mixer="class"), torch.Generator(), y=y, mixer=Mixer())
    assert grids.class_label_paths(y[:2], y[2:], 3)[0].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]
    top = PAD + 2 * (5 + PAD) + grids.GAP  # the first class panel starts below the 2 recon rows
    panel = img[top:]
    # pair 0: a = image 0 (class 0), b = image 2 (class 1); mixes: a only -> a, both -> b, b only -> b
    assert [int(tile_at(panel, 0, q, 5, 7)[0, 0, 0]) for q in range(5)] == [0, 120, 0, 120, 120]
