"""scripts/gpu_check.py, the helper of the GPU acceptance run (scripts/gpu-check.sh): the parts that only a GPU run
reaches (the bench and training sections of the report, stopping a run after its first tick), on fake records."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "scripts" / "gpu_check.py")
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


def _out(tmp_path: Path, failed_test: bool, losses: list[float]) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "env.json").write_text(json.dumps({"cuda_available": True, "gpu": "H200", "modules": {}, "missing": []}))
    run = tmp_path / "runs" / "amr-bf16"
    _run(run, losses)
    steps = [
        {"step": 1, "name": "install", "status": "ok", "rc": 0, "seconds": 9, "note": ""},
        {"step": 2, "name": "cuda-tests", "status": "failed" if failed_test else "ok", "rc": 0, "seconds": 80},
        {"step": 3, "name": "bench-kernels", "status": "ok", "rc": 0, "seconds": 60, "note": ""},
        {"step": 4, "name": "amr-bf16", "status": "ok", "rc": 0, "seconds": 50, "note": "", "run": str(run)},
    ]
    (out / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    _junit(out / "pytest-rest.xml", failed_test)
    row = {"op": "simplex_mix", "B": 16384, "C": 256, "S": [8, 8], "K": 3, "dtype": "float32", "h_mib": 1024.0,
           "ms": 1.0, "gbps": 4000.0, "copy_gbps": 4400.0, "ratio": 0.909}  # fmt: skip
    bench = {"meta": {"gpu": "H200"}, "rows": [{**row, "impl": "triton"}, {**row, "impl": "compile", "ratio": 0.5}]}
    (out / "bench-kernels.json").write_text(json.dumps(bench))
    return out


def test_report_passes_and_shows_the_figures(tmp_path, capsys):
    out = _out(tmp_path, failed_test=False, losses=[3.0, 2.0, 1.5])
    assert gpu_check.main(["report", str(out)]) == 0
    text = (out / "summary.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["bench"]["largest"] == {"simplex_mix:triton": 0.909, "simplex_mix:compile": 0.5}
    run = summary["train"]["amr-bf16"]
    assert run["loss_first"] == {"loss/ae": 3.0} and run["loss_last"] == {"loss/ae": 1.5}
    assert run["img_per_s"] == 1001.5 and run["nonfinite_steps"] == 0  # median of the ticks after the first
    assert "at 1024 MiB, simplex_mix: triton 0.91, compile 0.50" in text and "RESULT: PASS" in text
    assert "skipped x1: needs ~90 GiB" in text


def test_report_fails_on_a_failed_test_and_a_nonfinite_loss(tmp_path, capsys):
    out = _out(tmp_path, failed_test=True, losses=[3.0, float("nan")])
    assert gpu_check.main(["report", str(out)]) == 1
    failures = json.loads((out / "summary.json").read_text())["failures"]
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


def test_synthetic_fashion_mnist_is_learnable_shaped(tmp_path):
    np = pytest.importorskip("numpy")
    x, y = gpu_check.synth_images(200, 32, seed=0)
    assert x.shape == (200, 32, 32) and x.dtype == np.uint8 and set(y.tolist()) == set(range(10))
    assert gpu_check.main(["synth-idx", str(tmp_path), "--train", "60", "--test", "12"]) == 0
    from amr_fast.data.sources import read_idx

    assert read_idx(tmp_path / "train-images-idx3-ubyte.gz").shape == (60, 32, 32)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").shape == (12,)
