"""amr_fast.stats: report accumulates without syncing, collect gives exact means, the collector writes one row."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from amr_fast import stats


@pytest.fixture(autouse=True)
def _clean():
    stats.reset()
    yield
    stats.reset()


def test_collect_gives_means_over_all_reported_elements():
    stats.report("loss", torch.tensor(1.0))
    stats.report("loss", torch.tensor([2.0, 3.0]))
    stats.report("acc", 0.5)
    out = stats.collect()
    assert out == pytest.approx({"loss": 2.0, "acc": 0.5})
    assert stats.collect() == {}  # reset after collecting


def test_report_does_not_keep_the_graph():
    w = torch.ones(3, requires_grad=True)
    stats.report("loss", (w * 2).sum())
    assert not stats._accum["loss"][0].requires_grad


def test_collector_appends_one_row_and_prints_one_line(tmp_path):
    lines = []
    col = stats.Collector(tmp_path / "stats.jsonl", log=lines.append, status_keys=["kimg", "loss"])
    for step in range(2):
        stats.report("loss", torch.tensor(float(step)))
        col.tick({"kimg": 0.5 * (step + 1)})
    rows = stats.read_jsonl(tmp_path / "stats.jsonl")
    assert [r["loss"] for r in rows] == [0.0, 1.0] and [r["kimg"] for r in rows] == [0.5, 1.0]
    assert len(lines) == 2 and "loss" in lines[0] and "kimg" in lines[0]
    assert len(lines[0]) == len(lines[1])  # fixed width


def test_read_jsonl_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2')
    assert stats.read_jsonl(p) == [{"a": 1}]


def test_two_ranks_reduce_means_and_union_of_names(tmp_path):
    script = textwrap.dedent(
        """
        import os, torch, torch.distributed as dist
        from amr_fast import stats
        dist.init_process_group("gloo")
        r = dist.get_rank()
        stats.report("both", torch.tensor([float(r)] * (r + 1)))  # rank0: [0], rank1: [1, 1]
        if r == 1:
            stats.report("only1", 4.0)
        out = stats.collect(world_size=2)
        if r == 0:
            print(sorted(out.items()))
        dist.destroy_process_group()
        """
    )
    path = tmp_path / "s.py"
    path.write_text(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"[('both', {2 / 3!r}), ('only1', 4.0)]" in r.stdout
