"""`amr-fast mix` on PNG and JPEG files of other sizes and channel counts, through a tiny saved snapshot."""

import numpy as np
import pytest
import torch
from PIL import Image

from amr_fast import checkpoint, cli
from amr_fast.config import TrainConfig, to_json
from amr_fast.eval import grids, mix
from amr_fast.models import build_networks

PAD = grids.PAD
S = 16  # the model's image size (amr32 at its smallest working size)


def tiny_snapshot(path, channels):
    import json

    cfg = TrainConfig(arch="amr32", img_size=S, channels=channels, width=8, code_channels=2, mixer="mixup").validate()
    torch.manual_seed(0)
    nets = build_networks(cfg)
    checkpoint.save_snapshot(path, nets, json.loads(to_json(cfg)), kimg=1.0)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    png, jpg, png2 = tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 255, (13, 17, 3), dtype=np.uint8)).save(png)
    Image.fromarray(np.full((40, 30), 200, np.uint8)).save(jpg, quality=95)
    Image.fromarray(rng.integers(0, 255, (9, 9, 4), dtype=np.uint8), "RGBA").save(png2)
    return [png, jpg, png2]


def tile_at(img, r, q, s=16):
    top, left = PAD + r * (s + PAD), PAD + q * (s + PAD)
    return img[top : top + s, left : left + s]


@pytest.mark.parametrize("channels", [1, 3])
def test_mix_cli_interpolates_png_and_jpeg(tmp_path, images, channels):
    snap = tiny_snapshot(tmp_path / "snapshot.safetensors", channels)
    out = tmp_path / "out" / "mix.png"
    assert cli.main(["mix", str(snap), str(images[0]), str(images[1]), "--out", str(out), "--steps", "5"]) == 0
    img = np.asarray(Image.open(out))
    img = img[:, :, None] if img.ndim == 2 else img
    assert img.shape == (PAD + 2 * (S + PAD), PAD + 5 * (S + PAD), channels)
    x = mix.load_images(images[:2], S, channels).numpy().transpose(0, 2, 3, 1)  # [2, S, S, C]
    assert np.abs(tile_at(img, 1, 0).astype(int) - x[0]).max() <= 1  # pixel-blend row: a = 1 is image a
    assert np.abs(tile_at(img, 1, 4).astype(int) - x[1]).max() <= 1  # a = 0 is image b
    assert abs(int(x[1].mean()) - 200) <= 2  # the grey JPEG, converted and resized


def test_mix_modes_kway_and_bernoulli(tmp_path, images):
    snap = tiny_snapshot(tmp_path / "snapshot.safetensors", 3)
    tri = mix.mix_images(snap, images, mode="kway", steps=4)
    assert tri.shape == (PAD + 4 * (S + PAD), PAD + 4 * (S + PAD), 3)
    four = mix.mix_images(snap, images + images[:1], mode="kway-bernoulli", steps=3)
    assert four.shape == (PAD + 1 * (S + PAD), PAD + 7 * (S + PAD), 3)
    bern = mix.mix_images(snap, images, mode="bernoulli", steps=6)
    assert bern.shape == (PAD + 2 * (S + PAD), PAD + 8 * (S + PAD), 3)


def test_mix_errors_are_clear(tmp_path, images, capsys):
    snap = tiny_snapshot(tmp_path / "snapshot.safetensors", 1)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert cli.main(["mix", str(snap), str(images[0]), str(bad), "--out", str(tmp_path / "o.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least two"):
        mix.mix_images(snap, images[:1])
