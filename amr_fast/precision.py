"""`precision=auto`: which mixed precision a run gets on the device it runs on (one place, for every trainer).

- CUDA: bf16 autocast where the GPU supports it, else fp32.
- CPU: bf16 autocast where the CPU computes bf16 natively (x86 `avx512_bf16` or `amx_bf16`, ARM `bf16`), where
  oneDNN's bf16 convolutions and matmuls run 2-3x faster than fp32; fp32 elsewhere (emulated bf16 is slower).
  Parameters, optimiser states, norms' statistics and the losses stay fp32 either way (autocast computes convs
  and matmuls in bf16 only; our losses cast to fp32). `amr-fast bench train` measures both precisions, and
  `launch/bench/bf16-quality.sh` compares their quality (README, "Training speed").
- `ACCELERATE_MIXED_PRECISION` bf16 / fp16 (set by `accelerate launch --mixed_precision ...` or a launch YAML)
  wins over auto; its "no" (accelerate launch's default) does not: a plain run and a launched one get the same.
- `AMR_FAST_CPU_BF16=0` / `=1` forces the CPU answer (tests, or a CPU whose flags mislead).

`choose_precision(requested, device_type)` returns Accelerate's `mixed_precision` string: "no", "bf16" or "fp16";
`precision_choice` also says why (the first lines of every run's log).

The other CPU setting every run gets: `keep_freed_memory()` (glibc's malloc keeps freed blocks up to 32 MB for
reuse instead of returning them to the system: see its docstring).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 "flags", ARM "Features"); empty where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (avx512_bf16 / amx_bf16 on x86, bf16 on ARM), so that bf16
    autocast is faster than fp32. `AMR_FAST_CPU_BF16=0|1` overrides the detection."""
    forced = os.environ.get("AMR_FAST_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    return any(f in flags for f in CPU_BF16_FLAGS) or "bf16" in flags  # plain AVX512 emulates bf16: no faster


def choose_precision(requested: str, device_type: str) -> str:
    """Accelerate's mixed_precision ("no", "bf16", "fp16") for a config's `precision` on `device_type`."""
    return precision_choice(requested, device_type)[0]


def precision_choice(requested: str, device_type: str) -> tuple[str, str]:
    """(Accelerate's mixed_precision, why): THE rule, whatever the launcher (plain, `accelerate launch`, torchrun,
    Slurm). An explicit precision is the config's. "auto": a launcher's `--mixed_precision bf16|fp16` (its
    ACCELERATE_MIXED_PRECISION), else the device's answer. A launcher's "no" is the default of `accelerate launch`,
    indistinguishable from a choice: it never turns auto into fp32 (precision=fp32 does)."""
    if requested != "auto":
        return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[requested], f"precision={requested} in the config"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("bf16", "fp16"):
        return launched, f"precision=auto: the launcher's --mixed_precision {launched}"
    if device_type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16" if ok else "no"), f"precision=auto: this GPU {'supports' if ok else 'lacks'} bf16"
    if device_type == "cpu":
        forced = os.environ.get("AMR_FAST_CPU_BF16", "").strip() in ("0", "1")
        native = cpu_has_native_bf16()
        why = "AMR_FAST_CPU_BF16 says" if forced else "/proc/cpuinfo says"
        what = "computes bf16 natively" if native else "has no native bf16 (emulated bf16 is slower than fp32)"
        return ("bf16" if native else "no"), f"precision=auto: this CPU {what} ({why})"
    return "no", f"precision=auto: fp32 on {device_type}"


def autocast(precision: str, device_type: str = "cpu"):
    """A context-manager factory for a run's `precision` ("fp32", "bf16" or "fp16") on `device_type`, as
    Accelerate's `accelerator.autocast` gives the trainers (for code that times their steps without a run)."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return functools.partial(torch.autocast, device_type, dtype=dtype)
    raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")


def default_device_type() -> str:
    """The device a single-process run without `accelerate launch` trains on: "cuda" if available, else "cpu"."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """On glibc, serve the training step's large temporaries (activations and their gradients, up to 32 MB each)
    from the heap and keep freed ones for the next iteration: by default blocks above a (self-adjusting) threshold
    are fresh mmaps that the kernel zero-fills page by page on first touch, every iteration (README, "Training
    speed", has what it gains). Peak memory is the same; freed memory stays with the process. `AMR_FAST_MALLOC=0`
    leaves malloc alone. Returns whether it took effect."""
    if os.environ.get("AMR_FAST_MALLOC", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
