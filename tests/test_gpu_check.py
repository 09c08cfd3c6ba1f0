"""scripts/gpu-check.sh and its helper scripts/gpu_check.py, the GPU acceptance run: the parts that only a GPU run
reaches (the bench and training sections of the report, stopping a run after its first tick) on fake records; the
budget's arithmetic on fake timings; and the whole script with stand-in steps (GPU_CHECK_FAKE=1), slow or killed
half-way, returning what a 15-minute lease can bring back."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _junit(path: Path, failed: bool) -> None:
    failure = '<failure message="boom">trace</failure>' if failed else ""
    path.write_text(
        f'<testsuites><testsuite tests="3" failures="{int(failed)}" errors="0" skipped="1">'
        '<testcase classname="tests.kernels.test_cuda" name="test_a"/>'
        f'<testcase classname="tests.kernels.test_cuda" name="test_b">{failure}</testcase>'
        '<testcase classname="tests.kernels.test_cuda" name="test_c"><skipped message="needs ~90 GiB"/></testcase>'
        "</testsuite></testsuites>"
    )


def _run(run: Path, losses: list[float], nonfinite: int = 0) -> None:
    run.mkdir(parents=True)
    rows = [
        {"kimg": 4.0 * (i + 1), "seconds": 2.0 * (i + 1), "img/s": 1000.0 + i, "nonfinite": nonfinite, "loss/ae": v}
        for i, v in enumerate(losses)
    ]
    (run / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN is written as NaN


def _logs(tmp_path: Path, failed_test: bool, losses: list[float]) -> Path:
    """A work folder's logs/ as the steps of a GPU run leave it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "env.json").write_text(json.dumps({"cuda_available": True, "gpu": "H200", "modules": {}, "missing": []}))
    run = tmp_path / "runs" / "amr-bf16"
    _run(run, losses)
    steps = [
        {"step": 1, "name": "install", "status": "ok", "rc": 0, "seconds": 9, "note": ""},
        {"step": 2, "name": "amr-bf16", "status": "ok", "rc": 0, "seconds": 50, "note": "", "run": str(run)},
        {"step": 3, "name": "cuda-tests", "status": "failed" if failed_test else "ok", "rc": 0, "seconds": 80},
        {"step": 4, "name": "bench-kernels", "status": "ok", "rc": 0, "seconds": 60, "note": ""},
    ]
    (logs / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    _junit(logs / "pytest-cuda.xml", failed_test)
    row = {"op": "simplex_mix", "B": 16384, "C": 256, "S": [8, 8], "K": 3, "dtype": "float32", "h_mib": 1024.0,
           "ms": 1.0, "gbps": 4000.0, "copy_gbps": 4400.0, "ratio": 0.909}  # fmt: skip
    rows = [{**row, "impl": "triton"}, {**row, "impl": "fwd-kernel", "ratio": 0.95, "bytes_per_h": 4.0}]
    rows.append({**row, "impl": "triton", "dtype": "bfloat16", "ratio": 0.8})
    kernels = {"_mix_fwd_kernel": {"n_regs": 40, "n_spills": 0}}
    (logs / "bench-kernels.json").write_text(json.dumps({"meta": {"gpu": "H200", "kernels": kernels}, "rows": rows}))
    return logs


def _report(logs: Path) -> int:
    out = logs.parent / "out"
    out.mkdir(exist_ok=True)
    return gpu_check.main(["report", str(logs), "--out", str(out)])


def test_report_passes_and_shows_the_figures(tmp_path, capsys):
    logs = _logs(tmp_path, failed_test=False, losses=[3.0, 2.0, 1.5])
    assert _report(logs) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(gpu_check.RETURNED)
    text = (out / "summary.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["bench"]["largest"] == {
        "simplex_mix:float32:triton": 0.909, "simplex_mix:float32:fwd-kernel": 0.95, "simplex_mix:bfloat16:triton": 0.8
    }  # fmt: skip
    run = summary["train"]["amr-bf16"]
    assert run["loss_first"] == {"loss/ae": 3.0} and run["loss_last"] == {"loss/ae": 1.5}
    assert run["img_per_s"] == 1001.5 and run["nonfinite_steps"] == 0  # median of the ticks after the first
    assert "at 1024 MiB, simplex_mix:float32: triton 0.91, fwd-kernel 0.95" in text and "RESULT: PASS" in text
    assert "compiled _mix_fwd_kernel: n_regs 40, n_spills 0" in text and "skipped x1: needs ~90 GiB" in text
    # training, then the tests, then the bench: the order of the check
    assert text.index("training (step 2)") < text.index("tests (step 3)") < text.index("kernels (step 4)")
    assert gpu_check.check_out(out) == []


def test_report_fails_on_a_failed_test_and_a_nonfinite_loss(tmp_path, capsys):
    logs = _logs(tmp_path, failed_test=True, losses=[3.0, float("nan")])
    assert _report(logs) == 1
    failures = json.loads((tmp_path / "out" / "summary.json").read_text())["failures"]
    assert any("tests.kernels.test_cuda::test_b" in f for f in failures)
    assert any("amr-bf16: 0 non-finite steps, 1 non-finite loss values" in f for f in failures)
    assert "RESULT: FAIL" in capsys.readouterr().out


def test_train_for_stops_a_run_after_its_first_tick(tmp_path):
    """A fake trainer that writes a stats row every 0.1 s and exits 0 on SIGTERM (as `amr-fast train` does)."""
    script = tmp_path / "trainer.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, signal, sys, time
            stop = []
            signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
            i = 0
            while not stop:
                i += 1
                with open(sys.argv[1] + "/stats.jsonl", "a") as f:
                    f.write(json.dumps({"kimg": i, "img/s": 10.0, "nonfinite": 0, "loss/x": 1.0 / i}) + "\\n")
                time.sleep(0.1)
            print("stopped by a signal")
            """
        )
    )
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.txt"
    args = [
        "train-for",
        "1",
        str(run),
        "--log",
        str(log),
        "--startup",
        "30",
        "--",
        sys.executable,
        str(script),
        str(run),
    ]
    assert gpu_check.main(args) == 0
    assert "stopped by a signal" in log.read_text()
    summary = gpu_check.run_summary(run)
    assert summary["ticks"] >= 3 and summary["loss_last"]["loss/x"] < summary["loss_first"]["loss/x"]


@pytest.mark.parametrize(("code", "rc"), [("import time; time.sleep(60)", 124), ("raise SystemExit(3)", 3)])
def test_train_for_tells_a_run_too_slow_to_start_from_a_crash(tmp_path, code, rc):
    """No stats row within --startup: stopped, 124 (the check reports a compile=true run so as `slow`); a command
    that ends by itself: its own exit status."""
    run = tmp_path / "run"
    run.mkdir()
    args = ["train-for", "1", str(run), "--log", str(tmp_path / "log"), "--startup", "0.5", "--grace", "5"]
    assert gpu_check.main([*args, "--", sys.executable, "-c", code]) == rc


def test_synthetic_fashion_mnist_is_learnable_shaped(tmp_path):
    np = pytest.importorskip("numpy")
    x, y = gpu_check.synth_images(200, 32, seed=0)
    assert x.shape == (200, 32, 32) and x.dtype == np.uint8 and set(y.tolist()) == set(range(10))
    assert gpu_check.main(["synth-idx", str(tmp_path), "--train", "60", "--test", "12"]) == 0
    from amr_fast.data.sources import read_idx

    assert read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (60, 32, 32)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").shape == (12,)


# ---------------------------------------------------------------------------------------------------------------
# The budget's arithmetic, on fake timings: every step taking the longest its limit allows.


def _worst_case(budget: float, slow: dict[str, float], first_startup: float | None = None) -> dict:
    """The timeline of a check whose steps each take `slow[name]` seconds, capped by their plan: a training run its
    start-up (at most the plan's) + its seconds + the whole SIGKILL grace. Returns {step: (start, end) or None}."""
    t, when = 0.0, {}
    for step in ("install", "make-data"):
        limit = gpu_check.plan_step(step, budget, t)
        when[step] = (t, t + min(slow.get(step, 0), limit))
        t = when[step][1]
    for run in ("amr-bf16", "classify-bf16", "amr-bf16-batch256", "amr-bf16-compile", "amr-fp32", "classify-fp32"):
        slot = gpu_check.plan_step(run, budget, t, first_startup=first_startup)
        if slot is None:
            when[run] = None
            continue
        secs, startup, grace = slot
        when[run] = (t, t + min(slow.get(run, 0), startup) + secs + grace)
        t = when[run][1]
    for step in ("cuda-tests", "bench-kernels"):
        limit = gpu_check.plan_step(step, budget, t)
        when[step] = None if limit is None else (t, t + min(slow.get(step, 1e9), limit))
        t = t if limit is None else when[step][1]
    return when


@pytest.mark.parametrize("budget", [420.0, 300.0, 60.0])
@pytest.mark.parametrize(
    "slow",
    [
        {},  # every step fast
        {"install": 1e9, "make-data": 1e9},  # the install and the data run into their limits
        {"install": 1e9, "make-data": 1e9, "amr-bf16": 1e9},  # ... and the first run's start-up too
        {run: 1e9 for run in ("amr-bf16", "classify-bf16", "amr-bf16-batch256", "amr-bf16-compile")},
    ],
)
def test_budget_keeps_the_bf16_amr_run_and_the_whole_within_the_budget(budget, slow):
    when = _worst_case(budget, slow)
    assert when["amr-bf16"] is not None  # never dropped, however slow the steps before it
    secs, startup, grace = gpu_check.plan_step("amr-bf16", budget, 1e9)  # whatever the clock says: the full slot
    assert (secs, startup) == (round(gpu_check.TRAIN_S * budget / 420, 1), round(gpu_check.STARTUP * budget / 420, 1))
    ends = [span[1] for span in when.values() if span]
    assert max(ends) <= budget + 1e-6  # steps each killed at their limit still end within the budget
    assert when["bench-kernels"] is not None and when["cuda-tests"] is not None  # and the tests and bench still run
    starts = [span[0] for span in when.values() if span]
    assert starts == sorted(starts)  # training before the tests, the tests before the bench


def test_budget_drops_the_later_runs_first_and_fp32_when_training_starts_slowly():
    fast = _worst_case(420.0, {}, first_startup=20.0)
    assert all(fast[r] for r in ("classify-bf16", "amr-bf16-batch256", "amr-bf16-compile"))  # 20 s start-ups: room
    # install and data at their limits, 40 s start-ups, every run using its whole SIGKILL grace: the classifier
    # still fits, the later runs do not (the fp32 ones last of all)
    runs = ("amr-bf16", "classify-bf16", "amr-bf16-batch256", "amr-bf16-compile", "amr-fp32", "classify-fp32")
    slow = _worst_case(420.0, {"install": 1e9, "make-data": 1e9} | dict.fromkeys(runs, 40.0), first_startup=40.0)
    assert [r for r in runs if slow[r]] == ["amr-bf16", "classify-bf16"]


# ---------------------------------------------------------------------------------------------------------------
# The whole script, every step replaced by a stand-in (GPU_CHECK_FAKE=1): what a lease brings back.

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")


def _check(tmp_path: Path, budget: float, sleep: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_FAKE": "1", "GPU_CHECK_BUDGET": str(budget),
           "GPU_CHECK_SLEEP": sleep, "GPU_CHECK_WORK": str(tmp_path / "work")}  # fmt: skip
    return subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


@needs_bash
def test_a_slow_check_returns_four_files_with_the_bf16_amr_run_in_the_budget(tmp_path):
    """A 20 s budget (every limit scaled by 20/420): the install runs into its limit, the first run starts slowly;
    the bf16 AMR run still trains, the whole ends within the budget, OUT holds the four files, training first."""
    t0 = time.monotonic()
    proc = _check(tmp_path, 20, "install=100 amr-bf16=1.5")
    log = proc.communicate(timeout=60)[0]
    assert time.monotonic() - t0 < 20 + 5, log
    out = tmp_path / "out"
    assert gpu_check.check_out(out) == [], log
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["install"] == "timeout" and status["amr-bf16"] == "ok" and status["bench-kernels"] == "ok", log
    assert summary["train"]["amr-bf16"]["ticks"] > 0 and proc.returncode == 1  # the install's timeout fails it
    assert gpu_check.main(["check-out", str(out), "--ran", "amr-bf16", "--budget", "20"]) == 0


@needs_bash
def test_a_check_killed_half_way_still_returns_the_steps_that_ran(tmp_path):
    proc = _check(tmp_path, 60, "amr-bf16=100")  # the first run waits for its tick until the kill
    out = tmp_path / "out"
    deadline = time.monotonic() + 30
    steps = tmp_path / "work" / "logs" / "steps.jsonl"
    while time.monotonic() < deadline and "make-data" not in (steps.read_text() if steps.exists() else ""):
        time.sleep(0.1)
    time.sleep(1.0)  # the first run is waiting for its first tick
    os.killpg(proc.pid, signal.SIGKILL)  # the lease ends: the script and everything it started
    proc.wait()
    assert gpu_check.check_out(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["install", "make-data"]
    assert summary["env"]["cuda_available"]  # env.json made it into the summary
