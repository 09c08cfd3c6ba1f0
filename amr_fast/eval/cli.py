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

from amr_fast.checkpoint import load_snapshot
from amr_fast.eval.metrics import METRICS, evaluate, format_table, resolve_target

DEFAULT_METRICS = "probe,recon"  # factorvae/betavae are added for datasets with dSprites factors


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
