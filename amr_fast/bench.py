"""`amr-fast bench kernels|data|train|classify`: side-by-side benchmarks that print a table and write JSON.

Each benchmark lives next to what it measures (`amr_fast.kernels.bench`, `amr_fast.data.bench`,
`amr_fast.train_bench`); each module defines `configure_parser(parser)` and `main(args)`. Speed claims are ratios
measured in one run (ours vs the reference path, or vs a memory copy), never absolute timings in tests.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "kernels": ("amr_fast.kernels.bench", "mixing ops: every impl vs a same-size Tensor.copy_"),
    "data": ("amr_fast.data.bench", "training stream samples/s vs PNG files through a torch DataLoader"),
    "train": ("amr_fast.train_bench", "training images/s: fast path vs reference mixing path"),
    "classify": ("amr_fast.classify_bench", "classifier training images/s: ERM vs input mixup vs manifold mixup"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for name, (module, desc) in BENCHES.items():
        p = sub.add_parser(name, help=desc, description=desc, formatter_class=parser.formatter_class)
        importlib.import_module(module).configure_parser(p)


def main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(BENCHES[args.bench][0]).main(args) or 0)
