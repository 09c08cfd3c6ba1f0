"""Smoke test of `amr-fast bench kernels` (amr_fast/bench/kernels.py): every impl timed next to a same-size copy, the
beyond-cache row with the fresh-output copy, a table and a JSON file. Timings are not asserted (noisy machine)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from amr_fast import kernels
from amr_fast.bench import kernels as bench


def test_bench_quick_writes_table_and_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--quick", "--big-mib", "1", "--bf16", "--out", str(out)])
    assert bench.main(args) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["impl"] for r in rows} == {"ref", "torch"} and {r["op"] for r in rows} == {"simplex_mix", "mask_mix"}
    for r in rows:
        assert r["ms"] > 0 and abs(r["ratio"] - r["gbps"] / r["copy_gbps"]) < 1e-9
    big = [r for r in rows if "copy_fresh_ms" in r]
    assert big == rows[: len(big)] and all(r["h_mib"] >= 1 for r in big)  # the beyond-cache size first
    assert {r["dtype"] for r in big} == {"float32", "bfloat16"}  # --bf16: the training dtype too
    assert all(r["K"] + 1 < r["bytes_per_h"] < r["K"] + 1.1 for r in big)  # K reads + 1 write of h, + w and perm
    assert "copy GB/s" in table and len(table.splitlines()) >= len(rows) + 2


def test_json_is_written_after_each_size(tmp_path, monkeypatch):
    """A bench stopped by a timeout keeps the sizes it measured."""
    real, done = bench.bench_size, []

    def stop_at_the_third(*args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(args[:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_size", stop_at_the_third)
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    out = tmp_path / "k.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(parser.parse_args(["--quick", "--big-mib", "1", "--out", str(out)]))
    rows = json.loads(out.read_text())["rows"]
    assert sorted({(r["B"], r["C"], tuple(r["S"]), r["K"]) for r in rows}) == sorted(done)


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


class _FakeEvent:
    """torch.cuda.Event on a CPU, reading a fake clock that the timed functions advance (no real time)."""

    clock = 0.0

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = _FakeEvent.clock

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 1e3 * (end.t - self.t)


def test_cuda_timing_runs_many_back_to_back_calls_between_two_events(monkeypatch):
    """On CUDA a repeat is n calls between two events, n such that it lasts ~20 ms, and the time is per call."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    calls = {"fast": 0, "slow": 0}

    def call(name, seconds):
        calls[name] += 1
        _FakeEvent.clock += seconds

    fns = {"fast": lambda: call("fast", 0.0005), "slow": lambda: call("slow", 0.03)}
    ms = bench.time_ms(fns, torch.device("cuda"), budget_s=0.0, min_reps=3)
    assert calls == {"fast": 2 + 3 * 40, "slow": 2 + 3}  # warm-up, then 40 calls (20 ms) vs one per repeat
    assert abs(ms["fast"][0] - 0.5) < 1e-6 and abs(ms["slow"][0] - 30) < 1e-6  # per call


@pytest.mark.skipif(kernels.triton_import_error() is not None, reason="triton is not installed")
def test_the_cuda_rows_reach_the_triton_kernels():
    """What only a GPU run times, built here without running it: the kernel-alone rows and the kernels' meta."""
    h, perm = torch.randn(4, 3, 2, 2), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    fns = bench._kernel_fns(h, perm, {"simplex_mix": torch.full((4, 2), 0.5)})
    assert set(fns) == {"simplex_mix:fwd-kernel", "simplex_mix:wgrad-kernel"}
    assert isinstance(bench.compiled_kernels(), dict)
