"""`amr-fast bench kernels`: time and effective bandwidth of every impl of the mixing ops next to a same-size copy.

For one h of --big-mib MiB (256; well beyond the caches: it comes first) and the papers' sizes (AMR codes of 2x4x4
to 256x8x8, batches 64 to 1024, K = 2, 3, 8; docs/design.md, "The mixing-op contract"), each impl of `simplex_mix`
and `mask_mix` is timed in the same run as `Tensor.copy_` of a tensor of h's size, round-robin, median and min of
repeats. On a CPU each repeat is one call under perf_counter; on CUDA it is CUDA events around many back-to-back
calls (the copy too), so Python and launch overheads overlap the GPU's work as in training. Effective bandwidth
counts the bytes a mix must move: K reads of h (one per partner), one write of the output, the weights and perm; a
copy moves 2 x |h|. "ratio" = mix bandwidth / copy bandwidth from the medians, "r(min)" from the fastest repeats
(robust when other processes share the cores). --out is rewritten after each size: a run stopped early keeps the
sizes done.

On the big size every output is fresh memory (the CPU allocator does not cache: the pages fault in on first write),
so the copy is also timed into a fresh tensor (`clone`): the difference is the page-fault cost that every
functional op pays there, and the mixes are compared with both. On CUDA the impl "triton" is added, with the rows
"fwd-kernel" and "wgrad-kernel": the forward and weight-gradient kernels alone, whose bytes per launch are
(K+1) x |h| (+ w, perm) by construction ("B/|h|"), and "compile" (`torch.compile` of the reference) without
--quick. The compiled Triton kernels' registers and spills at the big size go into the JSON's meta.

    amr-fast bench kernels --out bench-kernels.json          # ~2 minutes on 2 CPU cores
    amr-fast bench kernels --quick                           # a few sizes, seconds
    amr-fast bench kernels --quick --backward --bf16         # the GPU check's form (scripts/gpu-check.sh)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from amr_fast import kernels, mixing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write the rows as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="a few sizes and fewer repeats (a smoke run)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of h")
    parser.add_argument("--device", default=None, help="device (default: cuda when available, else cpu)")
    parser.add_argument("--big-mib", type=int, default=256, help="size of h for the beyond-cache row, MiB")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's own choice)")
    parser.add_argument(
        "--backward", action="store_true", help="also time forward + backward (rows 'IMPL+bwd'; 3x the bytes)"
    )
    parser.add_argument("--bf16", action="store_true", help="also the big size in bfloat16 (the training dtype)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: CPU time of the one compute thread (needs --threads 1 on a CPU), which "
        "other processes sharing the cores do not inflate",
    )


def grid(quick: bool) -> list[tuple[int, int, tuple[int, ...], int]]:
    """(B, C, S, K): K = 3 over the batch x code-size grid, K = 2 and 8 at B = 256."""
    codes = [(2, (4, 4)), (64, (4, 4)), (256, (8, 8))]
    if quick:
        return [(64, 2, (4, 4), 3), (256, 256, (8, 8), 3)]
    rows = [(B, C, S, 3) for B in (64, 256, 1024) for C, S in codes]
    rows += [(256, C, S, K) for K in (2, 8) for C, S in codes]
    return rows


def time_ms(fns: dict[str, Callable[[], object]], device: torch.device, budget_s: float, min_reps: int = 5, clock=None):
    """(median, min) time in ms of one call of each fn, timed round-robin (one repeat of each per round, after two
    warm-up calls) so that load from other processes hits the mix and the copy it is compared with alike. A repeat
    is one call under `clock` (time.perf_counter, the default, or time.thread_time) on a CPU; on CUDA, CUDA events
    around n back-to-back calls (n such that a repeat lasts ~20 ms)."""
    clock = clock or time.perf_counter
    cuda = device.type == "cuda"

    def once(fn, n: int = 1) -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        t0 = clock()
        fn()
        return clock() - t0

    one = {name: min(once(fn), once(fn)) for name, fn in fns.items()}  # warm-up: allocator, caches, compiles
    calls = {name: max(1, min(200, round(0.02 / max(t, 1e-7)))) if cuda else 1 for name, t in one.items()}
    per_round = sum(one[name] * calls[name] for name in fns)
    reps = max(min_reps, min(50, int(budget_s * len(fns) / max(per_round, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(once(fn, calls[name]))
    return {name: (1e3 * statistics.median(ts), 1e3 * min(ts)) for name, ts in times.items()}


def impls_for(device: torch.device, compile: bool = True) -> dict[str, dict[str, Callable]]:
    """impl name -> op name -> callable(h, perm, weights)."""
    ops = ("simplex_mix", "mask_mix")
    impls = {
        "ref": {op: getattr(mixing, op) for op in ops},
        "torch": {op: functools.partial(getattr(kernels, op), impl="torch") for op in ops},
    }
    if device.type == "cuda":
        if kernels.triton_import_error() is None:
            impls["triton"] = {op: functools.partial(getattr(kernels, op), impl="triton") for op in ops}
        if compile:
            impls["compile"] = {op: torch.compile(getattr(mixing, op), dynamic=False) for op in ops}
    return impls


def _kernel_fns(h: torch.Tensor, perm: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict[str, Callable]:
    """The Triton forward and weight-gradient kernels alone (each one launch reading K partner rows and one more
    |h|-sized tensor): "OP:fwd-kernel", "OP:wgrad-kernel"."""
    from amr_fast.kernels import triton_mix  # imports triton: only where it runs

    grad = torch.randn_like(h)
    fns = {}
    for op, w in weights.items():
        fns[f"{op}:fwd-kernel"] = functools.partial(triton_mix.mix, h, perm, w)
        fns[f"{op}:wgrad-kernel"] = functools.partial(triton_mix.weight_grad, grad, h, perm, w)
    return fns


def _forward_backward(fn: Callable, h: torch.Tensor, perm: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    """One training-style call: the mix of leaves h and w, then backward of a fixed upstream gradient."""
    h, w = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    grad = torch.randn_like(h)

    def run() -> None:
        h.grad = w.grad = None
        fn(h, perm, w).backward(grad)

    return run


def bench_size(B, C, S, K, dtype, device, budget_s, big=False, clock=None, backward=False, compile=True):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn((B, C, *S), generator=g).to(device=device, dtype=dtype)
    perm = mixing.sample_perm(K, B, g).to(device)
    weights = {"simplex_mix": mixing.sample_dirichlet_weights(B, K, 1.0, g).to(device)}
    weights["mask_mix"] = mixing.sample_kway_bernoulli_masks(B, K, C, g).to(device)
    h_bytes = h.numel() * h.element_size()
    dst = torch.empty_like(h)
    fns: dict[str, Callable] = {"copy": lambda: dst.copy_(h)}
    if big:  # a copy into fresh memory pays the same page faults as a mix that returns a new tensor
        fns["copy_fresh"] = lambda: h.clone()
    impls = impls_for(device, compile)
    for op, w in weights.items():
        for name, impl in impls.items():
            fns[f"{op}:{name}"] = functools.partial(impl[op], h, perm, w)
            if backward:
                fns[f"{op}:{name}+bwd"] = _forward_backward(impl[op], h, perm, w)
    if "triton" in impls:
        fns.update(_kernel_fns(h, perm, weights))
    ms = time_ms(fns, device, budget_s, min_reps=3 if big else 5, clock=clock)
    rows = []
    for key, (t, t_min) in ms.items():
        if key.startswith("copy"):
            continue
        op, name = key.split(":")
        w = weights[op]
        moved = K * h_bytes + h_bytes + w.numel() * w.element_size() + perm.numel() * perm.element_size()
        if name.endswith("+bwd"):  # + grad h (a mix of the gradient) + grad w (K partner rows and the gradient)
            moved = 3 * moved
        copy_ms, copy_min = ms["copy"]
        row = {
            "op": op, "B": B, "C": C, "S": list(S), "K": K, "dtype": str(dtype).removeprefix("torch."),
            "h_mib": h_bytes / 2**20, "impl": name, "ms": t, "gbps": moved / t / 1e6,
            "copy_ms": copy_ms, "copy_gbps": 2 * h_bytes / copy_ms / 1e6,
            "ms_min": t_min, "copy_ms_min": copy_min, "bytes": moved, "bytes_per_h": moved / h_bytes,
        }  # fmt: skip
        row["ratio"] = row["gbps"] / row["copy_gbps"]
        row["ratio_min"] = (moved / t_min) / (2 * h_bytes / copy_min)  # the same from the fastest repeats
        if big:
            row["copy_fresh_ms"] = ms["copy_fresh"][0]
            row["copy_fresh_gbps"] = 2 * h_bytes / row["copy_fresh_ms"] / 1e6
            row["ratio_vs_fresh"] = row["gbps"] / row["copy_fresh_gbps"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'op':<12}{'B':>6}{'C x S':>11}{'K':>3}{'h MiB':>8}  {'impl':<11}{'ms':>9}{'GB/s':>8}"
    head += f"{'copy ms':>9}{'copy GB/s':>10}{'ratio':>7}{'r(min)':>7}{'B/|h|':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cs = f"{r['C']}x" + "x".join(map(str, r["S"])) if r["S"] else str(r["C"])
        line = f"{r['op']:<12}{r['B']:>6}{cs:>11}{r['K']:>3}{r['h_mib']:>8.2f}  {r['impl']:<11}{r['ms']:>9.3f}"
        line += f"{r['gbps']:>8.1f}{r['copy_ms']:>9.3f}{r['copy_gbps']:>10.1f}{r['ratio']:>7.2f}{r['ratio_min']:>7.2f}"
        line += f"{r['bytes_per_h']:>7.2f}"
        if "copy_fresh_ms" in r:
            line += f"   fresh copy {r['copy_fresh_ms']:.1f} ms -> ratio {r['ratio_vs_fresh']:.2f}"
        lines.append(line)
    return "\n".join(lines)


def sizes(args, dtype: torch.dtype) -> list[tuple]:
    """(B, C, S, K, dtype, big): the beyond-cache size first (B examples of 256x8x8 making up --big-mib MiB; with
    --bf16 once more in bfloat16), then the grid."""
    dtypes = [dtype] + ([torch.bfloat16] if args.bf16 and dtype != torch.bfloat16 else [])
    big = [(max(1, math.ceil(args.big_mib * 2**20 / (256 * 64 * d.itemsize))), 256, (8, 8), 3, d, True) for d in dtypes]
    return big + [(B, C, S, K, dtype, False) for B, C, S, K in grid(args.quick)]


def compiled_kernels() -> dict:
    """Registers and spills of the Triton kernels last launched (the big size's, right after it)."""
    if kernels.triton_import_error() is not None:
        return {}
    from amr_fast.kernels import triton_mix

    return triton_mix.compiled_info()


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU; drop --device to run on the CPU")
    dtype = DTYPES[args.dtype]
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1 (got {args.threads})")
    if args.clock == "cpu" and (device.type != "cpu" or args.threads != 1):
        raise ValueError("--clock cpu times the calling thread only: use it with --threads 1 on a CPU")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    budget = 0.05 if args.quick else 0.3
    timing = "CUDA events around back-to-back calls" if device.type == "cuda" else f"{args.clock} clock, one call"
    meta = {
        "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "clock": args.clock,
        "timing": timing, "bytes": "mix: K*|h| + |out| + |w| + |perm|; copy: 2*|h|; +bwd: 3x the mix",
    }  # fmt: skip
    rows = []
    for B, C, S, K, dt, big in sizes(args, dtype):
        rows += bench_size(
            B, C, S, K, dt, device, budget, big=big, clock=clock, backward=args.backward, compile=not args.quick
        )
        if big and dt == dtype and device.type == "cuda":
            meta["kernels"] = compiled_kernels()
        print(f"measured B={B} C={C} S={S} K={K} {str(dt).removeprefix('torch.')}", flush=True)
        if args.out:  # after each size: a run stopped early keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(format_table(rows))
    for name, info in meta.get("kernels", {}).items():
        print(f"kernel {name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print("GB/s counts K reads of h + 1 write (+ w, perm); copy = read + write of |h|; ratio = mix GB/s / copy GB/s")
    print(f"from medians, r(min) from the fastest repeats; timing: {timing}, torch threads: {torch.get_num_threads()}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
