"""What the step benchmarks share: the CPU setup every trainer gets, the run's header, the precisions to measure,
and the JSON file."""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from amr_fast.precision import cpu_has_native_bf16, keep_freed_memory


def setup(args: argparse.Namespace) -> dict:
    """Give the bench the trainers' CPU settings (`keep_freed_memory`, `--threads`); the results' header."""
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def precisions(spec: str) -> list[str]:
    """`--precisions`: "auto" is fp32, plus bf16 where the CPU computes bf16 natively; else a list of fp32, bf16."""
    if spec == "auto":
        return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    out = [p.strip() for p in spec.split(",") if p.strip()]
    if not out or set(out) - {"fp32", "bf16"}:
        raise ValueError(f"--precisions takes fp32 and/or bf16 (or auto); got {spec!r}")
    return out


def names(spec: str, known: dict, what: str = "model") -> list[str]:
    """The comma-separated names of `spec`, each one of `known`."""
    out = [m.strip() for m in spec.split(",") if m.strip()]
    for name in out:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    return out


def write_json(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {path}")
