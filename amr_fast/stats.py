"""Cheap metric reporting: `report()` anywhere, reduce across ranks once per status tick (edm2 training_stats).

`report(name, value)` only accumulates a running sum and count on the value's device (no host sync, no
`.item()`); `Collector.tick()` reduces every accumulated name across ranks in ONE all-reduce, moves the means to
the host in one copy, and (on rank 0) appends one JSON line to `stats.jsonl` and prints one fixed-width status
line. Used by both trainers through `amr_fast.run`; `read_jsonl` reads the rows back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist

# name -> [sum (tensor on the value's device, float64), count (python int: known without a sync; a tensor on the
# value's device once a `keep` flag took part)]
_accum: dict[str, list] = {}


def report(name: str, value: torch.Tensor | float, keep: torch.Tensor | None = None) -> None:
    """Add `value` (a scalar or every element of a tensor) to the running mean of `name`. Never syncs. `keep`, a
    0/1 tensor on the value's device, counts the value only where it is 1 (a step skipped on the device)."""
    if isinstance(value, torch.Tensor):
        v = value.detach()
        s, n = v.double().sum(), v.numel()
        if keep is not None:
            s, n = torch.where(keep > 0, s, 0.0), keep.double() * n
    else:
        s, n = float(value), 1
    if isinstance(n, int) and n == 0:
        return
    acc = _accum.get(name)
    if acc is None:
        _accum[name] = [s.clone() if isinstance(s, torch.Tensor) else torch.tensor(s, dtype=torch.float64), n]
    else:
        if isinstance(s, torch.Tensor) and acc[0].device != s.device:
            acc[0] = acc[0].to(s.device)
        acc[0] += s
        acc[1] += n


def reset() -> None:
    """Forget everything reported since the last tick (e.g. after resuming, or between tests)."""
    _accum.clear()


def _all_names(names: list[str], world_size: int) -> list[str]:
    """The union of the names reported on every rank, in one order (ranks may skip a phase, e.g. an ae step)."""
    if world_size <= 1:
        return sorted(names)
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, sorted(names))
    return sorted({n for ns in gathered for n in ns})


def collect(device: torch.device | str = "cpu", world_size: int = 1) -> dict[str, float]:
    """Means over all ranks of everything reported since the last call, then reset (a name whose every report
    was masked out by `keep` is left out). The only sync point: one all-reduce of a [names, 2] float64 tensor and
    one device->host copy. Every rank must call it."""
    names = _all_names(list(_accum), world_size)
    buf = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    for i, name in enumerate(names):
        acc = _accum.get(name)
        if acc is not None:
            buf[i, 0] = acc[0].to(device)
            buf[i, 1] = acc[1]
    if world_size > 1 and names:
        dist.all_reduce(buf)
    host = buf.cpu().tolist()
    reset()
    return {name: s / n for name, (s, n) in zip(names, host) if n}  # n = 0: only skipped steps reported it


def format_status(row: dict, keys: Iterable[str]) -> str:
    """One fixed-width status line: `key value` pairs, values right-aligned to a fixed width ("-" if missing)."""
    parts = []
    for key in keys:
        v = row.get(key, "-")  # a key not reported this tick keeps its column
        if isinstance(v, float):
            a = abs(v)
            text = f"{v:9.1f}" if a >= 1000 else f"{v:9.4f}" if a < 10 else f"{v:9.2f}"
        else:
            text = f"{v!s:>9}"
        parts.append(f"{key} {text}")
    return "  ".join(parts)


class Collector:
    """Once per tick: reduce the reported means across ranks, merge them with the loop's own figures (kimg,
    time, ...), append the row to `jsonl_path` and print the status line (rank 0 only)."""

    def __init__(
        self,
        jsonl_path: str | Path | None,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        log: Callable[[str], None] = print,
        status_keys: Iterable[str] | None = None,
    ) -> None:
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.log = log
        self.status_keys = list(status_keys) if status_keys is not None else None

    def tick(self, extra: dict | None = None) -> dict:
        """Reduce (every rank must call this), write and print (rank 0). Returns the row on every rank."""
        row = dict(extra or {})
        row.update(collect(self.device, self.world_size))
        if self.rank == 0:
            if self.jsonl_path is not None:
                with open(self.jsonl_path, "a") as f:
                    f.write(json.dumps(row, allow_nan=True) + "\n")
            self.log(format_status(row, self.status_keys if self.status_keys is not None else row))
        return row


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSON-lines file (stats.jsonl, metric-*.jsonl); blank lines are skipped and a partially
    written last line (a crash) is ignored."""
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows
