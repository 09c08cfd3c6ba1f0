"""The metrics of a trained autoencoder (AMR, Beckham et al., NeurIPS 2019, section 4) and the library of
`amr-fast eval`: `evaluate` computes the chosen `METRICS` of a run's snapshot and appends each to
`metric-<name>.jsonl`; `make_encode` / `encode_codes` turn a split into codes, `recon_error` measures the
reconstruction, `factor_sampler` draws factor-conditioned dSprites batches for the disentanglement metrics.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amr_fast import data as amr_data
from amr_fast import progress
from amr_fast.checkpoint import latest_snapshot, load_networks, load_snapshot
from amr_fast.data.procedural import DSPRITES_STYLES
from amr_fast.eval import disentangle as dis
from amr_fast.eval.grids import decode
from amr_fast.eval.probe import encode_batches, offline_probe
from amr_fast.eval.report import RunRecord, best_valid
from amr_fast.stats import read_jsonl


def resolve_target(path: str | Path) -> tuple[Path, Path]:
    """(snapshot file, directory for metric-*.jsonl) from a run directory (its newest snapshot) or a snapshot."""
    path = Path(path)
    if path.is_dir():
        return latest_snapshot(path), path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory or a snapshot-<kimg>.safetensors")
    return path, path.parent


def data_root(cfg, override: str | None) -> Path:
    """--data, else the snapshot config's dataset (a builtin one is generated into the cache if missing)."""
    return Path(override) if override else amr_data.resolve_data_root(cfg.data, cfg.subset)


def make_encode(ae: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """images (uint8, or float in [-1, 1]) -> codes [N, D] float32 on the CPU, eval mode, no grad."""
    ae.eval()

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        return ae.encode(amr_data.to_unit(x, device)).flatten(1).float().cpu()

    return encode


def encode_codes(encode: Callable, root: Path, split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, labels) of the first `limit` images of a split (all without a limit), with a progress bar."""
    total = split_size(root, split, limit)
    batches = progress.counted(amr_data.eval_loader(root, split, 500), total, f"encoding {split}")
    return encode_batches(encode, batches, limit)


def _split(index: dict, *names: str) -> str:
    for name in names:
        if name in index["splits"]:
            return name
    raise ValueError(
        f"the dataset at {index['root']} has none of the splits {names}; re-create it with `amr-fast shard`"
    )


def factor_sampler(index: dict, cfg, pool: int, seed: int = 0):
    """Images conditioned on the dSprites factors: the procedural renderer of `amr_fast.data` for
    dsprites-procedural (exact conditioning), else up to `pool` examples of the train split with their
    factor_classes (`IndexedFactors`). dSprites' constant colour factor is dropped: five factors remain."""
    names = list(index.get("factor_names") or [])
    if not names:
        raise ValueError(
            f"the dataset {index.get('name')!r} has no generative factors; factorvae/betavae need dSprites "
            "(e.g. data=builtin:dsprites-procedural); use --metrics probe,recon"
        )
    keep = [i for i, n in enumerate(names) if n != "color"]
    if index.get("name") in DSPRITES_STYLES:
        return dis.procedural_dsprites(int(index.get("image_size") or cfg.img_size), index["name"])
    xs, fcs, n = [], [], 0
    for b in amr_data.eval_loader(index["root"], "train", 1000):
        if "factor_classes" not in b:
            raise ValueError(
                f"the dataset {index.get('name')!r} stores no factor_classes; re-create it with `amr-fast shard`"
            )
        xs.append(b["x"])
        fcs.append(b["factor_classes"])
        n += len(b["x"])
        if n >= pool:
            break
    return dis.IndexedFactors(torch.cat(xs)[:pool], torch.cat(fcs)[:pool].numpy(), factors=keep)


def recon_error(ae: torch.nn.Module, cfg, root: Path, split: str, device: torch.device, limit: int | None) -> dict:
    """Mean |x_rec - x| and (x_rec - x)^2 over a split (its first `limit` images), pixels in [-1, 1]."""
    l1 = l2 = 0.0
    n = 0
    total = split_size(root, split, limit)
    ae.eval()
    with torch.no_grad():
        for b in progress.counted(amr_data.eval_loader(root, split, 256), total, f"recon error on {split}"):
            x = amr_data.to_unit(b["x"][: total - n], device)
            x_rec = decode(ae, ae.encode(x), cfg)
            l1 += float((x_rec - x).abs().sum())
            l2 += float((x_rec - x).square().sum())
            n += len(x)
            if n >= total:
                break
    if n == 0:
        raise ValueError(f"split {split!r} is empty; check --data")
    per = n * int(np.prod(x.shape[1:]))
    return {"l1": l1 / per, "mse": l2 / per, "split": split, "n": n}


def split_size(root: Path, split: str, limit: int | None = None) -> int:
    """Images in a split of the dataset at `root` (at most `limit`)."""
    size = int(amr_data.load_index(root)["splits"][split]["num_samples"])
    return size if limit is None else min(size, limit)


def _online_probe(meta: dict, out_dir: Path) -> dict:
    """The online probe's figures recorded by training: the snapshot's metadata, else the run's stats.jsonl."""
    figures = meta.get("probe") if isinstance(meta.get("probe"), dict) else {}
    best = figures.get("best_valid_acc")
    if best is None and (out_dir / "stats.jsonl").is_file():
        best = best_valid(RunRecord(out_dir, {}, read_jsonl(out_dir / "stats.jsonl")))
    return {"online_best_valid_acc": best, "online_test_acc_at_best": figures.get("test_acc_at_best")}


@dataclass
class Target:
    """What the metrics read: the snapshot's autoencoder and config, its dataset, the command's options."""

    ae: torch.nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]  # make_encode(ae, device)
    cfg: object  # TrainConfig
    meta: dict  # the snapshot's metadata
    out_dir: Path
    root: Path
    index: dict
    device: torch.device
    limit: int | None = None
    votes: int | None = None
    pool: int = 50000
    seed: int = 0
    vote_batch: int | None = None

    @property
    def test_split(self) -> str:
        return _split(self.index, "test", "valid")


