"""What a run tells its user: progress off a terminal as plain lines, a one-line start instead of the
config's JSON, log.txt holding what was printed, the status line's ETA, Ctrl-C stopping `make`, the file modes of
a run, and the commands' help and messages that were wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from amr_fast import checkpoint, classify, cli, progress, train
from amr_fast.bench import BENCHES
from amr_fast.config import TrainConfig
from amr_fast.eval import report
from amr_fast.eval.metrics import recon_error
from amr_fast.models import build_networks
from amr_fast.overrides import to_json

SPIRAL = ["--preset", "spiral-mixup", "total_kimg=0.512", "tick_kimg=0.256", "probe_kimg=1", "snapshot_kimg=0.512",
          "state_kimg=0.512", "workers=0"]  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMR_FAST_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------------------
# amr_fast.progress


def test_off_a_terminal_progress_is_plain_lines_and_a_last_one(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setenv("AMR_FAST_PROGRESS_S", "0.001")  # every update may print a line (the first after 1 ms)
    b = progress.bar(total=5, desc="phase", unit="img")
    for _ in range(5):
        progress.time.sleep(0.005)
        b.update(1)
    b.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 2 and all(line.startswith("phase:") for line in lines)
    assert "5/5" in lines[-1] and "5/5" not in lines[0]


def test_a_counted_bar_of_several_processes_counts_the_whole_split(monkeypatch, capsys):
    """Rank 0's bar of an evaluation that every process does on its share: the split's images, not rank 0's."""
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setenv("AMR_FAST_PROGRESS_S", "0.001")
    batches = [{"x": np.zeros(4)} for _ in range(3)]  # rank 0 of 2 reads 12 of the split's 23 images
    for _ in progress.counted(iter(batches), 23, "test error", share=2):
        progress.time.sleep(0.005)
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.search(r"\b23(\.0)?/23(\.0)? ", last), last  # 3 batches x 4 x 2 processes, capped at 23


