"""Disentanglement metrics against known generative factors (AMR, Beckham et al. NeurIPS 2019, table 4, dSprites).

- FactorVAE, two protocols (`factorvae(encode, sampler, protocol)`, `FACTORVAE_PROTOCOLS`):
  - `kim-mnih` (`factorvae_score`, ours): Kim & Mnih, "Disentangling by Factorising" (ICML 2018), section 4, the
    metric as published. Each vote fixes one factor k (drawn at random) at a random value, encodes a batch of L
    images that share it and draws the others at random, divides every code dimension by its standard deviation
    over the whole data, and votes (argmin_d of the normalised variances, k). A majority-vote classifier maps each
    dimension to its most voted factor; the score is its accuracy on held-out votes. Kim & Mnih's parameters are
    the defaults: L = 100 images per vote, 800 training and 800 evaluation votes, the per-dimension std estimated
    on 10000 images, collapsed dimensions pruned (they prune VAE dimensions that collapsed to the prior; a
    deterministic autoencoder has no prior: its collapsed dimensions are the constant ones, which would win every
    argmin, so a dimension is pruned when its std is below `prune` = 1e-6 times the largest std; every other
    dimension is divided by its own std, hence the score is invariant to rescaling code dimensions by any factors
    within a 10^6 range). ALL FIVE dSprites factors (shape, scale, orientation, posX, posY) are voted on and
    credited: a perfect code scores 1.0; chance is 1/5 = 0.2.
  - `amr-public` (`factorvae_public_score`): the AMR authors' procedure (their code's only FactorVAE, presumably
    table 4's). For every factor in turn, n_votes / F votes (160 of 800 for dSprites' five), each fixing that factor
    at a uniformly drawn value and encoding L = 800 images; every code dimension is divided by its (population) std
    over all the vote images together (no separate sample, no pruning: a constant dimension divides to NaN and
    numpy's argmin picks it); the vote is the argmin of the (population) variances. The score is the *training*
    accuracy of the factor -> most voted dimension rule on those same votes, summed over the factors but the last
    (the public loop credits `range(max label)`: no posY vote ever counts), over all votes: a perfect code scores
    (F - 1) / F = 0.8. Draws use numpy's legacy generator (`RandomState(seed)`, as the public code's `np.random`): a
    fixed value per vote, then the sampler's draws of the other factors.
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

import abc
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


class FactorSampler(abc.ABC):
    """Draws images conditioned on generative factors. Subclasses define `num_factors`, `sizes` (values per
    factor), `sample(n, rng)` (n images with every factor random), `sample_fixed(k, n, rng)` (n images sharing one
    random value of factor k, the others random), `sample_value(k, value, n, rng)` (the same for a given value
    index) and `sample_pairs(k, n, rng)` (n pairs, each pair sharing factor k). `rng`: a numpy Generator, or a
    legacy RandomState (the amr-public protocol)."""

    num_factors: int
    sizes: np.ndarray

    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor: ...

    @abc.abstractmethod
    def sample_fixed(self, k: int, n: int, rng: np.random.Generator) -> torch.Tensor: ...

    @abc.abstractmethod
    def sample_value(self, k: int, value: int, n: int, rng) -> torch.Tensor: ...

    @abc.abstractmethod
    def sample_pairs(self, k: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


def _integers(rng, high, size) -> np.ndarray:
    """Uniform integers in [0, high) from a numpy Generator or a legacy RandomState."""
    return rng.integers(0, high, size=size) if hasattr(rng, "integers") else rng.randint(0, high, size=size)


class ProductFactors(FactorSampler):
    """Independent uniform factors of the given sizes (dSprites: DSPRITES_SIZES), turned into images by
    `render(factor_classes int64 [n, F]) -> images [n, ...]`."""

    def __init__(self, sizes: Sequence[int], render: Callable[[np.ndarray], torch.Tensor]):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"factor sizes must be positive integers; got {list(sizes)}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.render = render
        self.num_factors = len(sizes)

    def _factors(self, n: int, rng) -> np.ndarray:
        return _integers(rng, self.sizes, (n, self.num_factors))  # [n, F]

    def sample(self, n, rng):
        return torch.as_tensor(self.render(self._factors(n, rng)))

    def sample_fixed(self, k, n, rng):
        f = self._factors(n, rng)
        f[:, k] = rng.integers(0, self.sizes[k])
        return torch.as_tensor(self.render(f))

    def sample_value(self, k, value, n, rng):
        f = self._factors(n, rng)
        f[:, k] = value
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
        self.sizes = np.array([len(values) for _, values, _, _ in self._groups])  # classes present per factor

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

    def sample_value(self, k, value, n, rng):
        order, _, start, count = self._groups[k]  # value: the index of a class present in the set
        return self.x[torch.as_tensor(order[start[value] + (rng.random(n) * count[value]).astype(np.int64)])]

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


def factorvae_public_score(
    encode: Encode, sampler: FactorSampler, seed: int = 0, n_votes: int = 800, batch_size: int = 800
) -> Score:
    """The AMR authors' FactorVAE procedure (module docstring, `amr-public`): n_votes // F votes per factor of
    batch_size images each; the score is the training accuracy of the factor -> most voted dimension rule, the
    last factor never credited. `train_accuracy` credits every factor (the same votes); details["votes"] holds
    every vote's dimension, in the order drawn."""
    rng = np.random.RandomState(seed)
    per_factor = n_votes // sampler.num_factors
    if per_factor < 1:
        raise ValueError(f"n_votes={n_votes} gives no vote per factor; use at least {sampler.num_factors}")
    factors = np.repeat(np.arange(sampler.num_factors), per_factor)  # [V]: every factor in turn
    z = np.stack(
        [
            _codes(encode, sampler.sample_value(int(k), int(rng.randint(0, sampler.sizes[k])), batch_size, rng))
            .float()
            .numpy()
            for k in factors
        ]
    )  # [V, L, D] float32, as the public code's numpy arrays
    with np.errstate(divide="ignore", invalid="ignore"):
        z = z / z.reshape(-1, z.shape[-1]).std(axis=0)  # population std over every vote image
        votes = z.var(axis=1).argmin(axis=1)  # [V]
    counts = np.zeros((z.shape[-1], sampler.num_factors), dtype=np.int64)  # votes per (dimension, factor)
    np.add.at(counts, (votes, factors), 1)
    best = counts.max(axis=0)  # [F]: the most voted dimension's count, per factor
    return Score(
        score=float(best[:-1].sum() / len(votes)),
        train_accuracy=float(best.sum() / len(votes)),
        details={
            "num_factors": sampler.num_factors,
            "credited_factors": sampler.num_factors - 1,
            "dims": z.shape[-1],
            "batch_size": batch_size,
            "n_train": len(votes),
            "n_eval": len(votes),
            "factor_to_dim": counts.argmax(axis=0).tolist(),
            "votes": votes.tolist(),
        },
    )


