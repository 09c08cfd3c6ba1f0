"""THE SPEC: the reference mixing ops, their argument checks and the samplers, in plain torch, written like the
papers' equations. Three parts, in this order: `check_mix_args` (the errors every impl raises, ref, torch and
triton alike), the reference ops `simplex_mix` / `mask_mix`, and the samplers of partners, weights and masks
(`sample_*`, with the code-grid helpers of the spatial masks).

Every fast path (`amr_fast.kernels`, impl "torch" and "triton") is tested against `simplex_mix` and `mask_mix`
here. Both papers' mixes are one operation over k partners of each example b in the batch:

    out[b] = sum_k  W[b, k] * h[perm[k, b]]                         (simplex_mix: W = w[b, k], a scalar)
    out[b, c] = sum_k  m[b, k, c] * h[perm[k, b], c]                (mask_mix: a weight per channel c)
    out[b, c, s] = sum_k  m[b, k, c, s] * h[perm[k, b], c, s]       (mask_mix: per channel and/or position)

mask_mix takes m [B, K, C] (per channel, the Bernoulli mixers) or m [B, K, *M] with one entry of M per dim of
h's [C, *S], each 1 (broadcast) or that dim's size: [B, K, 1, *S] a mask over positions (CutMix), [B, K, C, *S]
one weight per element.

- AMR (Beckham et al., NeurIPS 2019, section 2): mixup `a h1 + (1 - a) h2`, a ~ U(0, 1) per example;
  Bernoulli mixup `m h1 + (1 - m) h2` with a 0/1 mask per feature map, m ~ Bern(p), p ~ U(0, 1) per batch
  (as the public code); k-way mixup with w ~ Dirichlet(1, ..., 1); k-way Bernoulli, each feature map from one
  of k sources, uniform and independent per (example, feature map) as the public code (a Dirichlet variant too).
- Spatial mixing (the AMR paper's closing proposal, section 5: CutMix, Yun et al. ICCV 2019, on hidden states):
  `sample_cutmix_masks` takes a box of the code's grid from the partner, `sample_position_bernoulli_masks` each
  position from one of k sources (the per-position counterpart of Bernoulli mixup); both are one-hot masks over
  positions, mixed by `mask_mix` with m [B, K, 1, *S].
- Manifold Mixup (Verma et al., ICML 2019, eq. 2): `lam h + (1 - lam) h[perm]`, lam ~ Beta(alpha, alpha) per
  batch; labels are mixed by the same call on one-hot targets `[B, num_classes]`.

Every sampler takes a `torch.Generator`, so a seeded generator reproduces the draw exactly.
"""

from __future__ import annotations

import torch

from amr_fast.config import KWAY_SOURCES  # how k-way Bernoulli (k >= 3) picks each channel's source

# ---------------------------------------------------------------------------------------------------------------
# Argument checks shared by every impl (ref, torch, triton).


def check_mix_args(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, kind: str) -> None:
    """Raise TypeError / ValueError naming the argument and the expected shape. kind: "simplex" or "mask"."""
    wname = "w" if kind == "simplex" else "m"
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        got = h.dtype if isinstance(h, torch.Tensor) else type(h).__name__
        raise TypeError(f"h must be a floating-point tensor [B, C, *S]; got {got}")
    if h.dim() < 2:
        raise ValueError(f"h must have shape [B, C, *S] (at least 2 dims); got shape {tuple(h.shape)}")
    B, C = h.shape[0], h.shape[1]
    if not isinstance(perm, torch.Tensor) or perm.dtype.is_floating_point or perm.dtype == torch.bool:
        got = perm.dtype if isinstance(perm, torch.Tensor) else type(perm).__name__
        raise TypeError(f"perm must be an integer tensor [K, B] of partner indices; got {got}")
    if perm.dim() != 2 or perm.shape[1] != B:
        raise ValueError(f"perm must have shape [K, B] = [K, {B}] (B from h); got shape {tuple(perm.shape)}")
    K = perm.shape[0]
    if K < 2:
        raise ValueError(f"perm must have K >= 2 rows (k-way mixing needs at least 2 partners); got K = {K}")
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        got = weights.dtype if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise TypeError(f"{wname} must be a floating-point tensor; got {got}")
    expected = (B, K) if kind == "simplex" else (B, K, C)
    if tuple(weights.shape) != expected and not (kind == "mask" and _is_broadcast_mask(weights.shape, h.shape, K)):
        names = "[B, K]" if kind == "simplex" else "[B, K, C]"
        full = "" if kind == "simplex" or h.dim() == 2 else f", or [B, K, *M] with M each 1 or {list(h.shape[1:])}"
        raise ValueError(
            f"{wname} must have shape {names} = {list(expected)}{full} (B, C, S from h, K from perm); "
            f"got shape {tuple(weights.shape)}"
        )
    if weights.device != h.device or perm.device != h.device:
        raise ValueError(f"h, perm and {wname} must be on one device; got {h.device}, {perm.device}, {weights.device}")
    if perm.device.type == "cpu" and B > 0 and not torch.compiler.is_compiling():
        # Each row must be a permutation of 0..B-1: the backward pass gathers through the inverse permutation.
        # Checked on CPU only, where it costs no device sync, and not while torch.compile traces (it reads values).
        if not torch.equal(perm.sort(dim=1).values, torch.arange(B).expand(K, B)):  # one test when all is well
            if perm.min() < 0 or perm.max() >= B:
                raise ValueError(
                    f"perm values must lie in [0, {B}) (row indices of h); got [{perm.min()}, {perm.max()}]"
                )
            raise ValueError("each row of perm must be a permutation of 0..B-1 (no repeated partner indices)")


