"""`amr-fast bench kernels|data|train|classify`: side-by-side benchmarks that print a table and write JSON.

One module per target in this package (`kernels`, `data`, `train` with `reference` and `train_e2e`, `classify`;
`common` holds what they share); each target defines `configure_parser(parser)` and `main(args)`. The benchmarks
import the trainers' own steps and builders; nothing outside this package imports it (but the CLI). Speed claims
are ratios measured in one run (ours vs the reference path, or vs a memory copy), never absolute timings in tests.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "kernels": ("amr_fast.bench.kernels", "mixing ops: every impl vs a same-size Tensor.copy_"),
    "data": ("amr_fast.bench.data", "training stream samples/s vs PNG files through a torch DataLoader"),
    "train": ("amr_fast.bench.train", "training images/s: fast path vs reference mixing path"),
    "classify": ("amr_fast.bench.classify", "classifier training images/s: ERM vs input mixup vs manifold mixup"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for name, (module, desc) in BENCHES.items():
        p = sub.add_parser(name, help=desc, description=desc, formatter_class=parser.formatter_class)
        importlib.import_module(module).configure_parser(p)


def main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(BENCHES[args.bench][0]).main(args) or 0)
