"""`amr-fast bench data`: one run gives a local and an HTTP row (a server it starts and stops) for each case."""

from __future__ import annotations

import json

from amr_fast import cli


def test_bench_data_has_local_and_http_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    out = tmp_path / "bench.json"
    argv = ["bench", "data", "--num-images", "256", "--batch-size", "32", "--workers", "0", "--batches", "2",
            "--warmup", "1", "--workdir", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["from"]) for r in rows][:2] == [("32x32x1", "local"), ("32x32x1", "http")]
    assert all(r["ours_samples_per_s"] > 0 for r in rows) and " http " in capsys.readouterr().out
