"""Smoke test of `amr-fast bench kernels` (kernels/bench.py): every impl timed next to a same-size copy, the
beyond-cache row with the fresh-output copy, a table and a JSON file. Timings are not asserted (noisy machine)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from amr_fast.kernels import bench


def test_bench_quick_writes_table_and_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--quick", "--big-mib", "1", "--out", str(out)])
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["impl"] for r in rows} == {"ref", "torch"} and {r["op"] for r in rows} == {"simplex_mix", "mask_mix"}
    for r in rows:
        assert r["ms"] > 0 and abs(r["ratio"] - r["gbps"] / r["copy_gbps"]) < 1e-9
    big = [r for r in rows if "copy_fresh_ms" in r]
    assert big and all(r["h_mib"] >= 1 for r in big)
    assert "copy GB/s" in table and len(table.splitlines()) >= len(rows) + 2


def test_cpu_clock_needs_one_thread():
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    with pytest.raises(ValueError, match="--threads 1"):
        bench.main(parser.parse_args(["--quick", "--clock", "cpu", "--threads", "2"]))


def test_backward_rows_count_three_times_the_bytes():
    rows = bench.bench_size(6, 3, (2, 2), 3, torch.float32, torch.device("cpu"), 0.001, backward=True)
    by = {(r["op"], r["impl"]): r for r in rows}
    assert set(by) == {(op, i) for op in ("simplex_mix", "mask_mix") for i in ("ref", "torch", "ref+bwd", "torch+bwd")}
    for op in ("simplex_mix", "mask_mix"):
        fwd, both = by[(op, "torch")], by[(op, "torch+bwd")]
        assert abs(both["gbps"] * both["ms"] - 3 * fwd["gbps"] * fwd["ms"]) < 1e-6 * fwd["gbps"] * fwd["ms"]
