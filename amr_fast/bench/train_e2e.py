"""End-to-end rows of `amr-fast bench train`: the real `amr-fast train` loop on real shards, and the public AMR
code's own loop, each in a child process (their peak RSS is their own), alternated A B A B."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from amr_fast import data as amr_data
from amr_fast import stats as amr_stats
from amr_fast.data.builtin import cache_dir


def end_to_end(args: argparse.Namespace, step: dict) -> dict:
    """The default config's `amr-fast train` (and fp32), then the public loop and ours alternated A B A B."""
    data = Path(args.data) if args.data else default_data_root()
    public = Path(args.public) if args.public else None
    out: dict = {"data": str(data), "kimg": args.e2e_kimg, "runs": {}, "pairs": []}
    with tempfile.TemporaryDirectory(prefix="amr-bench-e2e-") as tmp:
        work = Path(tmp)
        out["runs"]["train, default config"] = run_train_e2e(data, args.e2e_kimg, {}, work)
        out["runs"]["train, procs=1"] = run_train_e2e(data, args.e2e_kimg, {"procs": "1"}, work)
        if out["runs"]["train, default config"]["processes"] not in (None, 1):  # the collectives through gloo
            gloo = {"AMR_FAST_SHM": "0"}
            out["runs"]["train, AMR_FAST_SHM=0"] = run_train_e2e(data, args.e2e_kimg, {}, work, env=gloo)
        if out["runs"]["train, default config"]["precision"] != "fp32":
            out["runs"]["train, precision=fp32"] = run_train_e2e(data, args.e2e_kimg, {"precision": "fp32"}, work)
        with ThreadPoolExecutor(2) as pool:  # two default runs side by side, as two users of one machine
            both = list(pool.map(lambda i: run_train_e2e(data, args.e2e_kimg, {}, work, f"side-{i}"), (0, 1)))
        for i, run in enumerate(both):
            out["runs"][f"train, default, 2 at once ({i + 1})"] = run
        out["side_by_side_fraction"] = [r["img_per_s"] / out["runs"]["train, default config"]["img_per_s"]
                                        for r in both]  # fmt: skip
        if public is not None and (public / "bench.sh").exists():
            for _ in range(args.pairs):
                a = run_public(public, iters=args.public_iters)
                b = run_train_e2e(data, args.e2e_kimg, {}, work)
                out["pairs"].append({"public": a, "ours": b, "ratio": b["img_per_s"] / a["img_per_s"]})
        elif public is not None:
            out["public_missing"] = f"{public}/bench.sh not found (public loop skipped): {PUBLIC_SETUP}"
    default = out["runs"]["train, default config"]
    precision = "bf16" if default["precision"] == "bf16" else "fp32"
    same = {"precision": "bf16"} if precision == "bf16" else {}
    rows = [row for row in step.values() if isinstance(row, dict) and "img_per_s" in row]
    isolated = next((row for row in rows if (row.get("changes") or {}) == same), None)
    for run in list(out["runs"].values()) + [p["ours"] for p in out["pairs"]]:
        p = "bf16" if run["precision"] == "bf16" else "fp32"
        roof = step["conv_roofline"].get(p) or step["conv_roofline"]["fp32"]
        run["roofline_fraction"] = run["img_per_s"] * step["flops_per_image"]["fp32"] / 1e9 / roof["gflop_per_s"]
    if isolated is not None:
        out["default_vs_isolated_step"] = default["img_per_s"] / isolated["img_per_s"]
    out["vs_reference_step"] = default["img_per_s"] / step["reference"]["img_per_s"]
    return out


def e2e_rows(e2e: dict) -> str:
    lines = [f"end to end: `amr-fast train --preset fashion-mnist-mixup` on {e2e['data']}, {e2e['kimg']} kimg per run"]
    for name, run in e2e["runs"].items():
        lines.append(
            f"  {name:<34} {run.get('processes') or '?'} proc, precision {run['precision']:<4} "
            f"{run['img_per_s']:7.1f} img/s  {run['roofline_fraction']:.0%} of roofline  peak RSS "
            f"{run['peak_rss_mb']:.0f} MB"
        )
    if "side_by_side_fraction" in e2e:
        fractions = ", ".join(f"{f:.2f}x" for f in e2e["side_by_side_fraction"])
        lines.append(f"  two default runs at once: each {fractions} of a lone default run")
    if "default_vs_isolated_step" in e2e:
        lines.append(f"  default config / isolated step: {e2e['default_vs_isolated_step']:.2f}x; "
                     f"/ reference step: {e2e['vs_reference_step']:.2f}x")  # fmt: skip
    for i, pair in enumerate(e2e["pairs"]):
        a, b = pair["public"], pair["ours"]
        lines.append(
            f"  pair {i + 1}: public AMR loop {a['img_per_s']:6.1f} img/s (RSS {a['peak_rss_mb']:.0f} MB), ours "
            f"{b['img_per_s']:6.1f} img/s (RSS {b['peak_rss_mb']:.0f} MB) -> {pair['ratio']:.2f}x"
        )
    if e2e.get("public_missing"):
        lines.append("  " + e2e["public_missing"])
    return "\n".join(lines)


# The public loop's rows need the authors' code (https://github.com/christopher-beckham/amr, BSD-3) with a timing
# script beside it, in `public-amr/` at the clone's root (git-ignored) or wherever --public points.
PUBLIC_SETUP = (
    "put the authors' code (git clone https://github.com/christopher-beckham/amr public-amr/amr) with a script "
    "public-amr/bench.sh VARIANT that runs its exps/mnist/VARIANT_lamb10.sh training and writes "
    "public-amr/results/bench_VARIANT.json ({img_per_s, iters, peak_rss_main_mb}); README, 'Training speed'"
)