def test_a_short_phase_prints_nothing_and_progress_can_be_silenced(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    for _ in progress.bar(range(3), desc="short"):  # shorter than the first line's delay
        pass
    monkeypatch.setenv("AMR_FAST_PROGRESS_S", "0.001")
    for env in ({"AMR_FAST_PROGRESS": "0"}, {"RANK": "1"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            for _ in progress.bar(range(3), desc="silent"):
                progress.time.sleep(0.005)
    assert capsys.readouterr().err == ""


def test_a_step_without_a_count_says_what_it_does_when_it_takes_long(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setenv("AMR_FAST_PROGRESS_S", "0.01")
    with progress.phase("writing snapshot-x"):
        progress.time.sleep(0.2)
    with progress.phase("writing quick"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines[0] == "writing snapshot-x ..." and lines[1].startswith("writing snapshot-x: done in") and len(lines) == 2
    )


# ---------------------------------------------------------------------------------------------------------------
# A run's first line, log.txt, config.json, the ETA, the file modes, Ctrl-C.


def test_a_run_prints_one_line_for_its_config_and_log_txt_holds_what_it_printed(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SPIRAL, "--outdir", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("preset spiral-mixup, data builtin:spiral, 0.512 kimg, 1 process on cpu")
    assert f"outdir {out}" in printed[0] and not any(line.lstrip().startswith("{") for line in printed)
    assert (out / "log.txt").read_text().splitlines() == printed  # everything printed on stdout, from the start
    assert json.loads((out / "config.json").read_text())["total_kimg"] == 0.512
    status = [line for line in printed if line.startswith("kimg")]
    assert len(status) == 2 and all(" eta " in line for line in status) and status[-1].endswith("0m00s")
    mode = 0o666 & ~_umask()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.parent.name.startswith("state-") for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
    # a re-run of the finished run: one line, then where it is; still no JSON
    assert cli.main(["train", *SPIRAL, "--outdir", str(out)]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0] == printed[0] and "already finished" in again[2]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_ctrl_c_saves_a_state_and_exits_130_so_make_stops(tmp_path, cache, monkeypatch, capsys, sig, status):
    calls = {"n": 0}
    real_iteration = train.train_iteration

    def iteration(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), sig)
        return real_iteration(*args, **kwargs)

    monkeypatch.setattr(train, "train_iteration", iteration)
    out = tmp_path / "run"
    assert cli.main(["train", *SPIRAL, "--outdir", str(out)]) == status
    assert "stopped by a signal" in capsys.readouterr().out and checkpoint.find_latest_state(out) is not None
    monkeypatch.setattr(train, "train_iteration", real_iteration)
    assert cli.main(["train", *SPIRAL, "--outdir", str(out)]) == 0  # the re-run resumes and finishes


def test_the_done_line_of_a_finished_classifier_has_no_empty_field():
    r = SimpleNamespace(state=SimpleNamespace(nimg=2048, best_test_error=12.5), outdir="runs/cls")
    line = classify.done_line(r, {})
    assert (
        line == "done: 2.048 kimg in runs/cls; nothing left to train; best eval/test_error over the evaluations 12.50"
    )
    line = classify.done_line(r, {"kimg": 2.048, "eval/test_error": 12.5})
    assert (
        line == "done: 2.048 kimg in runs/cls; eval/test_error 12.50; best eval/test_error over the evaluations 12.50"
    )


# ---------------------------------------------------------------------------------------------------------------
# Commands: mix / explore take a run directory, eval --limit N scores N images, help texts, the report's legend.


def test_mix_takes_a_run_directory(tmp_path, capsys):
    cfg = TrainConfig(arch="amr32", img_size=16, width=4, code_channels=2, num_classes=3).validate()
    rundir = tmp_path / "fm"
    checkpoint.save_snapshot(
        rundir / "snapshot-000001.000.safetensors", build_networks(cfg), json.loads(to_json(cfg)), 1
    )
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert cli.main(["mix", str(rundir), str(img), str(img), "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").is_file() and "wrote" in capsys.readouterr().out


def test_eval_limit_scores_exactly_that_many_images(tmp_path):
    from amr_fast.data import make_shards

    root = make_shards("dsprites-procedural", None, tmp_path / "ds", size=16, limit=300)
    cfg = TrainConfig(arch="amr32", img_size=16, channels=1, width=4, code_channels=2, num_classes=3).validate()
    ae = build_networks(cfg)["ae"]
    assert recon_error(ae, cfg, root, "valid", "cpu", limit=100)["n"] == 100  # not a whole batch of 256
    assert recon_error(ae, cfg, root, "valid", "cpu", limit=None)["n"] == 300


def test_help_lists_every_benchmark_and_every_config_field(capsys):
    assert cli.main(["--help"]) == 0
    bench_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("bench"))
    assert all(name in bench_line for name in BENCHES)
    for command, fields in (
        ("train", TrainConfig.__dataclass_fields__),
        ("classify", classify.ClassifyConfig.__dataclass_fields__),
    ):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert [name for name in fields if not re.search(rf"\b{name}\b", text)] == [], command


def test_the_report_legend_names_only_the_columns_the_table_has(tmp_path):
    rows = [{"kimg": 1.0, "probe/best_valid_acc": 0.5}]
    runs = [report.RunRecord(tmp_path, {"data": "builtin:dsprites-procedural", "method": "amr", "mixer": "none"}, rows,
                       {"recon": {"l1": 0.1}})]  # fmt: skip
    note = report.results_table(runs).strip().splitlines()[-1]
    assert "recon L1" in note and "online linear probe" in note
    assert "FactorVAE" not in note and "offline probe" not in note and "beta-VAE" not in note
    runs[0].metrics["factorvae"] = {"score": 0.5}
    assert "FactorVAE" in report.results_table(runs).strip().splitlines()[-1]


def test_snapshots_get_the_mode_of_every_other_file(tmp_path):
    cfg = TrainConfig(arch="amr32", img_size=16, width=4, code_channels=2, num_classes=3).validate()
    path = tmp_path / "snapshot-000001.000.safetensors"
    checkpoint.save_snapshot(path, build_networks(cfg), json.loads(to_json(cfg)), 1)
    (tmp_path / "other.txt").write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "other.txt").stat().st_mode)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