FACTORVAE_PROTOCOLS: dict[str, Callable[..., Score]] = {
    "kim-mnih": factorvae_score,
    "amr-public": factorvae_public_score,
}


def factorvae_counts(protocol: str, votes: int = 0, vote_batch: int = 0) -> dict:
    """Keyword arguments of `factorvae` for shorter runs: `votes` > 0 votes for fitting and as many for scoring
    (kim-mnih; the std then from max(500, 10 votes) images) or in all (amr-public), `vote_batch` > 0 images per
    vote; 0 keeps the protocol's published count (kim-mnih 800 + 800 votes of 100, amr-public 800 of 800)."""
    kw = {"batch_size": vote_batch} if vote_batch else {}
    if votes and protocol == "amr-public":
        kw["n_votes"] = votes
    elif votes:
        kw.update(n_train=votes, n_eval=votes, n_std=max(500, 10 * votes))
    return kw


def factorvae(encode: Encode, sampler: FactorSampler, protocol: str = "kim-mnih", seed: int = 0, **kw) -> Score:
    """The FactorVAE score under `protocol` (FACTORVAE_PROTOCOLS); kw: that protocol's vote counts."""
    if protocol not in FACTORVAE_PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(FACTORVAE_PROTOCOLS)}; got {protocol!r}")
    score = FACTORVAE_PROTOCOLS[protocol](encode, sampler, seed=seed, **kw)
    score.details["protocol"] = protocol
    return score


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
