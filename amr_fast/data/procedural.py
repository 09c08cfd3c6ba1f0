"""Procedural datasets that need no download: dSprites rendered from its factor grid, and the 2-D spiral toy.

dSprites (Matthey et al. 2017; the AMR paper's disentanglement experiments, section 4.3): 1 colour x 3 shapes
(square, ellipse, heart) x 6 scales in [0.5, 1] x 40 orientations in [0, 2 pi] x 32 x 32 positions in [0, 1],
737,280 binary images. Our renderer draws the same factor grid with exact factor values, in the published index
order (the last factor varies fastest), vectorised over a batch of grid indices. The shapes are drawn by their
implicit equations, so they resemble but do not copy the published bitmaps. posX moves the sprite right, posY
down. Pixels are 0 / 255 (the published file stores 0 / 1). `style="dsprites-procedural-large"` and
`"dsprites-procedural-xl"` draw the same grid with 1.5x and 1.9x larger sprites (the README's demo uses -xl: shapes
a small autoencoder learns within minutes).

The spiral (the AMR supplement's toy for the consistency loss): points `t * (cos 4 pi t, sin 4 pi t)` plus a
little Gaussian noise, t ~ U(0.1, 1); the factor stored with each point is t.
"""

from __future__ import annotations

import numpy as np

DSPRITES_FACTOR_NAMES = ["color", "shape", "scale", "orientation", "posX", "posY"]
DSPRITES_SIZES = np.array([1, 3, 6, 40, 32, 32], dtype=np.int64)
DSPRITES_SHAPE_NAMES = ["square", "ellipse", "heart"]
DSPRITES_NUM = int(DSPRITES_SIZES.prod())  # 737,280
# dSprites latent values: shape is stored as 1, 2, 3 as in the published latents_values.
DSPRITES_VALUES = [
    np.array([1.0]),
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
]
_BASES = np.concatenate([np.cumprod(DSPRITES_SIZES[::-1])[::-1][1:], [1]]).astype(np.int64)  # [245760*3, ..., 1]

_MARGIN = 0.18  # the sprite centre stays in [margin, 1 - margin] of the image
_RADIUS = 0.16  # half-size of a scale-1 sprite, in image widths (about 10 px at 64 x 64)
# Sprite sizes of the built-in generators: name -> (radius, margin). "dsprites-procedural" resembles the published
# set; "dsprites-procedural-large" draws the same factor grid 1.5x larger (a scale-1 square is 25 px at 64 x 64,
# scale 0.5 12 px) with the centres kept 0.30 from the border: shapes cover ~2.3x the pixels; "-xl" 1.9x (31 / 15 px,
# centres 0.36 from the border, so that no sprite is clipped), ~3.5x the pixels, so that a small autoencoder draws
# squares, ellipses and hearts apart within minutes (the README's demo).
DSPRITES_STYLES = {
    "dsprites-procedural": (_RADIUS, _MARGIN),
    "dsprites-procedural-large": (0.24, 0.30),
    "dsprites-procedural-xl": (0.30, 0.36),
}


def dsprites_factors(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices [N] -> (factor classes int64 [N, 6], factor values float32 [N, 6]), published order."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= DSPRITES_NUM):
        raise ValueError(
            f"dSprites grid indices must lie in [0, {DSPRITES_NUM}); got [{indices.min()}, {indices.max()}]"
        )
    classes = (indices[:, None] // _BASES[None, :]) % DSPRITES_SIZES[None, :]
    values = np.stack([DSPRITES_VALUES[f][classes[:, f]] for f in range(6)], axis=1).astype(np.float32)
    return classes, values


def dsprites_index(classes: np.ndarray) -> np.ndarray:
    """Factor classes [N, 6] -> grid indices [N] (the inverse of `dsprites_factors`)."""
    return (np.asarray(classes, dtype=np.int64) * _BASES[None, :]).sum(axis=1)


def render_dsprites(
    indices: np.ndarray, size: int = 64, chunk: int = 4096, style: str = "dsprites-procedural"
) -> np.ndarray:
    """Render grid indices [N] -> uint8 images [N, 1, size, size] with values 0 / 255; `style` picks the sprite
    size (DSPRITES_STYLES).

    Each sprite is evaluated only in a square window around its centre (large enough for the biggest rotated
    sprite), on a canvas padded by that window, then the canvas is cropped: ~5x fewer pixels than the image.
    """
    if style not in DSPRITES_STYLES:
        raise ValueError(f"unknown dSprites style {style!r}; choose from {', '.join(DSPRITES_STYLES)}")
    radius, margin = DSPRITES_STYLES[style]
    classes, values = dsprites_factors(indices)
    n = len(indices)
    half = int(np.ceil(radius * 1.3 * size)) + 1  # window half-width in pixels: covers a rotated square / heart
    win = np.arange(-half, half + 1)  # window offsets
    canvas = np.zeros((min(n, chunk), size + 2 * half + 1, size + 2 * half + 1), dtype=np.uint8)
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        shape, scale, theta, pos_x, pos_y = (values[sl, f].astype(np.float32) for f in range(1, 6))
        cx = (margin + pos_x * (1 - 2 * margin)) * size  # centre in pixels
        cy = (margin + pos_y * (1 - 2 * margin)) * size
        col0, row0 = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)  # window centre pixel
        r = (radius * size * scale)[:, None, None]
        px = (col0[:, None, None] + win[None, None, :] + 0.5 - cx[:, None, None]) / r  # [m, 1, w] sprite units
        py = (row0[:, None, None] + win[None, :, None] + 0.5 - cy[:, None, None]) / r  # [m, w, 1]
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        u, v = cos * px + sin * py, -sin * px + cos * py  # rotate the image plane by -theta: [m, w, w]
        inside = np.zeros(u.shape, dtype=bool)
        for value, test in ((1, _square), (2, _ellipse), (3, _heart_uv)):
            sel = shape == value
            if sel.any():
                inside[sel] = test(u[sel], v[sel])
        canvas[:m] = 0
        rows = (row0 + half)[:, None, None] + win[None, :, None]  # canvas coordinates (padded by half)
        cols = (col0 + half)[:, None, None] + win[None, None, :]
        canvas[np.arange(m)[:, None, None], rows, cols] = inside.astype(np.uint8) * 255
        out[sl, 0] = canvas[:m, half : half + size, half : half + size]
    return out


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4.0 * v * v <= 1.0  # 2:1


def _heart_uv(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _heart(1.15 * u, -1.15 * v + 0.15)  # point down at orientation 0


def _heart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = a * a + b * b - 1.0
    return q * q * q - a * a * b * b * b <= 0.0


def spiral(n: int, seed: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """n points on the spiral -> (points float32 [n, 2] in about [-1, 1], t float32 [n, 1])."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.1, 1.0, size=n)
    angle = 4 * np.pi * t
    points = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32), t[:, None].astype(np.float32)