def _is_broadcast_mask(shape: torch.Size, h_shape: torch.Size, K: int) -> bool:
    """m [B, K, *M]: one entry per dim of h's [C, *S], each 1 (broadcast) or that dim's size."""
    return (
        len(shape) == len(h_shape) + 1
        and tuple(shape[:2]) == (h_shape[0], K)
        and all(m in (1, n) for m, n in zip(shape[2:], h_shape[1:]))
    )


def full_mask(m: torch.Tensor, h_dim: int) -> torch.Tensor:
    """m [B, K, C] (per channel) -> [B, K, C, 1, ...] (a view); m [B, K, *M] unchanged: rank h_dim + 1."""
    return m.reshape(*m.shape, *([1] * (h_dim + 1 - m.dim())))


# ---------------------------------------------------------------------------------------------------------------
# The ops.


def _acc_dtype(h: torch.Tensor, weights: torch.Tensor) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs; float64 when h or the weights are float64 (gradcheck)."""
    return torch.promote_types(torch.promote_types(h.dtype, weights.dtype), torch.float32)


def simplex_mix(h: torch.Tensor, perm: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k w[b, k] * h[perm[k, b]].  h [B, C, *S], perm [K, B], w [B, K] -> [B, C, *S]."""
    check_mix_args(h, perm, w, "simplex")
    acc = _acc_dtype(h, w)
    h_k = h[perm.long()].to(acc)  # [K, B, C, *S]: the k-th partner of every example
    w_k = w.t().to(acc).reshape(*w.t().shape, *([1] * (h.dim() - 1)))  # [K, B, 1, ...]
    return (w_k * h_k).sum(dim=0).to(h.dtype)  # accumulate in fp32 (or wider), return h's dtype