def default_data_root() -> Path:
    """Fashion-MNIST 32x32 shards for the end-to-end row: made once into the cache from the Debian package's IDX
    files if they are there, else generated 32x32 shards (procedural dSprites rendered at 32x32)."""
    src = Path("/usr/share/datasets/fashion-mnist")
    if (src / "train-images-idx3-ubyte.gz").exists() or (src / "train-images-idx3-ubyte").exists():
        root = cache_dir() / "fashion-mnist-32"
        if not (root / "index.json").exists():
            amr_data.make_shards("fashion-mnist", src, root, size=32)
        return root
    root = cache_dir() / "dsprites-procedural-32"
    if not (root / "index.json").exists():
        amr_data.make_shards("dsprites-procedural", None, root, size=32, subset=20_000, seed=0)
    return root


def _child(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[int, dict]:
    """Run cmd; (exit status, {peak_rss_mb, cpu_s, wall_s}) of that child alone (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    info = {"peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.perf_counter() - t0, "tail": out[-2000:]}  # fmt: skip
    return proc.returncode, info


# `python -c _HWM_MAIN FILE ARGS...` runs `amr-fast ARGS...` and writes its peak RSS (/proc VmHWM) to FILE at exit.
# (A child's ru_maxrss from wait4 is no use: Linux carries the forking parent's high-water mark across exec.)
_HWM_MAIN = (
    "import atexit, runpy, sys; f = sys.argv.pop(1); "
    "atexit.register(lambda: open(f, 'w').write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))); "
    "sys.argv[0] = 'amr-fast'; runpy.run_module('amr_fast.cli', run_name='__main__')"
)


def run_train_e2e(
    data: Path, kimg: float, overrides: dict[str, str], workdir: Path, name: str = "", env: dict | None = None
) -> dict:
    """`amr-fast train --preset fashion-mnist-mixup` (the default config plus `overrides`; `procs=N` chooses the
    number of processes, by default one per core on a CPU; `env`: variables set for it) for `kimg` on `data`, ticks
    every kimg / 8, no probe / snapshot / state until the end: img/s over the steady ticks (all but the first, which
    holds start-up; the end-of-run evaluation is timed apart by the trainer, `sec/eval`). Peak RSS: the command's
    own process (with several processes, the launcher's; each data-parallel process holds its own copy of the
    model)."""
    outdir = workdir / f"train-{name or len(list(workdir.glob('train-*')))}"
    shutil.rmtree(outdir, ignore_errors=True)
    args = {"total_kimg": kimg, "tick_kimg": kimg / 8, "probe_kimg": 10 * kimg, "snapshot_kimg": 10 * kimg,
            "state_kimg": 10 * kimg, **overrides}  # fmt: skip
    rss = workdir / f"rss-{outdir.name}.txt"
    cmd = [sys.executable, "-c", _HWM_MAIN, str(rss), "train", "--preset", "fashion-mnist-mixup"]
    cmd += ["--outdir", str(outdir), f"data={data}"] + [f"{k}={v}" for k, v in args.items()]
    rc, info = _child(cmd, env={**os.environ, **env} if env else None)
    if rc != 0:
        raise RuntimeError(f"amr-fast train failed ({rc}):\n{info['tail']}")
    info["peak_rss_mb"] = int(rss.read_text().split()[1]) / 1024  # VmHWM, kB
    rows = [r for r in amr_stats.read_jsonl(outdir / "stats.jsonl") if "img/s" in r]
    steady = rows[1:] or rows
    images = [r["nimg"] - p["nimg"] for p, r in zip(rows[:-1], rows[1:])] if len(rows) > 1 else [rows[0]["nimg"]]
    seconds = sum(n / r["img/s"] for n, r in zip(images, steady))
    log = (outdir / "log.txt").read_text()  # its first line says the processes and the precision (`start_line`)
    start = re.search(r", (\d+) process(?:es)? on \S+, precision (\w+)", log)
    procs, precision = (int(start[1]), start[2]) if start else (None, "?")
    shutil.rmtree(outdir, ignore_errors=True)
    return {"img_per_s": sum(images) / seconds, "precision": precision, "peak_rss_mb": info["peak_rss_mb"],
            "cpu_s": info["cpu_s"], "wall_s": info["wall_s"], "sec_eval_last": rows[-1].get("sec/eval"),
            "overrides": overrides, "env": env or {}, "processes": procs}  # fmt: skip


def run_public(public: Path, variant: str = "mixup", iters: int = 0) -> dict:
    """The public AMR code's own loop (`bash PUBLIC/bench.sh mixup`, see PUBLIC_SETUP): its img/s and RSS.
    iters: timed iterations (0 = bench.sh's default, 250 after 60 warm-up)."""
    env = {**os.environ, "ITERS": str(iters)} if iters else None
    rc, info = _child(["bash", str(public / "bench.sh"), variant], env=env)
    if rc != 0:
        raise RuntimeError(f"{public}/bench.sh failed ({rc}); {PUBLIC_SETUP}:\n{info['tail']}")
    d = json.loads((public / "results" / f"bench_{variant}.json").read_text())
    return {"img_per_s": d["img_per_s"], "peak_rss_mb": d.get("peak_rss_main_mb", info["peak_rss_mb"]),
            "iters": d.get("iters"), "wall_s": info["wall_s"]}  # fmt: skip
