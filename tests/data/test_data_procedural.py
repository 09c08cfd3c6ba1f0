"""Procedural dSprites: the factor grid is the published one (every combination has exactly one index), and the
rendered images carry their factors (position -> centroid, scale -> area, orientation 0 = 2 pi, shapes differ)."""

from __future__ import annotations

import numpy as np
import pytest

from amr_fast.data import procedural

P = procedural


def index_of(**factors: int) -> int:
    classes = np.zeros((1, 6), dtype=np.int64)
    for name, value in factors.items():
        classes[0, P.DSPRITES_FACTOR_NAMES.index(name)] = value
    return int(P.dsprites_index(classes)[0])


def centroid_and_area(img: np.ndarray) -> tuple[float, float, int]:
    rows, cols = np.nonzero(img[0])
    return cols.mean(), rows.mean(), len(rows)


def test_grid_is_the_published_one_and_every_combination_is_reachable():
    all_idx = np.arange(P.DSPRITES_NUM)
    classes, values = P.dsprites_factors(all_idx)
    assert P.DSPRITES_NUM == 737280 and classes.shape == (737280, 6)
    assert np.array_equal(P.dsprites_index(classes), all_idx)  # a bijection: each combination exactly once
    assert np.array_equal(classes[1], [0, 0, 0, 0, 0, 1]) and np.array_equal(classes[32], [0, 0, 0, 0, 1, 0])
    for f, size in enumerate(P.DSPRITES_SIZES):
        assert np.array_equal(np.unique(classes[:, f]), np.arange(size))
        assert np.allclose(np.unique(values[:, f]), P.DSPRITES_VALUES[f])
    assert np.allclose(P.DSPRITES_VALUES[3][[0, -1]], [0, 2 * np.pi]) and np.allclose(
        P.DSPRITES_VALUES[2], np.linspace(0.5, 1, 6)
    )
    with pytest.raises(ValueError, match="grid indices"):
        P.dsprites_factors(np.array([P.DSPRITES_NUM]))


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_position_moves_the_centroid_linearly(shape):
    for axis, name, other in [(0, "posX", "posY"), (1, "posY", "posX")]:
        idx = [index_of(shape=shape, scale=5, **{name: k, other: 16}) for k in range(32)]
        imgs = P.render_dsprites(np.array(idx))
        stats = np.array([centroid_and_area(img) for img in imgs])
        moving, fixed = stats[:, axis], stats[:, 1 - axis]
        step = np.diff(moving)
        assert (step > 0).all() and np.allclose(step, step.mean(), atol=0.6)  # one grid step = a fixed shift
        assert np.ptp(fixed) < 0.6 and np.ptp(stats[:, 2]) <= 0.1 * stats[:, 2].mean()  # nothing else changes


def test_scale_shape_and_orientation_are_visible():
    for shape in range(3):
        areas = [
            centroid_and_area(P.render_dsprites(np.array([index_of(shape=shape, scale=s, posX=16, posY=16)]))[0])[2]
            for s in range(6)
        ]
        assert all(np.diff(areas) > 0) and 3.0 < areas[-1] / areas[0] < 5.0  # area ~ scale^2, scales 0.5 .. 1
    base = dict(scale=5, posX=16, posY=16)
    imgs = {
        s: P.render_dsprites(np.array([index_of(shape=s, orientation=o, **base) for o in range(40)])) for s in range(3)
    }
    for s in range(3):
        assert np.array_equal(imgs[s][0], imgs[s][39])  # orientation 0 and 2 pi: the same sprite
        assert all(not np.array_equal(imgs[s][o], imgs[s][o + 1]) for o in range(39))  # every step turns it
    assert not np.array_equal(imgs[0][0], imgs[1][0]) and not np.array_equal(imgs[1][0], imgs[2][0])
    assert set(np.unique(imgs[2])) == {0, 255}


@pytest.mark.parametrize("style, factor", [("dsprites-procedural-large", 1.5), ("dsprites-procedural-xl", 1.875)])
def test_the_larger_styles_draw_the_same_grid_larger(style, factor):
    idx = np.array([index_of(shape=s, scale=5, orientation=3, posX=16, posY=16) for s in range(3)])
    small, large = P.render_dsprites(idx), P.render_dsprites(idx, style=style)
    ratio = (large > 0).sum(axis=(1, 2, 3)) / (small > 0).sum(axis=(1, 2, 3))
    assert np.all(np.abs(ratio - factor**2) < 0.3)  # factor x the size: factor^2 the area, every shape
    for img in large:  # centred like the default style (posX = posY = 16 of 0..31: about the middle)
        cx, cy, _ = centroid_and_area(img)
        assert abs(cx - 32) < 3 and abs(cy - 32) < 3
    corners = [
        index_of(shape=s, scale=5, orientation=o, posX=x, posY=y)
        for s in range(3)
        for o in range(40)
        for x in (0, 31)
        for y in (0, 31)
    ]
    big = P.render_dsprites(np.array(corners), style=style)[:, 0]
    border = np.concatenate([big[:, 0], big[:, -1], big[:, :, 0], big[:, :, -1]], axis=1)
    assert border.max() == 0  # the largest sprites, any shape and orientation, stay inside the image
    with pytest.raises(ValueError, match="style"):
        P.render_dsprites(idx, style="huge")