def _probe(t: Target) -> dict:
    if int(t.index.get("num_classes") or 0) < 2:
        raise ValueError(f"the dataset {t.index.get('name')!r} has no class labels; drop probe from --metrics")
    h_tr, y_tr = encode_codes(t.encode, t.root, "train", t.limit)
    h_te, y_te = encode_codes(t.encode, t.root, t.test_split, t.limit)
    res = offline_probe(h_tr, y_tr, h_te, y_te, int(t.index["num_classes"]))
    return {**res, "split": t.test_split, **_online_probe(t.meta, t.out_dir)}


def _factorvae(protocol: str) -> Callable[[Target], dict]:
    """The FactorVAE score under `protocol` (disentangle.FACTORVAE_PROTOCOLS); --votes / --vote-batch shorten it."""

    def compute(t: Target) -> dict:
        kw = dis.factorvae_counts(protocol, t.votes or 0, t.vote_batch or 0)
        sampler = factor_sampler(t.index, t.cfg, t.pool, t.seed)
        return dis.factorvae(t.encode, sampler, protocol, seed=t.seed, **kw).as_dict()

    return compute


def _betavae(t: Target) -> dict:
    """Higgins et al.'s metric; --votes sets its training and scoring points, --vote-batch its pairs per point."""
    kw = {} if t.votes is None else {"n_train": t.votes, "n_eval": t.votes}
    kw.update({} if t.vote_batch is None else {"batch_size": t.vote_batch})
    return dis.betavae_score(t.encode, factor_sampler(t.index, t.cfg, t.pool, t.seed), seed=t.seed, **kw).as_dict()


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _vote_details(name: str) -> Callable[[dict], str]:
    return lambda r: (
        f"{name} metric over {r['num_factors']} factors (train acc {r['train_accuracy']:.4f}, {r['n_train']} / "
        f"{r['n_eval']} votes of {r['batch_size']})"
    )


