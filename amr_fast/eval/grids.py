"""Image grids of an autoencoder's reconstructions and decoded mixes (PNG, PIL + einops, no torchvision).

The qualitative figures of AMR (Beckham et al., NeurIPS 2019): reconstructions; 2-way interpolation strips
`dec(a h1 + (1 - a) h2)` for 10 values of a, with the pixel-space blend `a x1 + (1 - a) x2` underneath for
comparison (section 4, figures 2 and 4); Bernoulli mixes `dec(m h1 + (1 - m) h2)` with a per-channel mask;
k = 3 triangle grids over the simplex (figure 3); class-conditional mixes of the supervised mixer (figure 5);
spatial mixes (CutMix boxes / per-position masks of the code grid) over the same masks applied to the pixels; and
for the 2-D spiral toy (supplement, figure 12) a scatter plot of decoded random mixes over the data.

Every mix, in code space and in pixel space, goes through `amr_fast.kernels.simplex_mix` / `mask_mix`: the
sources are stacked into one batch and `perm` rolls it by whole blocks, so `out[b] = sum_k w[b, k] h_k[b]`.

Layout convention (the tests read pixels with it): a grid of R x Q tiles of H x W pixels, `pad` pixels of
background (`BACKGROUND`) before every row and column and after the last; tile (r, q) starts at
`(pad + r (H + pad), pad + q (W + pad))`. Panels of different widths are stacked top to bottom, left aligned,
`GAP` background rows between them (`stack_columns`: side by side, top aligned).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from amr_fast import kernels, mixing, models
from amr_fast.data import eval_loader
from amr_fast.data.images import to_unit

BACKGROUND = 255  # white between tiles
PAD = 2  # pixels around every tile
GAP = 6  # rows between stacked panels
STEPS = 10  # interpolation strip length (the paper's figures)

# ---------------------------------------------------------------------------------------------------------------
# Conversions.


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255] (clamped, rounded), same shape, on the CPU."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def autoencoder(ae: torch.nn.Module) -> torch.nn.Module:
    """`models.unwrap(ae)`, checked to be an autoencoder (the thing with `.encode` / `.decode`): a clear error when
    another network is passed."""
    ae = models.unwrap(ae)
    if not (hasattr(ae, "encode") and hasattr(ae, "decode")):
        raise ValueError(f"expected an autoencoder with .encode/.decode (nets['ae']); got {type(ae).__name__}")
    return ae


@contextlib.contextmanager
def inference(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """eval mode and no grad for the block; the module's previous train/eval mode is restored after it."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def _device(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def decode(ae: torch.nn.Module, h: torch.Tensor, cfg) -> torch.Tensor:
    """dec(h) as images in [-1, 1]. Every AMR autoencoder's `decode` ends in tanh, whatever cfg.recon (with
    "bce" the loss reads the logits from `decode_with_logits`), so no sigmoid here."""
    return ae.decode(h).float().clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------------
# Mixing K aligned source batches through the kernels.


def _block_perm(k: int, n: int, device: torch.device) -> torch.Tensor:
    """perm [K, K n] for K stacked blocks of n rows: row j sends b to (b + j n) mod K n, so for b < n the j-th
    partner of b is row b of block j."""
    b = torch.arange(k * n, device=device)
    return torch.stack([(b + j * n) % (k * n) for j in range(k)])


