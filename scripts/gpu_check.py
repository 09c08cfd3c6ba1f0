"""Helpers of `scripts/gpu-check.sh`, the GPU acceptance run (README "Running the GPU check").

Standard library only, except `synth-idx` (numpy) and `env` (imports torch if it can), so that the report is
written even when the install failed. Subcommands:

    env --out FILE                 torch / triton / CUDA / GPU and every dependency's version (or "missing")
    missing-wheels DIR             names of the distributions in DIR's wheels that this python lacks
    plan STEP --budget --start     the budget's arithmetic: the seconds STEP may take now (0: skip it); for a
                                   training run "SECONDS STARTUP GRACE" (see `plan_step`)
    synth-idx DIR                  a Fashion-MNIST-format data set (IDX files, 32x32, 10 classes) drawn here:
                                   the GPU machine has no data set and no network
    train-for SECONDS RUN -- CMD   run a training command, stop it with SIGTERM SECONDS after its first stats row
                                   (the trainers save a state and exit 0), a hard kill if it hangs; RUN/stats.jsonl
    run-summary RUN                img/s, first / last tick losses, non-finite steps of one run (JSON)
    report LOGS --out OUT          OUT/summary.json + summary.txt from the steps' records in LOGS, OUT/bench-kernels
                                   .json, OUT/logs.tar.gz (LOGS); exit 1 when a correctness check failed (speed
                                   figures are reported, never asserted)
    check-out OUT                  what a lease returns has the promised shape (.ci/run and the tests)
    fake-train / fake-junit / fake-bench / env --fake-cuda
                                   stand-ins of the same shape for the CPU test of gpu-check.sh (GPU_CHECK_FAKE=1)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Module to import -> distribution name, for everything amr_fast, its tests and this check import.
MODULES = {
    "torch": "torch",
    "triton": "triton",
    "accelerate": "accelerate",
    "safetensors": "safetensors",
    "einops": "einops",
    "numpy": "numpy",
    "PIL": "pillow",
    "webdataset": "webdataset",
    "braceexpand": "braceexpand",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "setuptools": "setuptools",
}
NEEDED = ("torch", "accelerate", "safetensors", "numpy", "PIL", "pytest")  # without these no step can run


# ---------------------------------------------------------------------------------------------------------------
# env


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # ImportError, or a broken install raising at import
        return None
    return str(getattr(mod, "__version__", None) or importlib.metadata.version(MODULES.get(module, module)))


def env_info() -> dict:
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    info["modules"] = {m: _version(m) for m in MODULES}
    info["missing"] = [m for m, v in info["modules"].items() if v is None]
    info["missing_needed"] = [m for m in NEEDED if info["modules"][m] is None]
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if info["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["bf16_supported"] = torch.cuda.is_bf16_supported()
    except Exception as err:
        info["torch_error"] = f"{type(err).__name__}: {err}"
    try:
        import amr_fast

        info["amr_fast"] = {"version": amr_fast.__version__, "path": str(Path(amr_fast.__file__).parent)}
        from amr_fast import kernels

        info["amr_fast"]["triton_import_error"] = kernels.triton_import_error()
    except Exception as err:
        info["amr_fast"] = {"error": f"{type(err).__name__}: {err}"}
    return info


def cmd_env(args) -> int:
    if args.fake_cuda:
        fake = {"python": sys.version.split()[0], "modules": {}, "missing": [], "cuda_available": True, "gpu": "fake"}
        Path(args.out).write_text(json.dumps(fake) + "\n")
        return 0
    info = env_info()
    Path(args.out).write_text(json.dumps(info, indent=1) + "\n")
    m = info["modules"]
    print(f"python {info['python']} ({info['executable']})")
    print(f"torch {m['torch']} (CUDA {info.get('torch_cuda')}), triton {m['triton']}, accelerate {m['accelerate']}")
    if info.get("cuda_available"):
        print(
            f"GPU: {info['gpu']} x {info['gpu_count']}, {info['gpu_memory_gib']} GiB, "
            f"compute capability {info['compute_capability']}, bf16 {info['bf16_supported']}"
        )
    else:
        print("GPU: none (torch.cuda.is_available() is False)")
    print(f"amr_fast: {info['amr_fast']}")
    print("missing modules: " + (", ".join(f"{x} ({MODULES[x]})" for x in info["missing"]) or "none"))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# missing-wheels


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


MIN_VERSIONS = {"setuptools": (77,)}  # pyproject.toml's build-system: an older one is replaced from the wheels


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def cmd_missing_wheels(args) -> int:
    """Print (one per line) the distributions that have a wheel in DIR and are not installed here (or older than
    MIN_VERSIONS); pip then picks the wheel that fits this python from `--find-links DIR`."""
    folder = Path(args.dir)
    names = sorted({_normalise(p.name.split("-")[0]) for p in folder.glob("*.whl")}) if folder.is_dir() else []
    for name in names:
        try:
            if _release(importlib.metadata.version(name)) < MIN_VERSIONS.get(name, ()):
                print(name)
        except importlib.metadata.PackageNotFoundError:
            print(name)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# plan: the budget's arithmetic

DEFAULT_BUDGET = 420.0  # seconds; every figure below is for it and scales with GPU_CHECK_BUDGET
LIMITS = {"install": 60, "make-data": 30, "cuda-tests": 100, "bench-kernels": 60, "cuda-tests-cpu-interpreter": 200}
AFTER_TRAINING = ("cuda-tests", "bench-kernels")  # reserved after the training step
FIRST_RUN = "amr-bf16"  # its slot is reserved: it starts by install + make-data's limits and is never dropped
STARTUP = 90  # the longest wait for a run's first tick (imports, data workers, Triton's first compiles)
COMPILE_STARTUP = 60  # what compile=true adds to it (inductor compiling the model), on top of the measured one
GRACE = 10  # after SIGTERM, before SIGKILL (a state of these small models saves in ~1 s)
TRAIN_S = 20  # the first run's seconds after its first tick; the later runs get half
MIN_STEP = 5  # a step with less than this left is skipped


def plan_step(step: str, budget: float, elapsed: float, train_s: float = 0, first_startup: float | None = None):
    """The seconds `step` may take now, or None to skip it. The steps run in the order install, make-data, the
    training runs, cuda-tests, bench-kernels. install and make-data have their LIMITS. Training ends by
    `budget - LIMITS[cuda-tests] - LIMITS[bench]`; after it, each step gets what is left but the LIMITS of the
    steps after it (half of them once training ran over its share), the bench all that is left. The
    first run (FIRST_RUN) has its full slot whatever the clock says (install and make-data are capped, so it
    starts by 90 s of 420 and ends by 210 s); a later run goes only if its expected start-up (the first run's,
    measured) + its seconds + the SIGKILL grace still end before that: its hard limit then keeps it there. A
    training run gets (seconds after the first tick, the longest wait for that tick, SIGTERM -> SIGKILL grace)."""
    f = budget / DEFAULT_BUDGET
    rest = budget - elapsed
    if step in AFTER_TRAINING:
        after = sum(LIMITS[a] for a in AFTER_TRAINING[AFTER_TRAINING.index(step) + 1 :]) * f
        limit = max(rest - after, min(LIMITS[step] * f, rest - after / 2))
        return round(limit, 1) if limit >= MIN_STEP * f else None
    if step in LIMITS:
        limit = min(LIMITS[step] * f, rest)
        return round(limit, 1) if limit >= MIN_STEP * f else None
    first_s = train_s or TRAIN_S * f
    if step == FIRST_RUN:
        return round(first_s, 1), round(STARTUP * f, 1), round(GRACE * f, 1)
    end = budget - sum(LIMITS[a] for a in AFTER_TRAINING) * f  # training ends here
    secs = first_s / 2
    expect = first_startup if first_startup is not None else STARTUP * f
    if step.endswith("-compile"):
        expect += COMPILE_STARTUP * f
    startup = end - elapsed - secs - GRACE * f  # the hard limit: SIGKILL by `end` at the latest
    if startup < expect:
        return None
    return round(secs, 1), round(startup, 1), round(GRACE * f, 1)


def cmd_plan(args) -> int:
    first = None
    if args.first_startup_file and Path(args.first_startup_file).exists():
        first = json.loads(Path(args.first_startup_file).read_text()).get("startup_s")
    got = plan_step(args.step, args.budget, time.time() - args.start, args.train_s, first)
    print(0 if got is None else " ".join(f"{x:g}" for x in (got if isinstance(got, tuple) else (got,))))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# synth-idx


def _write_idx(path: Path, array) -> None:
    """An unsigned-byte IDX file (the MNIST format): magic 0x00000800 + ndim, big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.tobytes())


