"""Disentanglement metrics against known generative factors (AMR, Beckham et al. NeurIPS 2019, table 4, dSprites).

- `factorvae_score`: Kim & Mnih, "Disentangling by Factorising" (ICML 2018), section 4. Each vote fixes one
  factor k at a random value, encodes a batch of L images that share it and draws the others at random, divides
  every code dimension by its standard deviation over the whole data, and votes (argmin_d of the normalised
  variances, k). A majority-vote classifier maps each dimension to its most voted factor; the score is its
  accuracy on held-out votes. Kim & Mnih's parameters are the defaults: L = 100 images per vote, 800 training
  and 800 evaluation votes, the per-dimension std estimated on 10000 images, collapsed dimensions pruned (they
  prune VAE dimensions that collapsed to the prior; a deterministic autoencoder has no prior: its collapsed
  dimensions are the constant ones, which would win every argmin, so a dimension is pruned when its std is below
  `prune` = 1e-6 times the largest std; every other dimension is divided by its own std, hence the score is
  invariant to rescaling code dimensions by any factors within a 10^6 range).
  ALL FIVE dSprites factors (shape, scale, orientation, posX, posY) take part. The public AMR code looped over
  `range(len(factors) - 1)`, silently skipping posY: an encoder could then at most be right on 4 of the 5
  factors a complete metric asks about, so its scores are not comparable with ours (a perfect code scores 1.0
  here; chance is 1/5 = 0.2).
- `betavae_score`: Higgins et al., "beta-VAE" (ICLR 2017), section 3: each vote draws L pairs of images sharing
  factor k, and the feature is the mean absolute difference of their codes; a linear (logistic regression)
  classifier predicts k from it; the score is its held-out accuracy. Defaults as disentanglement_lib: L = 64,
  10000 training and 5000 evaluation points (smaller for quick runs via the arguments).

Both take an `encode` callable (images -> codes [N, ...], flattened to [N, D]) and a `FactorSampler`, so they are
tested with an oracle encoder that returns the true factors. Two samplers: `ProductFactors` (every factor drawn
independently and rendered, e.g. by the procedural dSprites renderer of `amr_fast.data`) and `IndexedFactors`
(a finite labelled set such as an eval split's `factor_classes`: conditioning picks examples sharing the value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from amr_fast import progress
from amr_fast.data import procedural
from amr_fast.eval.probe import fit_linear

DSPRITES_FACTORS = ("shape", "scale", "orientation", "posX", "posY")
DSPRITES_SIZES = (3, 6, 40, 32, 32)

Encode = Callable[[torch.Tensor], torch.Tensor]


class FactorSampler:
    """Draws images conditioned on generative factors. Subclasses define `num_factors`, `sample(n, rng)` (n images
    with every factor random) and `sample_fixed(k, n, rng)` (n images sharing one random value of factor k, the
    others random) and `sample_pairs(k, n, rng)` (n pairs, each pair sharing factor k)."""

    num_factors: int

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sample_fixed(self, k: int, n: int, rng: np.random.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sample_pairs(self, k: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class ProductFactors(FactorSampler):
    """Independent uniform factors of the given sizes (dSprites: DSPRITES_SIZES), turned into images by
    `render(factor_classes int64 [n, F]) -> images [n, ...]`."""

    def __init__(self, sizes: Sequence[int], render: Callable[[np.ndarray], torch.Tensor]):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"factor sizes must be positive integers; got {list(sizes)}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.render = render
        self.num_factors = len(sizes)

    def _factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.sizes, size=(n, self.num_factors))  # [n, F]

    def sample(self, n, rng):
        return torch.as_tensor(self.render(self._factors(n, rng)))

    def sample_fixed(self, k, n, rng):
        f = self._factors(n, rng)
        f[:, k] = rng.integers(0, self.sizes[k])
        return torch.as_tensor(self.render(f))

    def sample_pairs(self, k, n, rng):
        f1, f2 = self._factors(n, rng), self._factors(n, rng)
        f2[:, k] = f1[:, k]
        return torch.as_tensor(self.render(f1)), torch.as_tensor(self.render(f2))


def procedural_dsprites(size: int = 64, style: str = "dsprites-procedural") -> ProductFactors:
    """The five dSprites factors rendered on demand by `amr_fast.data.procedural` (exact conditioning; the constant
    colour factor is fixed), images uint8 [n, 1, size, size]; `style` the sprite size (procedural.DSPRITES_STYLES,
    the name of the built-in dataset)."""

    def render(classes: np.ndarray) -> torch.Tensor:  # [n, 5] (shape, scale, orientation, posX, posY)
        full = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], axis=1)
        return torch.from_numpy(procedural.render_dsprites(procedural.dsprites_index(full), size, style=style))

    return ProductFactors(DSPRITES_SIZES, render)


class IndexedFactors(FactorSampler):
    """A finite labelled set: images x [N, ...] with integer factor classes [N, F]. Conditioning on factor k picks
    a random example and draws the batch among the examples sharing its class of factor k (with replacement);
    factors whose class never varies (e.g. dSprites colour) can be dropped with `factors=`."""

    def __init__(
        self, x: torch.Tensor, factor_classes: np.ndarray | torch.Tensor, factors: Sequence[int] | None = None
    ):
        fc = np.asarray(factor_classes, dtype=np.int64)
        if fc.ndim != 2 or fc.shape[0] != len(x):
            raise ValueError(f"factor_classes must be [N, F] with N = len(x) = {len(x)}; got shape {fc.shape}")
        self.x = torch.as_tensor(x)
        self.fc = fc[:, list(factors)] if factors is not None else fc
        self.num_factors = self.fc.shape[1]
        # For every factor, the example indices grouped by class: sorted order + start of each group.
        self._groups = []
        for k in range(self.num_factors):
            order = np.argsort(self.fc[:, k], kind="stable")
            values, start, count = np.unique(self.fc[order, k], return_index=True, return_counts=True)
            self._groups.append((order, values, start, count))

    def _same_class(self, k: int, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each anchor index, a random index with the same class of factor k."""
        order, values, start, count = self._groups[k]
        cls = np.searchsorted(values, self.fc[anchors, k])
        return order[start[cls] + (rng.random(len(anchors)) * count[cls]).astype(np.int64)]

    def sample(self, n, rng):
        return self.x[torch.as_tensor(rng.integers(0, len(self.x), n))]

    def sample_fixed(self, k, n, rng):
        anchor = rng.integers(0, len(self.x), 1).repeat(n)
        return self.x[torch.as_tensor(self._same_class(k, anchor, rng))]

    def sample_pairs(self, k, n, rng):
        a = rng.integers(0, len(self.x), n)
        return self.x[torch.as_tensor(a)], self.x[torch.as_tensor(self._same_class(k, a, rng))]


