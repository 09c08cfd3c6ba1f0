"""`amr-fast mix` on PNG and JPEG files of other sizes and channel counts, through a tiny saved snapshot."""

import numpy as np
import pytest
import torch
from PIL import Image

from amr_fast import checkpoint, cli
from amr_fast.config import TrainConfig
from amr_fast.eval import grids, mix
from amr_fast.models import build_networks
from amr_fast.overrides import to_json

PAD = grids.PAD
S = 16  # the model's image size (amr32 at its smallest working size)


def tiny_nets(channels):
    cfg = TrainConfig(arch="amr32", img_size=S, channels=channels, width=8, code_channels=2, mixer="mixup").validate()
    torch.manual_seed(0)
    return cfg, build_networks(cfg)


def tiny_snapshot(path, channels):
    import json

    cfg, nets = tiny_nets(channels)
    checkpoint.save_snapshot(path, nets, json.loads(to_json(cfg)), kimg=1.0)
    return path


def tiny_ae(channels):
    """The snapshot's autoencoder, built again: the expected decodes are computed without the CLI's loader."""
    return tiny_nets(channels)[1]["ae"].eval()


def codes(ae, paths, channels):
    """The codes h [N, C, 4, 4] of the image files as the model sees them (uint8 -> [-1, 1])."""
    with torch.no_grad():
        return ae.encode(mix.load_images(paths, S, channels).float() / 127.5 - 1)


def decoded(ae, h):
    """dec(h) for one code h [C, 4, 4] as the uint8 tile [S, S, channels] the grids draw (as int)."""
    with torch.no_grad():
        x = ae.decode(h[None]).clamp(-1, 1)[0]
    return ((x + 1) * 127.5).round().numpy().transpose(1, 2, 0).astype(int)


def close(tile, want) -> bool:
    return np.abs(tile.astype(int).reshape(want.shape) - want).max() <= 1  # uint8 rounding of a float decode


def match(tile, candidates: dict):
    """The one key of `candidates` (expected tiles) that the tile equals; fails when none or several do."""
    hits = [key for key, want in candidates.items() if close(tile, want)]
    assert len(hits) == 1, f"tile matches {len(hits)} of the candidate decodes"
    return hits[0]


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
    snap, ae = tiny_snapshot(tmp_path / "snapshot.safetensors", channels), tiny_ae(channels)
    out = tmp_path / "out" / "mix.png"
    assert cli.main(["mix", str(snap), str(images[0]), str(images[1]), "--out", str(out), "--steps", "5"]) == 0
    img = np.asarray(Image.open(out))
    img = img[:, :, None] if img.ndim == 2 else img
    assert img.shape == (PAD + 2 * (S + PAD), PAD + 5 * (S + PAD), channels)
    x = mix.load_images(images[:2], S, channels).numpy().transpose(0, 2, 3, 1)  # [2, S, S, C]
    assert np.abs(tile_at(img, 1, 0).astype(int) - x[0]).max() <= 1  # pixel-blend row: a = 1 is image a
    assert np.abs(tile_at(img, 1, 4).astype(int) - x[1]).max() <= 1  # a = 0 is image b
    assert abs(int(x[1].mean()) - 200) <= 2  # the grey JPEG, converted and resized
    h_a, h_b = codes(ae, images[:2], channels)
    for q, a in enumerate(torch.linspace(1, 0, 5)):  # the decoded row: dec(a h_a + (1 - a) h_b), a = 1 ... 0
        assert close(tile_at(img, 0, q), decoded(ae, a * h_a + (1 - a) * h_b)), q


def test_mix_modes_kway_and_bernoulli(tmp_path, images):
    snap, ae = tiny_snapshot(tmp_path / "snapshot.safetensors", 3), tiny_ae(3)
    h = codes(ae, images, 3)  # [3, C, 4, 4]
    x = mix.load_images(images, S, 3).numpy().transpose(0, 2, 3, 1).astype(int)
    C = h.shape[1]
    # kway, three images: the triangle over the simplex, tile (r, q) = dec(((d - r) h0 + (r - q) h1 + q h2) / d)
    steps, d = 4, 3
    tri = mix.mix_images(snap, images, mode="kway", steps=steps)
    assert tri.shape == (PAD + 4 * (S + PAD), PAD + 4 * (S + PAD), 3)
    for r in range(steps):
        for q in range(r + 1):
            top, left = PAD + r * (S + PAD), PAD + ((steps - 1 - r) * (S + PAD)) // 2 + q * (S + PAD)
            want = decoded(ae, ((d - r) * h[0] + (r - q) * h[1] + q * h[2]) / d)
            assert close(tri[top : top + S, left : left + S], want), (r, q)
    # kway-bernoulli, four images: the sources, then mixes that take each code channel from one of the four
    four = mix.mix_images(snap, images + images[:1], mode="kway-bernoulli", steps=3)
    assert four.shape == (PAD + 1 * (S + PAD), PAD + 7 * (S + PAD), 3)
    h4 = torch.cat([h, h[:1]])
    onehot = {src: decoded(ae, h4[list(src), range(C)]) for src in np.ndindex(*[4] * C)}  # channel c from src[c]
    for q in range(4):
        assert close(tile_at(four, 0, q), x[q % 3]), q
    for q in range(4, 7):
        src = [key for key, want in onehot.items() if close(tile_at(four, 0, q), want)]
        assert src, f"k-way Bernoulli tile {q} is no one-hot channel mix of the four codes"
    # bernoulli: per consecutive pair the two images, then masks switching channels from a to b one at a time
    bern = mix.mix_images(snap, images, mode="bernoulli", steps=6)
    assert bern.shape == (PAD + 2 * (S + PAD), PAD + 8 * (S + PAD), 3)
    for row, (a, b) in enumerate([(0, 1), (1, 2)]):
        assert close(tile_at(bern, row, 0), x[a]) and close(tile_at(bern, row, 1), x[b])
        masks = {
            m: decoded(ae, torch.where(torch.tensor(m, dtype=torch.bool)[:, None, None], h[a], h[b]))
            for m in np.ndindex(*[2] * C)
        }
        seen = [match(tile_at(bern, row, 2 + q), masks) for q in range(6)]  # m[c] = 1: channel c from a
        assert seen[0] == (1,) * C and seen[-1] == (0,) * C, seen
        assert all(all(u >= v for u, v in zip(s, t)) for s, t in zip(seen, seen[1:])), seen  # never back to a


def test_mix_errors_are_clear(tmp_path, images, capsys):
    snap = tiny_snapshot(tmp_path / "snapshot.safetensors", 1)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert cli.main(["mix", str(snap), str(images[0]), str(bad), "--out", str(tmp_path / "o.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least two"):
        mix.mix_images(snap, images[:1])