@dataclass(frozen=True)
class Metric:
    compute: Callable[[Target], dict]  # the metric's JSON line (before the common keys)
    value: Callable[[dict], str]  # its headline value, as printed
    details: Callable[[dict], str]  # what the value is


METRICS: dict[str, Metric] = {
    "probe": Metric(
        _probe,
        lambda r: _pct(r["test_acc"]),
        lambda r: (
            f"offline linear probe, {r['split']} accuracy (train {_pct(r['train_acc'])}, {r['n_train']} / "
            f"{r['n_test']} examples, {r['dims']}-dim code); online probe best valid "
            f"{_pct(r['online_best_valid_acc'])}, test at best {_pct(r['online_test_acc_at_best'])}"
        ),
    ),
    "factorvae": Metric(_factorvae("kim-mnih"), lambda r: f"{r['score']:.4f}", _vote_details("Kim & Mnih")),
    "factorvae-amr-public": Metric(
        _factorvae("amr-public"), lambda r: f"{r['score']:.4f}", _vote_details("AMR authors' FactorVAE (max 0.8)")
    ),
    "betavae": Metric(
        _betavae,
        lambda r: f"{r['score']:.4f}",
        _vote_details("Higgins et al."),
    ),
    "recon": Metric(
        lambda t: recon_error(t.ae, t.cfg, t.root, t.test_split, t.device, t.limit),
        lambda r: f"{r['l1']:.4f}",
        lambda r: f"mean |x_rec - x| on {r['split']} ({r['n']} images, [-1, 1] pixels); mse {r['mse']:.4f}",
    ),
}


def evaluate(
    target: str | Path,
    metrics: list[str],
    data: str | None = None,
    device: str = "cpu",
    limit: int | None = None,
    votes: int | None = None,
    pool: int = 50000,
    seed: int = 0,
    vote_batch: int | None = None,
    snapshot: tuple[dict, dict] | None = None,
) -> dict[str, dict]:
    """Compute `metrics` for a run directory or snapshot, append each to `metric-<name>.jsonl` next to it, and
    return {name: result}. limit: at most this many examples per split (probe, recon); votes / vote_batch: instead
    of the published counts, quick runs (`disentangle.factorvae_counts`; beta-VAE: this many training and as many
    scoring points, pairs per point); snapshot: `load_snapshot`'s result if the caller has it."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    path, out_dir = resolve_target(target)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    snapshot = snapshot or load_snapshot(path)
    nets, cfg = load_networks(path, dev, snapshot)
    if cfg.arch == "mlp":
        raise ValueError("this snapshot is the spiral toy (arch=mlp): plot it with `amr-fast report RUN --spiral FILE`")
    root = data_root(cfg, data)
    ae, index = nets["ae"], amr_data.load_index(root)
    t = Target(
        ae, make_encode(ae, dev), cfg, snapshot[1], out_dir, root, index, dev, limit, votes, pool, seed, vote_batch
    )
    results: dict[str, dict] = {}
    for name in metrics:
        t0 = time.time()
        res = {
            "metric": name,
            **METRICS[name].compute(t),
            "snapshot": str(path),
            "kimg": t.meta.get("kimg"),
            "seconds": round(time.time() - t0, 1),
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        with open(out_dir / f"metric-{name}.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        results[name] = res
    return results


def format_table(results: dict[str, dict]) -> str:
    """One line per metric: name, headline value, what it is."""
    lines = [f"{'metric':<10} {'value':>9}  details"]
    for name, r in results.items():
        lines.append(f"{name:<10} {METRICS[name].value(r):>9}  {METRICS[name].details(r)}")
    return "\n".join(lines)
