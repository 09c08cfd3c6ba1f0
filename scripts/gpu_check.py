"""Helpers of `scripts/gpu-check.sh`, the GPU acceptance run (README "Running the GPU check"; issue 14).

Standard library only, except `synth-idx` (numpy) and `env` (imports torch if it can), so that the report is
written even when the install failed. Subcommands:

    env --out FILE                 torch / triton / CUDA / GPU and every dependency's version (or "missing")
    missing-wheels DIR             names of the distributions in DIR's wheels that this python lacks
    synth-idx DIR                  a Fashion-MNIST-format data set (IDX files, 32x32, 10 classes) drawn here:
                                   the GPU machine has no data set and no network
    train-for SECONDS RUN -- CMD   run a training command, stop it with SIGTERM SECONDS after its first stats row
                                   (the trainers save a state and exit 0), a hard kill if it hangs; RUN/stats.jsonl
    run-summary RUN                img/s, first / last tick losses, non-finite steps of one run (JSON)
    report OUT                     OUT/summary.json + OUT/summary.txt from the steps' records; exit 1 when a
                                   correctness check failed (speed figures are reported, never asserted)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import math
import re
import signal
import statistics
import subprocess
import sys
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
    after --grace more seconds. --startup caps the wait for the first row. Returns the command's exit status."""
    stats_path = Path(args.run) / "stats.jsonl"
    t0 = time.time()
    with open(args.log, "w") as log:
        proc = subprocess.Popen(args.cmd, stdout=log, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            now = time.time()
            if first is None and _rows(stats_path):
                first = now
                print(f"  first stats row after {now - t0:.0f} s; training {args.seconds:.0f} s more", flush=True)
            if (first is None and now - t0 > args.startup) or (first is not None and now - first > args.seconds):
                break
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(args.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"  no exit {args.grace:.0f} s after SIGTERM: killed", flush=True)
                return 137
        if first is None:
            print(f"  no stats row within {args.startup:.0f} s of the start", flush=True)
    return proc.returncode


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
    s["seconds"] = next((last[k] for k in ("seconds", "time") if _finite(last.get(k))), None)  # train / classify
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
    """Triton's (and the others') bandwidth as a fraction of the device's copy bandwidth, per size."""
    if not path.exists():
        return {"error": f"{path.name} not written"}
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    table = []
    for r in rows:
        table.append(
            {
                "op": r["op"], "B": r["B"], "shape": f"{r['C']}x" + "x".join(map(str, r["S"])), "K": r["K"],
                "dtype": r["dtype"], "h_mib": round(r["h_mib"], 2), "impl": r["impl"], "ms": round(r["ms"], 4),
                "gbps": round(r["gbps"], 1), "copy_gbps": round(r["copy_gbps"], 1), "ratio": round(r["ratio"], 3),
            }
        )  # fmt: skip
    big = max((r["h_mib"] for r in table), default=0)
    # The headline: each impl's ratio at the largest size (the goal for "triton" is >= 0.85).
    largest = {f"{r['op']}:{r['impl']}": r["ratio"] for r in table if r["h_mib"] == big}
    return {"meta": data.get("meta", {}), "rows": table, "largest_mib": big, "largest": largest}


def _fmt_loss(d: dict | None) -> str:
    if not d:
        return "-"
    return " ".join(f"{k.removeprefix('loss/')}=" + (f"{v:.4g}" if _finite(v) else str(v)) for k, v in d.items())


def cmd_report(args) -> int:
    out = Path(args.out)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    summary: dict = {"env": env, "steps": steps, "failures": []}
    fails = summary["failures"]
    for s in steps:
        if s["status"] in ("failed", "timeout"):
            fails.append(f"step {s['step']} {s['name']}: {s['status']} (rc {s.get('rc')}) {s.get('note', '')}".strip())
    # Step 2: the tests.
    tests = {}
    for xml in sorted(out.glob("pytest-*.xml")):
        tests[xml.stem.removeprefix("pytest-")] = res = _junit(xml)
        if res.get("failed"):
            fails.append(f"tests {xml.stem}: {len(res['failed'])} failed: " + ", ".join(res["failed"][:10]))
    summary["tests"] = tests
    on_gpu = bool(env.get("cuda_available"))
    ran_tests = any(s["step"] == 2 and s["status"] not in ("skipped",) for s in steps)
    if on_gpu and ran_tests and tests and sum(t.get("passed", 0) for t in tests.values()) == 0:
        fails.append("tests: no CUDA test passed on a CUDA machine (all skipped?)")
    # Step 3: the bench.
    if (out / "bench-kernels.json").exists():
        summary["bench"] = _bench(out / "bench-kernels.json")
    # Step 4: the training runs.
    runs = {}
    for rec in steps:
        if rec["step"] != 4 or "run" not in rec:
            continue
        r = run_summary(Path(rec["run"]))
        r.update({"name": rec["name"], "status": rec["status"], "rc": rec.get("rc")})
        runs[rec["name"]] = r
        if rec["status"] == "skipped":
            continue
        if not r["ticks"]:
            fails.append(f"train {rec['name']}: no stats row (see {rec['name']}.log)")
        elif r["nonfinite_steps"] or r["nonfinite_loss_rows"]:
            fails.append(f"train {rec['name']}: {r['nonfinite_steps']} non-finite steps, "
                         f"{r['nonfinite_loss_rows']} non-finite loss values")  # fmt: skip
    summary["train"] = runs
    summary["ok"] = not fails
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    text = report_text(summary)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


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
    lines.append(f"{'step':<5}{'name':<30}{'status':<9}{'sec':>6}  note")
    for s in summary["steps"]:
        lines.append(f"{s['step']:<5}{s['name']:<30}{s['status']:<9}{s.get('seconds', 0):>6.0f}  {s.get('note', '')}")
    if summary.get("tests"):
        lines.append("")
        lines.append("tests (step 2):")
        for group, t in summary["tests"].items():
            if "error" in t:
                lines.append(f"  {group}: {t['error']}")
                continue
            lines.append(f"  {group}: {t['passed']} passed, {len(t['failed'])} failed, {t['skipped']} skipped")
            for name in t["failed"][:20]:
                lines.append(f"    FAILED {name}")
            for reason, n in t["skip_reasons"].items():
                lines.append(f"    skipped x{n}: {reason[:150]}")
    bench = summary.get("bench")
    if bench and "rows" in bench:
        lines.append("")
        lines.append(f"kernels (step 3): bandwidth / copy bandwidth of the same run (goal for triton >= 0.85 at large "
                     f"sizes); device {bench['meta'].get('gpu') or bench['meta'].get('device')}")  # fmt: skip
        for op in ("simplex_mix", "mask_mix"):
            ratios = ", ".join(f"{k.split(':')[1]} {v:.2f}" for k, v in bench["largest"].items() if k.startswith(op))
            lines.append(f"  at {bench['largest_mib']:.0f} MiB, {op}: {ratios}")
        lines.append(f"  {'op':<12}{'B':>6} {'C x S':>8}{'K':>3}{'MiB':>8}  {'impl':<12}{'ms':>9}{'GB/s':>8}{'copy':>8}"
                     f"{'ratio':>7}")  # fmt: skip
        for r in bench["rows"]:
            if r["h_mib"] < 8:  # launch-bound sizes say nothing about bandwidth
                continue
            lines.append(f"  {r['op']:<12}{r['B']:>6} {r['shape']:>8}{r['K']:>3}{r['h_mib']:>8.1f}  {r['impl']:<12}"
                         f"{r['ms']:>9.3f}{r['gbps']:>8.0f}{r['copy_gbps']:>8.0f}{r['ratio']:>7.2f}")  # fmt: skip
    if summary.get("train"):
        lines.append("")
        lines.append(
            "training (step 4): img/s = median over the ticks after the first; figures at the first / last tick"
        )
        for name, r in summary["train"].items():
            if r["status"] == "skipped" or not r.get("ticks"):
                lines.append(f"  {name:<16} {r['status']} (rc {r.get('rc')}), {r.get('ticks', 0)} ticks")
                continue
            lines.append(f"  {name:<16} {r['status']}, {r['kimg']} kimg in {r['seconds']} s, {r['ticks']} ticks, "
                         f"{r['img_per_s']} img/s, non-finite steps {r['nonfinite_steps']}")  # fmt: skip
            lines.append(f"  {'':<16} first: {_fmt_loss(r['loss_first'])}")
            lines.append(f"  {'':<16} last:  {_fmt_loss(r['loss_last'])}")
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
    p.set_defaults(fn=cmd_env)
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
    p.set_defaults(fn=cmd_train_for)
    p = sub.add_parser("run-summary")
    p.add_argument("run")
    p.set_defaults(fn=cmd_run_summary)
    p = sub.add_parser("report")
    p.add_argument("out")
    p.set_defaults(fn=cmd_report)
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []  # train-for: the command after "--"
    args = parser.parse_args(argv[: len(argv) - len(cmd) - (1 if cmd else 0)])
    args.cmd = cmd
    if args.command == "train-for" and not cmd:
        parser.error("train-for needs the command after --")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
