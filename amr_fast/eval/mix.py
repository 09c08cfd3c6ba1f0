"""`amr-fast mix SNAPSHOT IMG IMG [IMG...] --out FILE.png [--mode ...] [--steps N]`: mixes of your own images.

Decodes mixes of the codes of any image files PIL reads (PNG, JPEG, ...; any size): each is converted to the
model's channels (grey or RGB), centre-cropped to a square and resized to the model's image size. Modes (AMR,
Beckham et al., NeurIPS 2019, section 2 and figures 2-4):
- `mixup`: interpolation strips dec(a h1 + (1 - a) h2) between consecutive images, `--steps` values of a, with
  the pixel-space blend under each strip;
- `bernoulli`: per-channel Bernoulli masks switching channels from the first to the second image along the strip;
- `kway`: three images -> the triangle over the simplex (figure 3, `--steps` rows); four or more -> random
  Dirichlet(1) mixes of all of them (`--steps` mixes per row); `kway-bernoulli` the same with one-hot
  per-channel masks;
- `cutmix` / `spatial-bernoulli`: spatial mixing of the code grid (boxes / per-position masks) between
  consecutive images (three or more images: all of them, k-way), `--steps` random masks per row with the same
  mask applied to the pixels under each decoded mix.

Example:
    amr-fast mix runs/fmnist-mixup/snapshot-0000200.000.safetensors shoe.jpg shirt.png --out mix.png --steps 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from amr_fast.checkpoint import load_networks
from amr_fast.eval import grids

MODES = ("mixup", "bernoulli", "kway", "kway-bernoulli", "cutmix", "spatial-bernoulli")


def fit_image(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    """A PIL image -> uint8 [channels, size, size]: EXIF orientation, grey ("L") or RGB, centre crop to a square,
    Lanczos resize (what `amr-fast mix` and `amr-fast explore` do to any image)."""
    img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
    img = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(a.reshape(size, size, channels).transpose(2, 0, 1).copy())


def load_images(paths: list[str | Path], size: int, channels: int) -> torch.Tensor:
    """Image files -> uint8 [N, channels, size, size] (`fit_image`)."""
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel inputs; mix works with grey (1) or RGB (3) models")
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        try:
            with Image.open(p) as img:
                out.append(fit_image(img, size, channels))
        except OSError as err:
            raise ValueError(
                f"cannot read {p} as an image ({err}); pass PNG, JPEG or another format PIL reads"
            ) from err
    return torch.stack(out)


def mix_images(
    snapshot: str | Path, paths: list[str | Path], mode: str = "mixup", steps: int = 10, seed: int = 0
) -> np.ndarray:
    """The grid (uint8 [H, W, C]) of `mode` mixes of the image files through the snapshot's autoencoder."""
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if len(paths) < 2:
        raise ValueError("give at least two images to mix")
    if steps < 2:
        raise ValueError(f"--steps must be >= 2; got {steps}")
    nets, cfg = load_networks(snapshot)
    if cfg.arch == "mlp":
        raise ValueError("this snapshot is the spiral toy (arch=mlp), not an image model")
    ae = nets["ae"]
    x = load_images(paths, cfg.img_size, cfg.channels)
    g = torch.Generator().manual_seed(seed)
    if mode in ("cutmix", "spatial-bernoulli"):
        xs = torch.stack([x[:-1], x[1:]]) if len(x) == 2 else x[:, None]  # pairs, or one k-way row
        return grids.spatial_mixes(ae, xs, cfg, g, n_mix=steps, mode=mode.replace("-", "_"))
    if mode in ("mixup", "bernoulli") or len(x) == 2:
        x_a, x_b = x[:-1], x[1:]  # consecutive pairs
        if mode == "bernoulli":
            return grids.bernoulli_strips(ae, x_a, x_b, cfg, g, steps=steps)
        return grids.interpolation_strips(ae, x_a, x_b, cfg, steps=steps)
    kind = "bernoulli" if mode == "kway-bernoulli" else "mixup"
    if len(x) == 3:
        return grids.triangle_grid(ae, x, cfg, steps=steps, mode=kind, generator=g)
    return grids.kway_mixes(ae, x[:, None], cfg, g, n_mix=steps, mode=kind)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "snapshot",
        metavar="RUN_OR_SNAPSHOT",
        help="a run directory of `amr-fast train` (its newest snapshot) or a snapshot-<kimg>.safetensors",
    )
    parser.add_argument("images", nargs="+", metavar="IMG", help="two or more image files (any size, any PIL format)")
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument(
        "--mode",
        default="mixup",
        choices=MODES,
        help="mixup / bernoulli: strips between consecutive images; kway: triangle (3 images) or random k-way "
        "mixes; cutmix / spatial-bernoulli: boxes / per-position masks of the code grid, with the pixel-space mask",
    )
    parser.add_argument("--steps", type=int, default=10, help="strip length, triangle rows, or k-way mixes per row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks / weights")


def main(args: argparse.Namespace) -> int:
    if Path(args.out).is_dir():
        raise ValueError(
            f"--out {args.out} is a directory; pass the PNG file to write, e.g. {Path(args.out) / 'mix.png'}"
        )
    img = mix_images(args.snapshot, args.images, args.mode, args.steps, args.seed)
    grids.save_png(args.out, img)
    print(f"wrote {args.out} ({img.shape[1]}x{img.shape[0]})")
    return 0