def mask_mix(h: torch.Tensor, perm: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """out[b] = sum_k m[b, k] * h[perm[k, b]], m broadcast over h's [C, *S].  h [B, C, *S], perm [K, B],
    m [B, K, C] (per channel) or [B, K, *M] (M each 1 or h's size: [B, K, 1, *S] per position) -> [B, C, *S]."""
    check_mix_args(h, perm, m, "mask")
    acc = _acc_dtype(h, m)
    h_k = h[perm.long()].to(acc)  # [K, B, C, *S]
    m_k = full_mask(m, h.dim()).transpose(0, 1).to(acc)  # [K, B, *M], broadcast against [K, B, C, *S]
    return (m_k * h_k).sum(dim=0).to(h.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Samplers. Each returns tensors on `device` (default: the generator's device).


def _dev(generator: torch.Generator, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else generator.device


def sample_perm(k: int, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Partners perm [K, B]: row 0 the identity (each example mixes with itself first), rows 1..K-1 independent
    random permutations of the batch."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to mix (got k = {k})")
    dev = _dev(generator, device)
    rows = [torch.arange(batch, device=generator.device)]
    rows += [torch.randperm(batch, generator=generator, device=generator.device) for _ in range(k - 1)]
    return torch.stack(rows).to(dev)


def sample_uniform_weights(batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """AMR mixup (k = 2): a ~ U(0, 1) per example; w = [a, 1 - a]  -> [B, 2]."""
    a = torch.rand(batch, generator=generator, device=generator.device)
    return torch.stack([a, 1 - a], dim=1).to(_dev(generator, device))


def sample_gamma(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) draws from a seeded generator (Marsaglia & Tsang 2000; alpha < 1 by the boost
    Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha)). torch.distributions takes no generator, hence this."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (got {alpha})")
    dev = generator.device
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    n = int(torch.tensor(shape).prod()) if shape else 1
    out = torch.empty(n, dtype=torch.float64, device=dev)
    todo = torch.arange(n, device=dev)
    while todo.numel() > 0:  # vectorised rejection: acceptance is > 95% per round
        x = torch.randn(todo.numel(), generator=generator, device=dev, dtype=torch.float64)
        u = torch.rand(todo.numel(), generator=generator, device=dev, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if alpha < 1:
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        out = out * u.pow(1.0 / alpha)
    return out.reshape(shape).float()


def sample_dirichlet_weights(batch: int, k: int, alpha: float, generator: torch.Generator, device=None) -> torch.Tensor:
    """k-way mixup: w ~ Dirichlet(alpha * 1_K) per example -> [B, K] on the simplex."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to mix (got k = {k})")
    g = sample_gamma(alpha, (batch, k), generator)
    g = g.clamp_min(torch.finfo(torch.float32).tiny)  # tiny alpha can underflow every draw of a row to 0
    return (g / g.sum(dim=1, keepdim=True)).to(_dev(generator, device))


def sample_beta_weights(
    batch: int, alpha: float, generator: torch.Generator, per_example: bool = False, device=None
) -> torch.Tensor:
    """Manifold Mixup: lam ~ Beta(alpha, alpha), one per batch (the paper) or per example; w = [lam, 1 - lam]."""
    n = batch if per_example else 1
    g = sample_gamma(alpha, (n, 2), generator).clamp_min(torch.finfo(torch.float32).tiny)
    lam = (g[:, 0] / g.sum(dim=1)).expand(batch)
    return torch.stack([lam, 1 - lam], dim=1).to(_dev(generator, device))


def sample_bernoulli_masks(
    batch: int, channels: int, generator: torch.Generator, per_example: bool = False, device=None
) -> torch.Tensor:
    """Bernoulli mixup (k = 2): p ~ U(0, 1) per batch (the public AMR code) or per example, m ~ Bern(p) per
    channel; returned one-hot over the two sources as [B, 2, C]: m[:, 0] = m, m[:, 1] = 1 - m."""
    dev = generator.device
    p = torch.rand(batch if per_example else 1, 1, generator=generator, device=dev).expand(batch, channels)
    m = (torch.rand(batch, channels, generator=generator, device=dev) < p).float()
    return torch.stack([m, 1 - m], dim=1).to(_dev(generator, device))


def sample_kway_bernoulli_masks(
    batch: int,
    k: int,
    channels: int,
    generator: torch.Generator,
    per_example: bool = False,
    device=None,
    sources: str = "uniform",
) -> torch.Tensor:
    """k-way Bernoulli: each channel taken from one of K sources, as a one-hot [B, K, C].

    sources (K >= 3): "uniform" (default; the public AMR code's `threegan` / `kgan` with mixer=fm, table 4's
    "Bern, k=3"): the source of every (example, channel) is uniform over the K sources and independent, so each
    source's share of a batch is 1/K +- sqrt((K - 1) / (B C)) / K. "dirichlet": source probabilities p ~
    Dirichlet(1_K) per batch (or per example), then source ~ Categorical(p) per channel: the shares vary far more
    from batch to batch. K = 2 is Bernoulli mixup whatever `sources` says: p ~ U(0, 1) per batch (or per example),
    m ~ Bern(p) per channel (the public code's fm2; Dirichlet(1, 1) is U(0, 1)), as `sample_bernoulli_masks`."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to mix (got k = {k})")
    if sources not in KWAY_SOURCES:
        raise ValueError(f"sources must be one of {', '.join(KWAY_SOURCES)}; got {sources!r}")
    dev = generator.device
    if k >= 3 and sources == "uniform":
        src = torch.randint(0, k, (batch, channels), generator=generator, device=dev)  # [B, C]
    else:
        n = batch if per_example else 1
        p = sample_gamma(1.0, (n, k), generator).to(dev)
        p = (p / p.sum(dim=1, keepdim=True)).expand(batch, k)
        cdf = p.cumsum(dim=1)  # [B, K]
        u = torch.rand(batch, channels, 1, generator=generator, device=dev)
        src = (u > cdf[:, None, :]).sum(dim=2).clamp_max(k - 1)  # [B, C] index of the source of each channel
    onehot = torch.nn.functional.one_hot(src, k).float()  # [B, C, K]
    return onehot.transpose(1, 2).contiguous().to(_dev(generator, device))  # [B, K, C]


# ---------------------------------------------------------------------------------------------------------------
# Spatial mixing: masks over the positions of a code's grid (the AMR paper's section 5 proposal; CutMix, Yun et
# al. 2019). The samplers return one-hot masks [B, K, *grid]; `position_mask` places them for `mask_mix`.


def code_grid(code_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid that spatial mixing cuts, from a code's shape [C, *S]: S for a feature map; for a vector code
    [C] (dsprites64, mlp) its C units as a 1-D grid, so a "box" is a run of consecutive code units."""
    return tuple(code_shape[1:]) if len(code_shape) > 1 else tuple(code_shape)


def position_mask(masks: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Masks [B, K, *grid] over `code_grid(h.shape[1:])` -> the mask_mix argument: [B, K, 1, *S] (the same
    source for every channel of a position) for a feature map h [B, C, *S], [B, K, C] for a vector code."""
    return masks.unsqueeze(2) if h.dim() > 2 else masks


def sample_boxes(lam: torch.Tensor, grid: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One axis-aligned box per example with area fraction lam [B] of the grid in expectation: side n_d lam^(1/D)
    on each of the D axes, rounded up or down to whole cells at random (stochastic rounding: each side is unbiased,
    and so is their product, the area), placed uniformly among the positions where it fits (no clipping at the
    border, which would shrink boxes) -> bool [B, *grid]."""
    dev = generator.device
    lam = lam.to(dev, torch.float64)
    inside = torch.ones(lam.shape[0], *grid, dtype=torch.bool, device=dev)
    for d, n in enumerate(grid):
        u = torch.rand(lam.shape[0], generator=generator, device=dev, dtype=torch.float64)
        side = (n * lam.pow(1.0 / len(grid)) + u).floor().clamp(0, n).long()  # [B], E[side] = n lam^(1/D)
        start = torch.rand(lam.shape[0], generator=generator, device=dev, dtype=torch.float64) * (n - side + 1)
        start = start.long().clamp_max(n - side)  # [B], uniform over 0..n - side
        i = torch.arange(n, device=dev).view(1, *([1] * d), n, *([1] * (len(grid) - d - 1)))  # along axis d
        view = (-1, *([1] * len(grid)))
        inside &= (i >= start.view(view)) & (i < (start + side).view(view))
    return inside


def sample_cutmix_masks(
    batch: int, k: int, grid: tuple[int, ...], alpha: float, generator: torch.Generator, device=None
) -> torch.Tensor:
    """CutMix in code space. k = 2: each example keeps its own code (source 0) except one box of area fraction
    lam ~ Beta(alpha, alpha) (alpha = 1: U(0, 1); `sample_boxes`), taken from its partner (source 1). k > 2,
    nested boxes: CutMix applied k - 1 times in order, source j = 1..k-1 pasting its own box (lam_j drawn the
    same way) over what is there, so later sources cover earlier ones. One-hot [B, K, *grid] (float)."""
    if k < 2:
        raise ValueError(f"k must be >= 2 to mix (got k = {k})")
    src = torch.zeros(batch, *grid, dtype=torch.long, device=generator.device)  # source of each position
    for j in range(1, k):
        lam = sample_beta_weights(batch, alpha, generator, per_example=True)[:, 0]  # [B]
        src[sample_boxes(lam, grid, generator)] = j
    onehot = torch.nn.functional.one_hot(src, k).float()  # [B, *grid, K]
    return onehot.movedim(-1, 1).contiguous().to(_dev(generator, device))  # [B, K, *grid]


def sample_position_bernoulli_masks(
    batch: int, k: int, grid: tuple[int, ...], generator: torch.Generator, per_example: bool = False, device=None
) -> torch.Tensor:
    """Per-position (k-way) Bernoulli mixup, the DropBlock-like case: each position of the grid taken from one of
    k sources, drawn exactly as `sample_kway_bernoulli_masks` draws channels (k = 2: m ~ Bern(p), p ~ U(0, 1) per
    batch or example) -> one-hot [B, K, *grid]."""
    n = 1
    for size in grid:
        n *= size
    m = sample_kway_bernoulli_masks(batch, k, n, generator, per_example=per_example, device=device)  # [B, K, n]
    return m.view(batch, k, *grid)
