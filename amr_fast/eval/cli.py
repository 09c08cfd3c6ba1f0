"""`amr-fast eval RUN_OR_SNAPSHOT [--metrics probe,factorvae,betavae,recon] [--data DIR]`: metrics of a snapshot.

The evaluation of AMR (Beckham et al., NeurIPS 2019, section 4): `probe` fits a fresh linear classifier on the
frozen codes of the train split and scores it on the test split (the valid split when there is no test split,
as for dSprites), next to the online probe's best validation accuracy recorded during training (tables 1-3);
`factorvae` / `factorvae-amr-public` / `betavae` score disentanglement against the dSprites factors (table 4;
`amr_fast.eval.disentangle`: `factorvae` is Kim & Mnih's metric over all five factors with their parameters,
`factorvae-amr-public` the AMR authors' own procedure, presumably table 4's); `recon` is the mean absolute and
squared reconstruction error on the test split, in [-1, 1] pixel units. Each metric appends one JSON line to
`metric-<name>.jsonl` in the run directory (next to the snapshot) and the command prints a table.
`amr-fast report` picks the lines up.

Examples:
    amr-fast eval runs/fm-mixup                                    # newest snapshot of the run, probe + recon
    amr-fast eval runs/demo/snapshot-0000040.000.safetensors --metrics factorvae,betavae,recon
"""

from __future__ import annotations

import argparse
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
from amr_fast.eval.report import Run, best_valid
from amr_fast.stats import read_jsonl

DEFAULT_METRICS = "probe,recon"  # factorvae/betavae are added for datasets with dSprites factors


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
        best = best_valid(Run(out_dir, {}, read_jsonl(out_dir / "stats.jsonl")))
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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="RUN_OR_SNAPSHOT", help="a run directory (its newest snapshot) or a snapshot file"
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated, from {','.join(METRICS)} (default: {DEFAULT_METRICS}, plus both FactorVAE protocols "
        "for dSprites)",
    )
    parser.add_argument("--data", default=None, help="dataset directory (default: the one in the snapshot's config)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda:0, ...")
    parser.add_argument("--limit", type=int, default=None, help="score the first N examples of each split (probe, "
                        "recon; default: all)")  # fmt: skip
    parser.add_argument(
        "--votes",
        type=int,
        default=None,
        help="votes (FactorVAE: kim-mnih fits on this many and scores on as many, amr-public votes this many in "
        "all) / points (beta-VAE) (default: the published 800 / 10000)",
    )
    parser.add_argument(
        "--pool", type=int, default=50000, help="train examples to draw factor-conditioned batches from"
    )
    parser.add_argument(
        "--vote-batch",
        type=int,
        default=None,
        help="images (pairs) per vote (default: the published 100 kim-mnih, 800 amr-public, 64 beta-VAE)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the metrics' random draws")


def main(args: argparse.Namespace) -> int:
    path, out_dir = resolve_target(args.target)
    snapshot = load_snapshot(path)  # read once, here
    metrics = args.metrics
    if metrics is None:
        data = str(args.data or snapshot[1]["config"].get("data", ""))
        metrics = DEFAULT_METRICS + (",factorvae,factorvae-amr-public" if "dsprites" in data else "")
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    results = evaluate(path, names, args.data, args.device, args.limit, args.votes, args.pool, args.seed,
                       args.vote_batch, snapshot)  # fmt: skip
    print(format_table(results))
    print(f"appended to {', '.join(str(out_dir / f'metric-{n}.jsonl') for n in results)}")
    return 0
