"""The offline linear probe on frozen codes (AMR, Beckham et al. NeurIPS 2019, section 4.1, tables 1-3).

During training the online probe (`nets["probe"]`, fed detached codes) reports its best validation accuracy.
Offline, after training, a fresh linear classifier is fitted on the frozen codes of the whole train split and
scored on the test split: the codes are standardised with the train split's mean and std and the multinomial
logistic regression is solved by full-batch L-BFGS with a small L2 penalty (deterministic, no learning-rate
schedule to tune). `fit_linear` is also the classifier of the beta-VAE metric (`amr_fast.eval.disentangle`).
`fit_mlp` is the nonlinear counterpart (one hidden layer): it tells "the code holds y, but not linearly" (an
autoencoder's dSprites code usually holds shape that way) from "the code has lost y". `probe_accuracy` scores the
online probe during training: its exact accuracy on a whole split, shared over the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from amr_fast import progress
from amr_fast.data import eval_loader, load_index
from amr_fast.data.images import to_unit
from amr_fast.models.base import to_channels_last


@dataclass
class LinearClassifier:
    """softmax(((f - mean) / std) @ weight.T + bias): mean/std [D], weight [K, D], bias [K]."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return ((f.float() - self.mean) / self.std) @ self.weight.t() + self.bias

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        return self.logits(f).argmax(dim=1)

    def accuracy(self, f: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(f) == y.long()).float().mean()) if len(y) else float("nan")


def fit_linear(
    f: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 500, l2: float = 1e-4, seed: int = 0
) -> LinearClassifier:
    """Multinomial logistic regression of y [N] (0..num_classes-1) on features f [N, D], standardised; full-batch
    L-BFGS for at most `steps` iterations; l2 penalises the weights (keeps separable data bounded)."""
    f, y = f.float().flatten(1), y.long()
    if len(f) != len(y) or len(f) == 0:
        raise ValueError(f"fit_linear needs as many labels as feature rows (> 0); got {len(f)} rows, {len(y)} labels")
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    mean, std = f.mean(dim=0), f.std(dim=0).clamp_min(1e-6)
    z = (f - mean) / std
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, f.shape[1], generator=g) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.t() + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearClassifier(mean, std, weight.detach(), bias.detach())


def fit_mlp(
    f: torch.Tensor, y: torch.Tensor, num_classes: int, hidden: int = 256, steps: int = 1000, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A one-hidden-layer ReLU classifier of y [N] on standardised features f [N, D], full-batch Adam (lr 1e-2) for
    `steps` steps; returns predict(f) -> labels [N]."""
    f, y = f.float().flatten(1), y.long()
    if len(f) != len(y) or len(f) == 0:
        raise ValueError(f"fit_mlp needs as many labels as feature rows (> 0); got {len(f)} rows, {len(y)} labels")
    mean, std = f.mean(dim=0), f.std(dim=0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG state alone
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(f.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
        )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    z = (f - mean) / std
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(z), y).backward()
            opt.step()

    @torch.no_grad()
    def predict(g: torch.Tensor) -> torch.Tensor:
        return net((g.float().flatten(1) - mean) / std).argmax(dim=1)

    return predict


def encode_batches(
    encode: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen codes of a loader's batches (dicts with uint8 "x" [N, C, H, W] and "y"): x is scaled to [-1, 1],
    encoded without grad and flattened -> (h [N, D] float32 CPU, y [N] int64); stops after `limit` examples."""
    hs, ys, n = [], [], 0
    with torch.no_grad():
        for batch in batches:
            x = to_unit(batch["x"])
            hs.append(encode(x).detach().flatten(1).float().cpu())
            ys.append(torch.as_tensor(batch["y"]).long().flatten().cpu())
            n += len(x)
            if limit is not None and n >= limit:
                break
    if not hs:
        raise ValueError("the split yielded no batches: check --data and that the split exists in its index.json")
    h, y = torch.cat(hs), torch.cat(ys)
    return (h[:limit], y[:limit]) if limit is not None else (h, y)


def offline_probe(
    h_train: torch.Tensor, y_train: torch.Tensor, h_test: torch.Tensor, y_test: torch.Tensor, num_classes: int
) -> dict:
    """Fit on the train codes, score on the test codes -> {"train_acc", "test_acc", "n_train", "n_test", "dims"}."""
    clf = fit_linear(h_train, y_train, num_classes)
    return {
        "train_acc": clf.accuracy(h_train, y_train),
        "test_acc": clf.accuracy(h_test, y_test),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "dims": int(h_train.flatten(1).shape[1]),
    }


def code_probes(
    h_train: torch.Tensor, y_train: torch.Tensor, h_test: torch.Tensor, y_test: torch.Tensor, num_classes: int
) -> dict:
    """Test accuracy of the offline linear probe and of the MLP probe fitted on the same train codes."""
    mlp = fit_mlp(h_train, y_train, num_classes)
    return {
        "linear": fit_linear(h_train, y_train, num_classes).accuracy(h_test, y_test),
        "mlp": float((mlp(h_test) == y_test.long()).float().mean()),
        "n_train": len(y_train),
        "n_test": len(y_test),
    }


EVAL_CACHE_BYTES = 1 << 30  # eval splits up to this size stay on the device between probe evaluations


def _eval_batches(root: Path, split: str, device, rank: int, world_size: int, cache: dict | None):
    """This rank's share of `split` as device batches (uint8 images, labels) of 1024. With `cache` (a dict the
    loop keeps), a split of at most EVAL_CACHE_BYTES is read from its shards once and kept on the device: the
    per-epoch probe of the paper presets then costs the encoder's forward pass only."""
    if cache is not None and split in cache:
        yield from cache[split]
        return
    kept, size = [], 0
    for b in eval_loader(root, split, 1024, rank=rank, world_size=world_size):
        xy = (b["x"].to(device, non_blocking=True), b["y"].to(device, non_blocking=True))
        size += xy[0].numel() * xy[0].element_size()
        if kept is not None and size <= EVAL_CACHE_BYTES:
            kept.append(xy)
        else:
            kept = None
        yield xy
    if cache is not None and kept is not None:
        cache[split] = kept


@torch.no_grad()
def probe_accuracy(ae, probe, root: Path, split: str, device, rank: int, world_size: int, autocast, cache=None,
                   channels_last: bool = False):  # fmt: skip
    """Exact accuracy of the online probe on a whole split: each rank classifies its share, counts are summed."""
    was_training = ae.training
    ae.eval()
    probe.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
    size = load_index(root)["splits"][split]["num_samples"]  # rank 0's bar counts every rank's (equal) share
    batches = ({"x": x, "y": y} for x, y in _eval_batches(root, split, device, rank, world_size, cache))
    for b in progress.counted(batches, size, f"online probe on {split}", rank == 0, share=world_size):
        x, y = to_unit(b["x"], device), b["y"]
        with autocast():
            logits = probe(ae.encode(to_channels_last(x) if channels_last else x).flatten(1))
        counts[0] += (logits.argmax(dim=1) == y.long()).sum()
        counts[1] += y.numel()
    if world_size > 1:
        dist.all_reduce(counts)
    ae.train(was_training)
    probe.train(was_training)
    correct, total = counts.tolist()
    return correct / total if total else math.nan