@dataclass
class Score:
    """A metric's result: held-out accuracy (the score), training accuracy, and details for the JSON line."""

    score: float
    train_accuracy: float
    details: dict

    def as_dict(self) -> dict:
        return {"score": self.score, "train_accuracy": self.train_accuracy, **self.details}


def _codes(encode: Encode, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """encode in chunks, flattened to float64 [N, D] on the CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(torch.as_tensor(encode(x[i : i + batch])).detach().flatten(1).double().cpu())
    return torch.cat(out)


def _factorvae_votes(
    encode: Encode, sampler: FactorSampler, scale: torch.Tensor, active: torch.Tensor, n: int, L: int, rng
) -> np.ndarray:
    """n votes (argmin dimension among the active ones, factor) as int64 [n, 2]."""
    votes = np.empty((n, 2), dtype=np.int64)
    idx = torch.nonzero(active).flatten()
    for v in progress.bar(range(n), desc="FactorVAE votes", unit="vote"):
        k = int(rng.integers(0, sampler.num_factors))
        z = _codes(encode, sampler.sample_fixed(k, L, rng)) / scale  # [L, D], unit std over the data
        var = z[:, idx].var(dim=0, unbiased=True)
        votes[v] = (int(idx[int(var.argmin())]), k)
    return votes


def factorvae_score(
    encode: Encode,
    sampler: FactorSampler,
    seed: int = 0,
    batch_size: int = 100,
    n_train: int = 800,
    n_eval: int = 800,
    n_std: int = 10000,
    prune: float = 1e-6,
) -> Score:
    """Kim & Mnih's FactorVAE metric (module docstring). batch_size: L images per vote; n_train / n_eval: votes
    for fitting / scoring the majority-vote classifier; n_std: images for the per-dimension std; prune: relative
    std below which a dimension is ignored."""
    rng = np.random.default_rng(seed)
    z = _codes(encode, sampler.sample(n_std, rng))
    std = z.std(dim=0, unbiased=True)  # [D]
    active = std > prune * std.max()
    if not bool(active.any()):
        raise ValueError("every code dimension is constant over the data: the encoder collapsed; nothing to score")
    scale = torch.where(active, std, torch.ones_like(std))
    train = _factorvae_votes(encode, sampler, scale, active, n_train, batch_size, rng)
    held = _factorvae_votes(encode, sampler, scale, active, n_eval, batch_size, rng)
    counts = np.zeros((len(std), sampler.num_factors), dtype=np.int64)  # votes per (dimension, factor)
    np.add.at(counts, (train[:, 0], train[:, 1]), 1)
    classify = counts.argmax(axis=1)  # the majority factor of every dimension
    return Score(
        score=float((classify[held[:, 0]] == held[:, 1]).mean()),
        train_accuracy=float(counts.max(axis=1).sum() / n_train),
        details={
            "num_factors": sampler.num_factors,
            "active_dims": int(active.sum()),
            "dims": len(std),
            "batch_size": batch_size,
            "n_train": n_train,
            "n_eval": n_eval,
            "dim_to_factor": classify.tolist(),
        },
    )


def _betavae_features(encode: Encode, sampler: FactorSampler, n: int, L: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for _ in progress.bar(range(n), desc="beta-VAE points", unit="point"):
        k = int(rng.integers(0, sampler.num_factors))
        x1, x2 = sampler.sample_pairs(k, L, rng)
        feats.append((_codes(encode, x1) - _codes(encode, x2)).abs().mean(dim=0))
        labels.append(k)
    return torch.stack(feats).float(), torch.tensor(labels)


def betavae_score(
    encode: Encode,
    sampler: FactorSampler,
    seed: int = 0,
    batch_size: int = 64,
    n_train: int = 10000,
    n_eval: int = 5000,
    steps: int = 500,
) -> Score:
    """Higgins et al.'s beta-VAE metric (module docstring): logistic regression (L-BFGS on standardised features,
    `steps` iterations) from the mean |z1 - z2| over `batch_size` pairs to the shared factor."""
    rng = np.random.default_rng(seed)
    f_train, y_train = _betavae_features(encode, sampler, n_train, batch_size, rng)
    f_eval, y_eval = _betavae_features(encode, sampler, n_eval, batch_size, rng)
    clf = fit_linear(f_train, y_train, sampler.num_factors, steps=steps, seed=seed)
    return Score(
        score=clf.accuracy(f_eval, y_eval),
        train_accuracy=clf.accuracy(f_train, y_train),
        details={"num_factors": sampler.num_factors, "batch_size": batch_size, "n_train": n_train, "n_eval": n_eval},
    )