def synth_images(n: int, size: int, seed: int):
    """n images [n, size, size] uint8 and labels: class c is a bar at angle c * 18 degrees (jittered position,
    length, width and brightness, plus noise): learnable, like Fashion-MNIST's ten classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    theta = y * (np.pi / 10) + rng.normal(0, 0.05, n)
    cx, cy = (size / 2 + rng.uniform(-3, 3, (2, n))).astype(np.float32)
    half_len = rng.uniform(0.25, 0.45, n) * size
    half_wid = rng.uniform(1.0, 2.5, n)
    bright = rng.uniform(150, 255, n)
    ax = np.arange(size, dtype=np.float32)
    gx, gy = ax[None, None, :], ax[None, :, None]
    dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    bar = (np.abs(across) < half_wid[:, None, None]) & (np.abs(along) < half_len[:, None, None])
    img = bar * bright[:, None, None] + rng.normal(0, 12, (n, size, size))
    return np.clip(img, 0, 255).astype(np.uint8), y


def cmd_synth_idx(args) -> int:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", args.train, args.seed), ("t10k", args.test, args.seed + 1)):
        x, y = synth_images(n, args.size, seed)
        _write_idx(out / f"{split}-images-idx3-ubyte.gz", x)
        _write_idx(out / f"{split}-labels-idx1-ubyte.gz", y)
    print(f"wrote {args.train} + {args.test} synthetic {args.size}x{args.size} images (10 classes) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# train-for


def _rows(stats_path: Path) -> list[dict]:
    if not stats_path.exists():
        return []
    rows = []
    for line in stats_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row being written
            pass
    return rows


def cmd_train_for(args) -> int:
    """Start CMD; SECONDS after RUN/stats.jsonl gets its first row send SIGTERM (save a state, exit 0); SIGKILL
    after --grace more seconds. --startup caps the wait for the first row. Returns the command's exit status, 124
    when it was stopped before its first row (too slow to start), 137 when it had to be killed."""
    stats_path = Path(args.run) / "stats.jsonl"
    t0 = time.time()
    time.sleep(args.sleep)  # a slow start-up, simulated (GPU_CHECK_SLEEP)
    with open(args.log, "w") as log:
        proc = subprocess.Popen(args.cmd, stdout=log, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            now = time.time()
            if first is None and _rows(stats_path):
                first = now
                if args.meta:
                    Path(args.meta).write_text(json.dumps({"startup_s": round(now - t0, 2)}) + "\n")
                print(f"  first stats row after {now - t0:.0f} s; training {args.seconds:.0f} s more", flush=True)
            if (first is None and now - t0 > args.startup) or (first is not None and now - first > args.seconds):
                break
            time.sleep(min(0.5, args.seconds / 10))
        if proc.poll() is not None:  # it ended by itself: a crash, or a run that finished
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(args.grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"  no exit {args.grace:.0f} s after SIGTERM: killed", flush=True)
            return 137
        if first is None:
            print(f"  no stats row within {args.startup:.0f} s of the start: stopped", flush=True)
            return 124
    return proc.returncode


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for the CPU test of gpu-check.sh (GPU_CHECK_FAKE=1): the same files a real step writes, at once.


def cmd_fake_train(args) -> int:
    """A trainer that writes a config, a log and a stats row every 0.05 s (falling loss) until SIGTERM."""
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text("{}\n")
    (run / "log.txt").write_text("fake trainer\n")
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    i = 0
    while not stop:
        i += 1
        row = {"kimg": 4.0 * i, "seconds": 0.05 * i, "img/s": 80000.0, "nonfinite": 0, "loss/ae": 1.0 / i}
        with open(run / "stats.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        time.sleep(0.05)
    print("fake trainer: stopped by SIGTERM")
    return 0


def cmd_fake_junit(args) -> int:
    Path(args.file).write_text(
        '<testsuites><testsuite tests="2" failures="0" errors="0" skipped="0">'
        '<testcase classname="fake" name="a"/><testcase classname="fake" name="b"/></testsuite></testsuites>\n'
    )
    return 0


def cmd_fake_bench(args) -> int:
    row = {"op": "simplex_mix", "B": 16384, "C": 256, "S": [8, 8], "K": 3, "dtype": "float32", "h_mib": 1024.0,
           "impl": "triton", "ms": 1.0, "gbps": 4000.0, "copy_gbps": 4400.0, "ratio": 0.909}  # fmt: skip
    Path(args.file).write_text(json.dumps({"meta": {"gpu": "fake"}, "rows": [row]}) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# run-summary


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def run_summary(run: Path) -> dict:
    rows = [r for r in _rows(run / "stats.jsonl") if "kimg" in r]
    s: dict = {"run": str(run), "ticks": len(rows)}
    if not rows:
        return s
    first, last = rows[0], rows[-1]
    # Losses, and the figures that show learning: the classifier's train error, the AMR probe's accuracy.
    loss_keys = sorted({k for r in rows for k in r if k.startswith("loss/") or k in ("train/error", "probe/acc")})
    s["kimg"] = last.get("kimg")
    s["seconds"] = next((round(last[k], 1) for k in ("seconds", "time") if _finite(last.get(k))), None)
    speeds = [r["img/s"] for r in rows[1:] if _finite(r.get("img/s"))]  # the first tick holds the start-up
    s["img_per_s"] = round(statistics.median(speeds), 1) if speeds else None
    s["loss_first"] = {k: first.get(k) for k in loss_keys}
    s["loss_last"] = {k: last.get(k) for k in loss_keys}
    s["nonfinite_steps"] = max((r.get("nonfinite") or 0) for r in rows)
    bad = [(r.get("kimg"), k) for r in rows for k in loss_keys if k in r and not _finite(r[k])]
    s["nonfinite_loss_rows"] = len(bad)
    return s


def cmd_run_summary(args) -> int:
    print(json.dumps(run_summary(Path(args.run)), indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# report


def _junit(path: Path) -> dict:
    """Counts and failing test ids of one pytest --junitxml file."""
    if not path.exists():
        return {"error": f"{path.name} not written"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": [], "skip_reasons": {}}
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None or case.find("error") is not None:
                out["failed"].append(name)
            skip = case.find("skipped")
            if skip is not None:
                reason = (skip.get("message") or "").strip()
                out["skip_reasons"][reason] = out["skip_reasons"].get(reason, 0) + 1
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out


def _bench(path: Path) -> dict:
    """Each impl's bandwidth as a fraction of the device's copy bandwidth, per size (the file may hold only the
    sizes done so far: it is rewritten after each)."""
    if not path.exists():
        return {"error": f"{path.name} not written"}
    data = json.loads(path.read_text())
    table = []
    for r in data.get("rows", []):
        table.append(
            {
                "op": r["op"], "B": r["B"], "shape": f"{r['C']}x" + "x".join(map(str, r["S"])), "K": r["K"],
                "dtype": r["dtype"], "h_mib": round(r["h_mib"], 2), "impl": r["impl"], "ms": round(r["ms"], 4),
                "gbps": round(r["gbps"], 1), "copy_gbps": round(r["copy_gbps"], 1), "ratio": round(r["ratio"], 3),
                "bytes_per_h": r.get("bytes_per_h"),
            }
        )  # fmt: skip
    big = max((r["h_mib"] for r in table), default=0)
    # The headline: each impl's ratio at the largest size (the goal for "triton" is >= 0.85), per op and dtype.
    largest = {f"{r['op']}:{r['dtype']}:{r['impl']}": r["ratio"] for r in table if r["h_mib"] == big}
    return {"meta": data.get("meta", {}), "rows": table, "largest_mib": big, "largest": largest}


def _fmt_loss(d: dict | None) -> str:
    if not d:
        return "-"
    return " ".join(f"{k.removeprefix('loss/')}=" + (f"{v:.4g}" if _finite(v) else str(v)) for k, v in d.items())


RETURNED = ("summary.txt", "summary.json", "bench-kernels.json", "logs.tar.gz")  # all OUT holds (<= 8 come back)


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a check killed mid-write leaves the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tarball(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname="logs")
    return buf.getvalue()


def summarise(logs: Path) -> dict:
    """The summary of the steps recorded in LOGS so far."""
    steps = [json.loads(line) for line in (logs / "steps.jsonl").read_text().splitlines() if line.strip()]
    env = json.loads((logs / "env.json").read_text()) if (logs / "env.json").exists() else {}
    summary: dict = {"env": env, "steps": steps, "failures": []}
    if (logs / "start").exists():  # seconds since the check started, when this summary was written
        summary["elapsed_s"] = round(time.time() - float((logs / "start").read_text()), 1)
    fails = summary["failures"]
    for s in steps:
        if s["status"] in ("failed", "timeout"):
            fails.append(f"step {s['step']} {s['name']}: {s['status']} (rc {s.get('rc')}) {s.get('note', '')}".strip())
    # Step 2: the training runs.
    runs = {}
    for rec in steps:
        if rec["step"] != 2 or "run" not in rec:
            continue
        r = run_summary(Path(rec["run"]))
        r.update({"name": rec["name"], "status": rec["status"], "rc": rec.get("rc")})
        runs[rec["name"]] = r
        if rec["status"] in ("skipped", "slow"):  # slow: a compile=true run without a tick in its limit (speed)
            continue
        if not r["ticks"]:
            fails.append(f"train {rec['name']}: no stats row (see {rec['name']}.log)")
        elif r["nonfinite_steps"] or r["nonfinite_loss_rows"]:
            fails.append(f"train {rec['name']}: {r['nonfinite_steps']} non-finite steps, "
                         f"{r['nonfinite_loss_rows']} non-finite loss values")  # fmt: skip
    summary["train"] = runs
    # Step 3: the tests.
    tests = {}
    for xml in sorted(logs.glob("pytest-*.xml")):
        tests[xml.stem.removeprefix("pytest-")] = res = _junit(xml)
        if res.get("failed"):
            fails.append(f"tests {xml.stem}: {len(res['failed'])} failed: " + ", ".join(res["failed"][:10]))
    summary["tests"] = tests
    ran_tests = any(s["step"] == 3 and s["status"] != "skipped" for s in steps)
    if env.get("cuda_available") and ran_tests and tests and sum(t.get("passed", 0) for t in tests.values()) == 0:
        fails.append("tests: no CUDA test passed on a CUDA machine (all skipped?)")
    # Step 4: the bench.
    if (logs / "bench-kernels.json").exists():
        summary["bench"] = _bench(logs / "bench-kernels.json")
    summary["ok"] = not fails
    return summary


def cmd_report(args) -> int:
    """OUT/summary.json, summary.txt, bench-kernels.json and logs.tar.gz from LOGS: the four files OUT holds."""
    logs, out = Path(args.logs), Path(args.out)
    summary = summarise(logs)
    text = report_text(summary)
    _write(out / "summary.json", (json.dumps(summary, indent=1, default=str) + "\n").encode())
    _write(out / "summary.txt", (text + "\n").encode())
    if (logs / "bench-kernels.json").exists():
        _write(out / "bench-kernels.json", (logs / "bench-kernels.json").read_bytes())
    _write(out / "logs.tar.gz", _tarball(logs))
    print(text)
    return 0 if summary["ok"] else 1


def check_out(out: Path) -> list[str]:
    """What is wrong with OUT as a lease returns it: at most 8 plain files and no folder, only RETURNED, the
    summary current (its steps = steps.jsonl in logs.tar.gz, as rewritten after every step), the steps in their
    order (install, training, tests, bench)."""
    errors = []
    entries = sorted(out.iterdir())
    if len(entries) > 8:
        errors.append(f"{len(entries)} entries in {out} (at most 8 come back)")
    errors += [f"{p.name}: not one of {RETURNED}" for p in entries if p.name not in RETURNED or not p.is_file()]
    if not (out / "summary.json").exists() or not (out / "logs.tar.gz").exists():
        return errors + ["summary.json or logs.tar.gz missing"]
    summary = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "logs.tar.gz") as tar:
        recorded = [json.loads(x) for x in tar.extractfile("logs/steps.jsonl").read().decode().splitlines() if x]
    if summary["steps"] != recorded or not recorded:
        errors.append("summary.json's steps are not the steps recorded in logs.tar.gz")
    numbers = [s["step"] for s in recorded]
    if numbers != sorted(numbers):
        errors.append(f"steps out of order: {numbers} (install, training, tests, bench)")
    return errors


def cmd_check_out(args) -> int:
    errors = check_out(Path(args.out))
    summary = json.loads((Path(args.out) / "summary.json").read_text()) if not errors else {}
    if args.budget is not None and summary.get("elapsed_s", 0) > args.budget + 5:
        errors.append(f"the check took {summary['elapsed_s']} s, over its budget of {args.budget:g} s")
    for name in args.ran:
        status = summary.get("train", {}).get(name, {})
        if status.get("status") != "ok" or not status.get("ticks"):
            errors.append(f"training run {name} did not run to a stats row: {status or 'not recorded'}")
    print("\n".join(errors) or f"{args.out}: the shape a lease returns")
    return 1 if errors else 0


def _train_lines(runs: dict) -> list[str]:
    lines = ["", "training (step 2): img/s = median over the ticks after the first; figures at the first / last tick"]
    for name, r in runs.items():
        if r["status"] == "skipped" or not r.get("ticks"):
            lines.append(f"  {name:<18} {r['status']} (rc {r.get('rc')}), {r.get('ticks', 0)} ticks")
            continue
        lines.append(f"  {name:<18} {r['status']}, {r['kimg']} kimg in {r['seconds']} s, {r['ticks']} ticks, "
                     f"{r['img_per_s']} img/s, non-finite steps {r['nonfinite_steps']}")  # fmt: skip
        lines.append(f"  {'':<18} first: {_fmt_loss(r['loss_first'])}")
        lines.append(f"  {'':<18} last:  {_fmt_loss(r['loss_last'])}")
    return lines


def _test_lines(tests: dict) -> list[str]:
    lines = ["", "tests (step 3):"]
    for group, t in tests.items():
        if "error" in t:
            lines.append(f"  {group}: {t['error']}")
            continue
        lines.append(f"  {group}: {t['passed']} passed, {len(t['failed'])} failed, {t['skipped']} skipped")
        lines += [f"    FAILED {name}" for name in t["failed"][:20]]
        lines += [f"    skipped x{n}: {reason[:150]}" for reason, n in t["skip_reasons"].items()]
    return lines


def _bench_lines(bench: dict) -> list[str]:
    meta = bench["meta"]
    device = meta.get("gpu") or meta.get("device")
    lines = ["", "kernels (step 4): bandwidth / copy bandwidth timed the same way in the same run (goal for triton "
             f">= 0.85 at large sizes); device {device}; {meta.get('timing', '')}"]  # fmt: skip
    for key in sorted({k.rsplit(":", 1)[0] for k in bench["largest"]}):
        ratios = ", ".join(
            f"{k.rsplit(':', 1)[1]} {v:.2f}" for k, v in bench["largest"].items() if k.startswith(key + ":")
        )
        lines.append(f"  at {bench['largest_mib']:.0f} MiB, {key}: {ratios}")
    lines.append(f"  {'op':<12}{'B':>6} {'C x S':>8}{'K':>3} {'dtype':<9}{'MiB':>7}  {'impl':<13}{'ms':>8}{'GB/s':>7}"
                 f"{'copy':>7}{'ratio':>6}{'B/|h|':>6}")  # fmt: skip
    for r in bench["rows"]:
        if r["h_mib"] < 8:  # launch-bound sizes say nothing about bandwidth
            continue
        per_h = f"{r['bytes_per_h']:>6.2f}" if r.get("bytes_per_h") else ""
        size = f"  {r['op']:<12}{r['B']:>6} {r['shape']:>8}{r['K']:>3} {r['dtype']:<9}{r['h_mib']:>7.0f}  "
        lines.append(size + f"{r['impl']:<13}{r['ms']:>8.3f}{r['gbps']:>7.0f}{r['copy_gbps']:>7.0f}{r['ratio']:>6.2f}"
                     + per_h)  # fmt: skip
    for name, k in meta.get("kernels", {}).items():
        lines.append(f"  compiled {name}: " + ", ".join(f"{key} {v}" for key, v in k.items()))
    return lines


def report_text(summary: dict) -> str:
    env, lines = summary["env"], []
    m = env.get("modules", {})
    lines.append("amr_fast GPU check")
    lines.append(
        f"python {env.get('python')}, torch {m.get('torch')} (CUDA {env.get('torch_cuda')}), triton {m.get('triton')}"
    )
    gpu = f"{env.get('gpu')}, {env.get('gpu_memory_gib')} GiB, cc {env.get('compute_capability')}"
    lines.append(f"GPU: {gpu if env.get('cuda_available') else 'none'}; missing modules: "
                 + (", ".join(env.get("missing", [])) or "none"))  # fmt: skip
    lines.append("")
    lines.append(f"{'step':<5}{'name':<30}{'status':<9}{'sec':>6}  note   (elapsed {summary.get('elapsed_s')} s)")
    for s in summary["steps"]:
        lines.append(f"{s['step']:<5}{s['name']:<30}{s['status']:<9}{s.get('seconds', 0):>6.0f}  {s.get('note', '')}")
    if summary.get("train"):
        lines += _train_lines(summary["train"])
    if summary.get("tests"):
        lines += _test_lines(summary["tests"])
    if summary.get("bench") and "rows" in summary["bench"]:
        lines += _bench_lines(summary["bench"])
    lines.append("")
    if summary["ok"]:
        lines.append("RESULT: PASS (every correctness check that ran passed; speed figures are not asserted)")
    else:
        lines.append("RESULT: FAIL")
        lines += [f"  - {f}" for f in summary["failures"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p.add_argument("--fake-cuda", action="store_true", help="write a fake CUDA env without importing anything")
    p.set_defaults(fn=cmd_env)
    p = sub.add_parser("plan")
    p.add_argument("step")
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--start", type=float, required=True, help="the check's start, seconds since the epoch")
    p.add_argument("--train-s", type=float, default=0, help="the first run's seconds (0: the budget's share)")
    p.add_argument("--first-startup-file", default=None)
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("missing-wheels")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_missing_wheels)
    p = sub.add_parser("synth-idx")
    p.add_argument("dir")
    p.add_argument("--train", type=int, default=12000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_synth_idx)
    p = sub.add_parser("train-for")
    p.add_argument("seconds", type=float)
    p.add_argument("run")
    p.add_argument("--log", required=True)
    p.add_argument("--startup", type=float, default=120.0, help="longest wait for the first stats row, s")
    p.add_argument("--grace", type=float, default=45.0, help="wait after SIGTERM before SIGKILL, s")
    p.add_argument("--sleep", type=float, default=0.0, help="sleep first (a slow start-up, simulated), s")
    p.add_argument("--meta", default=None, help="write {startup_s} here when the first stats row appears")
    p.set_defaults(fn=cmd_train_for)
    p = sub.add_parser("fake-train")
    p.add_argument("run")
    p.set_defaults(fn=cmd_fake_train)
    for name, fn in (("fake-junit", cmd_fake_junit), ("fake-bench", cmd_fake_bench)):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.set_defaults(fn=fn)
    p = sub.add_parser("run-summary")
    p.add_argument("run")
    p.set_defaults(fn=cmd_run_summary)
    p = sub.add_parser("report")
    p.add_argument("logs")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("check-out")
    p.add_argument("out")
    p.add_argument("--ran", action="append", default=[], help="a training run that must have run (repeatable)")
    p.add_argument("--budget", type=float, default=None, help="the check's budget: it must have ended by then + 5 s")
    p.set_defaults(fn=cmd_check_out)
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []  # train-for: the command after "--"
    args = parser.parse_args(argv[: len(argv) - len(cmd) - (1 if cmd else 0)])
    args.cmd = cmd
    if args.command == "train-for" and not cmd:
        parser.error("train-for needs the command after --")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