def mix_sources(hs: Sequence[torch.Tensor], w: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """sum_j w[:, j] * hs[j]: K aligned batches hs[j] [N, C, *S], weights w [N, K] -> [N, C, *S]."""
    k, n = len(hs), hs[0].shape[0]
    h = torch.cat(list(hs))  # [K N, C, *S]
    perm = _block_perm(k, n, h.device)
    # Rows of blocks 1..K-1 are computed and dropped; their weights only have to be valid.
    w_all = w.to(h.device, torch.float32).repeat(k, 1)  # [K N, K]
    return kernels.simplex_mix(h, perm, w_all.to(h.dtype), impl=impl)[:n]


def mask_sources(hs: Sequence[torch.Tensor], m: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """sum_j m[:, j] * hs[j]: K aligned batches [N, C, *S], per-channel weights m [N, K, C] (or any mask_mix mask
    [N, K, *M], e.g. per position [N, K, 1, *S]) -> [N, C, *S]."""
    k, n = len(hs), hs[0].shape[0]
    h = torch.cat(list(hs))
    perm = _block_perm(k, n, h.device)
    m_all = m.to(h.device, torch.float32).repeat(k, *([1] * (m.dim() - 1)))  # [K N, K, *M]
    return kernels.mask_mix(h, perm, m_all.to(h.dtype), impl=impl)[:n]


def categorical_masks(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One-hot per-channel source masks [N, K, C]: channel c of row b comes from source j with probability w[b, j]
    (inverse CDF of the uniform draws u [N, C]; the same u along a strip makes the channels switch one by one)."""
    cdf = w.float().cumsum(dim=1)  # [N, K]
    src = (u[:, :, None] > cdf[:, None, :]).sum(dim=2).clamp_max(w.shape[1] - 1)  # [N, C]
    return torch.nn.functional.one_hot(src, w.shape[1]).float().transpose(1, 2)  # [N, K, C]


# ---------------------------------------------------------------------------------------------------------------
# Layout.


def tile(images: torch.Tensor | np.ndarray, pad: int = PAD) -> np.ndarray:
    """A grid of images [R, Q, C, H, W] (uint8, or float in [-1, 1]) -> uint8 [H', W', C] with
    H' = pad + R (H + pad), W' = pad + Q (W + pad)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        t = to_uint8(t)
    if t.dim() != 5:
        raise ValueError(f"tile expects images [rows, cols, C, H, W]; got shape {tuple(t.shape)}")
    t = torch.nn.functional.pad(t, (0, pad, 0, pad), value=BACKGROUND)  # bottom/right of every tile
    grid = rearrange(t.cpu().numpy(), "r q c h w -> (r h) (q w) c")
    return np.pad(grid, ((pad, 0), (pad, 0), (0, 0)), constant_values=BACKGROUND)


def stack_panels(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels [H_i, W_i, C] stacked top to bottom, left aligned, padded to the widest with background."""
    width = max(p.shape[1] for p in panels)
    out = []
    for i, p in enumerate(panels):
        out.append(np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=BACKGROUND))
        if i < len(panels) - 1:
            out.append(np.full((gap, width, p.shape[2]), BACKGROUND, np.uint8))
    return np.concatenate(out, axis=0)


def stack_columns(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels [H_i, W_i, C] side by side, top aligned, padded to the tallest with background."""
    return stack_panels([p.transpose(1, 0, 2) for p in panels], gap).transpose(1, 0, 2)


def save_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write uint8 [H, W, C] (C = 1 grey, 3 RGB, 4 RGBA) or [H, W] as PNG; atomic (tmp file + rename)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8 pixels; got {img.dtype} (convert with amr_fast.eval.grids.to_uint8)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"save_png expects [H, W, C] with C in 1, 3, 4; got shape {img.shape}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass a PNG file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The figures. Each takes images (uint8 or [-1, 1]) and returns uint8 [H, W, C].


def reconstructions(ae: torch.nn.Module, x: torch.Tensor, cfg) -> np.ndarray:
    """Two rows: the inputs x [N, C, H, W] and their reconstructions dec(enc(x))."""
    ae = autoencoder(ae)
    with inference(ae):
        x = to_unit(x).to(_device(ae))
        x_rec = decode(ae, ae.encode(x), cfg)
    return tile(torch.stack([x, x_rec]))


def interpolation_strips(
    ae: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, cfg, steps: int = STEPS, pixel: bool = True
) -> np.ndarray:
    """Per pair (x_a[i], x_b[i]): a row dec(a h_a + (1 - a) h_b) for a = 1 ... 0 in `steps` steps (first column
    decodes h_a, last h_b), and with `pixel` a row of the pixel blend a x_a + (1 - a) x_b under it."""
    ae = autoencoder(ae)
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the two end points); got {steps}")
    impl = getattr(cfg, "impl", "auto")
    with inference(ae):
        dev = _device(ae)
        x_a, x_b = to_unit(x_a).to(dev), to_unit(x_b).to(dev)
        n = x_a.shape[0]
        a = torch.linspace(1, 0, steps, device=dev).repeat(n)  # [N steps], pair-major
        w = torch.stack([a, 1 - a], dim=1)  # [N steps, 2]
        xa_r, xb_r = x_a.repeat_interleave(steps, 0), x_b.repeat_interleave(steps, 0)
        h_a, h_b = ae.encode(xa_r), ae.encode(xb_r)
        x_mix = decode(ae, mix_sources([h_a, h_b], w, impl), cfg)  # [N steps, C, H, W]
        rows = [x_mix.reshape(n, steps, *x_mix.shape[1:])]
        if pixel:
            x_pix = mix_sources([xa_r, xb_r], w, impl)
            rows.append(x_pix.reshape(n, steps, *x_pix.shape[1:]))
    grid = torch.stack(rows, dim=1).flatten(0, 1)  # [N rows, steps, C, H, W]
    return tile(grid)


def bernoulli_strips(
    ae: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, cfg, generator: torch.Generator, steps: int = STEPS
) -> np.ndarray:
    """Bernoulli mixup (AMR section 2): per pair, columns x_a, x_b, then dec(m h_a + (1 - m) h_b) with per-channel
    masks m ~ Bern(p) for p = 1 ... 0: the same uniform draw per channel along the row, so channels switch from
    h_a to h_b one at a time (first mix column is h_a, last is h_b)."""
    ae = autoencoder(ae)
    impl = getattr(cfg, "impl", "auto")
    with inference(ae):
        dev = _device(ae)
        x_a, x_b = to_unit(x_a).to(dev), to_unit(x_b).to(dev)
        n = x_a.shape[0]
        h_a, h_b = ae.encode(x_a), ae.encode(x_b)
        c = h_a.shape[1]
        u = torch.rand(n, 1, c, generator=generator, device=generator.device).to(dev).expand(n, steps, c)
        p = torch.linspace(1, 0, steps, device=dev)  # p = probability of source a
        w = torch.stack([p, 1 - p], dim=1).repeat(n, 1)  # [N steps, 2]
        m = categorical_masks(w, u.reshape(n * steps, c))  # [N steps, 2, C]
        h_mix = mask_sources([h_a.repeat_interleave(steps, 0), h_b.repeat_interleave(steps, 0)], m, impl)
        x_mix = decode(ae, h_mix, cfg).reshape(n, steps, *x_a.shape[1:])
    grid = torch.cat([x_a[:, None], x_b[:, None], x_mix], dim=1)  # [N, 2 + steps, C, H, W]
    return tile(grid)


def _encode_sources(ae: torch.nn.Module, xs: torch.Tensor, n_mix: int) -> tuple:
    """K aligned source sets xs [K, N, C, H, W] -> (device, xs in [-1, 1] there, K codes each repeated n_mix times
    per example: K x [N n_mix, C, *S])."""
    dev = _device(ae)
    xs = to_unit(xs).to(dev)
    return dev, xs, [ae.encode(xs[j]).repeat_interleave(n_mix, 0) for j in range(xs.shape[0])]


def kway_mixes(
    ae: torch.nn.Module, xs: torch.Tensor, cfg, generator: torch.Generator, n_mix: int = 8, mode: str = "mixup"
) -> np.ndarray:
    """k-way mixes (AMR section 2): xs [K, N, C, H, W] are K aligned sets of sources. Per example a row: the K
    sources, then n_mix random mixes: mode "mixup" w ~ Dirichlet(alpha 1_K) with `simplex_mix`, mode "bernoulli"
    each channel from one of the K sources (`mask_mix`), drawn with `amr_fast.mixing`'s samplers."""
    ae = autoencoder(ae)
    impl = getattr(cfg, "impl", "auto")
    k, n = xs.shape[0], xs.shape[1]
    with inference(ae):
        dev, xs, hs = _encode_sources(ae, xs, n_mix)
        if mode == "mixup":
            w = mixing.sample_dirichlet_weights(n * n_mix, k, getattr(cfg, "alpha", 1.0), generator, device=dev)
            h_mix = mix_sources(hs, w, impl)
        elif mode == "bernoulli":
            m = mixing.sample_kway_bernoulli_masks(n * n_mix, k, hs[0].shape[1], generator, True, device=dev)
            h_mix = mask_sources(hs, m, impl)
        else:
            raise ValueError(f"mode must be 'mixup' or 'bernoulli'; got {mode!r}")
        x_mix = decode(ae, h_mix, cfg).reshape(n, n_mix, *xs.shape[2:])
    grid = torch.cat([xs.transpose(0, 1), x_mix], dim=1)  # [N, K + n_mix, C, H, W]
    return tile(grid)


def sample_spatial_masks(
    mode: str, n: int, k: int, grid: tuple[int, ...], cfg, generator: torch.Generator
) -> torch.Tensor:
    """One-hot masks [n, K, *grid] as the trainer draws them: mode "cutmix" (boxes, area ~ Beta(alpha, alpha))
    or "spatial_bernoulli" (each position from one of K sources, p per mask)."""
    if mode == "cutmix":
        return mixing.sample_cutmix_masks(n, k, grid, float(getattr(cfg, "alpha", 1.0)), generator)
    if mode == "spatial_bernoulli":
        return mixing.sample_position_bernoulli_masks(n, k, grid, generator, per_example=True)
    raise ValueError(f"mode must be 'cutmix' or 'spatial_bernoulli'; got {mode!r}")


def mask_pictures(masks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Masks [N, K, *grid] drawn at x's size [N, C, H, W] in [-1, 1], nearest cells: a 2-D grid is stretched over
    the image, a 1-D grid (a vector code's units) is drawn as vertical bands; source j is grey level 1 - 2j/(K-1)
    (source 0 white, the last black)."""
    n, k = masks.shape[:2]
    src = masks.argmax(dim=1).float()  # [N, *grid]
    if src.dim() == 2:  # 1-D grid: bands
        src = src[:, None, :]
    level = 1 - 2 * src / (k - 1)  # [N, gh, gw]
    pic = torch.nn.functional.interpolate(level[:, None], size=x.shape[2:], mode="nearest")  # [N, 1, H, W]
    return pic.expand(n, x.shape[1], *x.shape[2:]).to(x.device)


def spatial_mixes(
    ae: torch.nn.Module, xs: torch.Tensor, cfg, generator: torch.Generator, n_mix: int = 8, mode: str = "cutmix"
) -> np.ndarray:
    """Spatial mixing of codes (the AMR paper's section 5 proposal): xs [K, N, C, H, W] are K aligned sets of
    sources. Per example two rows: the K sources, then n_mix decoded mixes dec(sum_j m_j h_j) with masks over the
    code grid (`sample_spatial_masks`; k = 2: sorted by the partner's area); under each mix the same mask applied
    to the pixels (nearest upsampling of the grid: the boxes are visible as pasted regions), or, for a vector code,
    the mask itself (`mask_pictures`)."""
    ae = autoencoder(ae)
    impl = getattr(cfg, "impl", "auto")
    k, n = xs.shape[0], xs.shape[1]
    with inference(ae):
        dev, xs, hs = _encode_sources(ae, xs, n_mix)
        grid = mixing.code_grid(tuple(hs[0].shape[1:]))
        masks = sample_spatial_masks(mode, n * n_mix, k, grid, cfg, generator).to(dev)  # [N n_mix, K, *grid]
        if k == 2:  # along each row the partner's share grows
            area = masks[:, 1].flatten(1).sum(1).view(n, n_mix)
            order = (area.argsort(dim=1) + torch.arange(n, device=dev)[:, None] * n_mix).flatten()
            masks = masks[order]
        h_mix = mask_sources(hs, mixing.position_mask(masks, hs[0]), impl)
        x_mix = decode(ae, h_mix, cfg)  # [N n_mix, C, H, W]
        x_src = [xs[j].repeat_interleave(n_mix, 0) for j in range(k)]
        if len(grid) == 2:  # the same boxes in pixel space
            up = torch.nn.functional.interpolate(masks.float(), size=xs.shape[3:], mode="nearest")  # [.., K, H, W]
            under = mask_sources(x_src, up[:, :, None], impl)
        else:
            under = mask_pictures(masks, x_mix)
    blank = torch.ones(n, k, *xs.shape[2:], device=dev)  # white tiles under the sources
    top = torch.cat([xs.transpose(0, 1), x_mix.view(n, n_mix, *xs.shape[2:])], dim=1)
    bottom = torch.cat([blank, under.view(n, n_mix, *xs.shape[2:])], dim=1)
    return tile(torch.stack([top, bottom], dim=1).flatten(0, 1))  # [2N, K + n_mix, C, H, W]


def simplex_points(steps: int) -> list[tuple[int, int, torch.Tensor]]:
    """Triangle grid over the 3-simplex: (row, position, w [3]) for row r = 0..steps-1 and position q = 0..r;
    w = ((steps-1-r), (r-q), q) / (steps-1): the top tile is source 0, bottom-left 1, bottom-right 2."""
    d = steps - 1
    return [(r, q, torch.tensor([(d - r) / d, (r - q) / d, q / d])) for r in range(steps) for q in range(r + 1)]


def triangle_grid(
    ae: torch.nn.Module,
    x3: torch.Tensor,
    cfg,
    steps: int = 8,
    mode: str = "mixup",
    generator: torch.Generator | None = None,
    pixel: bool = False,
) -> np.ndarray:
    """The paper's figure 3: decoded mixes of three images x3 [3, C, H, W] over a triangular grid of the simplex
    (`simplex_points`), row r holding r + 1 tiles centred (half-tile offsets). mode "mixup": sum_j w_j h_j;
    "bernoulli": each channel from source j with probability w_j (one uniform draw per channel for the whole
    triangle, so neighbouring tiles differ by few channels). Corners decode the three codes themselves.
    With `pixel`, the same triangle of pixel blends sum_j w_j x_j is drawn to its right, `GAP` columns apart."""
    ae = autoencoder(ae)
    if x3.shape[0] != 3 or steps < 2:
        raise ValueError(f"triangle_grid needs exactly 3 images and steps >= 2; got {x3.shape[0]} images, {steps}")
    impl = getattr(cfg, "impl", "auto")
    pts = simplex_points(steps)
    with inference(ae):
        dev = _device(ae)
        x3 = to_unit(x3).to(dev)
        h3 = ae.encode(x3)  # [3, C, *S]
        n = len(pts)
        hs = [h3[j : j + 1].expand(n, *h3.shape[1:]).contiguous() for j in range(3)]
        w = torch.stack([p[2] for p in pts]).to(dev)  # [n, 3]
        if mode == "mixup":
            h_mix = mix_sources(hs, w, impl)
        elif mode == "bernoulli":
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            u = torch.rand(1, h3.shape[1], generator=gen, device=gen.device).to(dev).expand(n, -1)
            h_mix = mask_sources(hs, categorical_masks(w, u), impl)
        else:
            raise ValueError(f"mode must be 'mixup' or 'bernoulli'; got {mode!r}")
        triangles = [_triangle_canvas(to_uint8(decode(ae, h_mix, cfg)).numpy(), pts, steps)]
        if pixel:
            x_pix = mix_sources([x3[j : j + 1].expand(n, *x3.shape[1:]).contiguous() for j in range(3)], w, impl)
            triangles.append(_triangle_canvas(to_uint8(x_pix).numpy(), pts, steps))
    return stack_columns(triangles)


def _triangle_canvas(tiles: np.ndarray, pts: list, steps: int) -> np.ndarray:
    """Tiles uint8 [n, C, H, W] at the `simplex_points` positions pts -> uint8 [H', W', C]."""
    c, hh, ww = tiles.shape[1:]
    canvas = np.full((PAD + steps * (hh + PAD), PAD + steps * (ww + PAD), c), BACKGROUND, np.uint8)
    for (r, q, _), img in zip(pts, tiles):
        top = PAD + r * (hh + PAD)
        left = PAD + ((steps - 1 - r) * (ww + PAD)) // 2 + q * (ww + PAD)
        canvas[top : top + hh, left : left + ww] = rearrange(img, "c h w -> h w c")
    return canvas


def class_mixes(
    ae: torch.nn.Module, mixer: torch.nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, y_mix: torch.Tensor, cfg
) -> np.ndarray:
    """The paper's figure 5 (supervised AMR, section 2.2): per pair, columns x_a, x_b, then one decoded mix per
    target label vector y_mix [T, num_classes]: the class mixer maps it to per-channel weights m [T, 2, C]
    (`ClassMixer.forward`; a mixer returning p [T, C], the weight of x_a, is accepted too) and
    h_mix = m_0 h_a + m_1 h_b through `mask_mix`."""
    ae = autoencoder(ae)
    impl = getattr(cfg, "impl", "auto")
    with inference(ae), inference(mixer):
        dev = _device(ae)
        x_a, x_b = to_unit(x_a).to(dev), to_unit(x_b).to(dev)
        n, t = x_a.shape[0], y_mix.shape[0]
        h_a, h_b = ae.encode(x_a), ae.encode(x_b)
        m = mixer(y_mix.to(dev).float()).float()
        if m.dim() == 2:  # p [T, C] -> [T, 2, C]
            m = torch.stack([m, 1 - m], dim=1)
        if m.dim() != 3 or m.shape[1] != 2 or m.shape[2] != h_a.shape[1]:
            raise ValueError(
                f"the class mixer must return m [T, 2, C] with C = {h_a.shape[1]} code channels; got {tuple(m.shape)}"
            )
        h_mix = mask_sources(
            [h_a.repeat_interleave(t, 0), h_b.repeat_interleave(t, 0)], m.repeat(n, 1, 1), impl
        )  # [N T, C, *S]
        x_mix = decode(ae, h_mix, cfg).reshape(n, t, *x_a.shape[1:])
    return tile(torch.cat([x_a[:, None], x_b[:, None], x_mix], dim=1))


def class_label_paths(y_a: torch.Tensor, y_b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Target label vectors for `class_mixes` of pairs with labels y_a, y_b [N]: class of a only, both classes,
    class of b only (the values a per-class mix of two one-hot labels can take) -> [N, 3, num_classes]."""
    one_a = torch.nn.functional.one_hot(y_a.long().cpu(), num_classes).float()
    one_b = torch.nn.functional.one_hot(y_b.long().cpu(), num_classes).float()
    return torch.stack([one_a, torch.maximum(one_a, one_b), one_b], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# The spiral toy (AMR supplement, figure 12).


def render_figure(fig) -> np.ndarray:
    """A matplotlib figure (Agg) -> uint8 [H, W, 3]; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return img


def spiral_mixes(
    ae: torch.nn.Module, x: torch.Tensor, cfg, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded random mixes of 2-D points x ([N, 2] or the trainer's [N, 2, 1, 1] "images"): the run's own mixer
    (mixup, Bernoulli, k-way) over random partners from `amr_fast.mixing` -> (x_rec [N, 2], x_mix [N, 2]) on CPU."""
    ae = autoencoder(ae)
    impl = getattr(cfg, "impl", "auto")
    k = max(2, int(getattr(cfg, "k", 2)))
    with inference(ae):
        dev = _device(ae)
        x = to_unit(x).to(dev)
        h = ae.encode(x)
        perm = mixing.sample_perm(k, x.shape[0], generator, device=dev)
        if getattr(cfg, "mixer", "mixup") == "bernoulli":
            m = mixing.sample_kway_bernoulli_masks(x.shape[0], k, h.shape[1], generator, device=dev)
            h_mix = kernels.mask_mix(h, perm, m, impl=impl)
        else:
            w = mixing.sample_dirichlet_weights(x.shape[0], k, getattr(cfg, "alpha", 1.0), generator, device=dev)
            h_mix = kernels.simplex_mix(h, perm, w, impl=impl)
        return ae.decode(h).float().flatten(1).cpu(), ae.decode(h_mix).float().flatten(1).cpu()


def spiral_plot(panels: Sequence[tuple[str, torch.Tensor, torch.Tensor]], size: float = 3.0) -> np.ndarray:
    """One scatter per (title, data [N, 2], decoded mixes [M, 2]): data blue, mixes orange (figure 12 of the
    supplement, one panel per beta) -> uint8 [H, W, 3]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, data, mixes) in zip(axes[0], panels):
        ax.scatter(data[:, 0], data[:, 1], s=4, c="tab:blue", label="data")
        ax.scatter(mixes[:, 0], mixes[:, 1], s=4, c="tab:orange", label="decoded mixes")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return render_figure(fig)


# ---------------------------------------------------------------------------------------------------------------
# The grid written during training.


def training_grid(
    ae: torch.nn.Module,
    x: torch.Tensor,
    cfg,
    generator: torch.Generator,
    y: torch.Tensor | None = None,
    mixer: torch.nn.Module | None = None,
) -> np.ndarray:
    """`samples-<kimg>.png` of a run: reconstructions of up to 8 images, then the run's own kind of mixes
    (cfg.mixer, cfg.k): interpolation strips with the pixel blend (mixup k = 2 and the AE+GAN baseline),
    Bernoulli strips (bernoulli k = 2), spatial mixes over their pixel-space boxes (cutmix, spatial_bernoulli),
    a triangle grid with the pixel-blend triangle beside it and interpolation strips (k = 3) and random k-way mixes
    (k > 3), class-conditional mixes when `mixer` and labels `y` are given (cfg.mixer == "class"). For the spiral
    toy (cfg.arch == "mlp", x [N, 2] or [N, 2, 1, 1] points) the spiral scatter plot. x: uint8 or [-1, 1] images
    [N, C, H, W].
    Returns uint8 [H, W, C]."""
    if getattr(cfg, "arch", "") == "mlp" or x.dim() == 2:
        x_rec, x_mix = spiral_mixes(ae, x, cfg, generator)
        title = f"{getattr(cfg, 'mixer', '')} k={getattr(cfg, 'k', 2)} beta={getattr(cfg, 'beta', 0.0)}"
        return spiral_plot([(title, to_unit(x).flatten(1).cpu(), x_mix)])
    n = min(8, x.shape[0])
    if n < 2:
        raise ValueError(f"training_grid needs at least 2 images to mix; got {x.shape[0]}")
    x = x[:n]
    half = max(1, n // 2)
    x_a, x_b = x[:half], x.roll(-half, 0)[:half]  # pairs (i, i + n/2)
    kind, k = getattr(cfg, "mixer", "mixup"), int(getattr(cfg, "k", 2))
    panels = [reconstructions(ae, x, cfg)]
    if kind == "class" and mixer is not None and y is not None:
        y_mix = class_label_paths(y[:half], y.roll(-half, 0)[:half], int(getattr(cfg, "num_classes", 10)))
        for i in range(half):  # each pair with its own label path
            panels.append(class_mixes(ae, mixer, x_a[i : i + 1], x_b[i : i + 1], y_mix[i], cfg))
    elif kind == "bernoulli" and k == 2:
        panels.append(bernoulli_strips(ae, x_a, x_b, cfg, generator))
    elif kind in ("cutmix", "spatial_bernoulli") and n >= k:
        xs = torch.stack([x.roll(-j * max(1, n // k), 0)[: min(half, 4)] for j in range(k)])  # [K, N', C, H, W]
        panels.append(spatial_mixes(ae, xs, cfg, generator, n_mix=8, mode=kind))
    elif k == 3 and kind in ("mixup", "bernoulli") and n >= 3:
        panels.append(triangle_grid(ae, x[:3], cfg, steps=6, mode=kind, generator=generator, pixel=True))
        panels.append(interpolation_strips(ae, x_a, x_b, cfg))
    elif k > 3 and kind in ("mixup", "bernoulli") and n >= k:
        xs = torch.stack([x.roll(-j, 0)[:2] for j in range(k)])  # [K, 2, C, H, W]
        panels.append(kway_mixes(ae, xs, cfg, generator, n_mix=6, mode=kind))
    else:
        panels.append(interpolation_strips(ae, x_a, x_b, cfg))
    return stack_panels(panels)


def grid_images(root: Path, split: str, num_samples: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The n images of samples-*.png: evenly spaced over the split (splits may be sorted by class, e.g. dSprites'
    valid), dealt round-robin over their labels so that the first three (the k = 3 triangle) and the pairs
    (i, i + n/2) of the strips mix different classes where the split has them. -> (x [n, ...], y [n])."""
    want = set(torch.linspace(0, max(num_samples - 1, 0), n).round().long().tolist())
    xs, ys, seen = [], [], 0
    for b in eval_loader(root, split, 256, rank=0, world_size=1):
        for i in range(len(b["y"])):
            if seen + i in want:
                xs.append(b["x"][i])
                ys.append(int(b["y"][i]))
        seen += len(b["y"])
        if seen > max(want):
            break
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(ys):
        by_label.setdefault(label, []).append(i)
    queues, order = list(by_label.values()), []
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    return torch.stack([xs[i] for i in order]), torch.tensor([ys[i] for i in order])
