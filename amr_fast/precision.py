"""`precision=auto`: which mixed precision a run gets on the device it runs on (one place, for every trainer).

- CUDA: bf16 autocast where the GPU supports it, else fp32 (unchanged from before).
- CPU: bf16 autocast where the CPU computes bf16 natively (x86 `avx512_bf16` or `amx_bf16`, ARM `bf16`), where
  oneDNN's bf16 convolutions and matmuls run 2-3x faster than fp32; fp32 elsewhere (emulated bf16 is slower).
  Parameters, optimiser states, norms' statistics and the losses stay fp32 either way (autocast computes convs
  and matmuls in bf16 only; our losses cast to fp32). `amr-fast bench train` measures both precisions, and
  `launch/bench/bf16-quality.sh` compares their quality (README, "Training speed").
- `ACCELERATE_MIXED_PRECISION` (set by `accelerate launch --mixed_precision ...` or a launch YAML) wins over auto.
- `AMR_FAST_CPU_BF16=0` / `=1` forces the CPU answer (tests, or a CPU whose flags mislead).

`choose_precision(requested, device_type)` returns Accelerate's `mixed_precision` string: "no", "bf16" or "fp16".
"""

from __future__ import annotations

import functools
import os

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
    if requested != "auto":
        return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[requested]
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched:
        return launched
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def default_device_type() -> str:
    """The device a single-process run without `accelerate launch` trains on: "cuda" if available, else "cpu"."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
