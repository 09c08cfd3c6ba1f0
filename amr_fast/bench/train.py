"""`amr-fast bench train`: training images/s of our step next to the public AMR code's schedule, same networks.

Measures the 32x32 AMR model with mixup k = 2 (the Fashion-MNIST preset: 32x32x1, 32-dim code, batch 64,
autoencoder updated every 5th iteration) and the 64x64 dSprites model, on synthetic uint8 batches (the data
loader is not measured: `amr-fast bench data` does that), in one process, side by side:

- **ours**: `amr_fast.train.train_iteration`, exactly the step the trainer runs: one encoder/decoder pass per
  iteration, with autograd only on the iterations that update the autoencoder; x_rec and x_mix decoded in one
  batched call; D on real/rec/mix in one batched call; mixing with `amr_fast.kernels` (impl "auto").
- **reference**: the public code's schedule (`SwapGAN.train_on_instance`, Beckham et al. 2019) written out in
  `amr_fast.bench.reference`: EVERY iteration runs the encoder and both decoder passes with autograd and D twice
  over; mixing through `amr_fast.mixing` (the plain-torch spec). Same networks, same losses, same optimisers.

Iterations are timed in whole cycles of `ae_every` (so both paths do the same number of autoencoder updates),
alternating ours / reference rounds so machine noise hits both. Reported: images per wall-clock second and per
CPU-second of this process (on a shared machine the second is the steadier figure), the speed-ups,
and the encoder / decoder / discriminator calls per iteration (a batched call counts once; its batch size is in
the JSON). Then the ceiling (FLOPs per image against a typical convolution's measured GFLOP/s) and the end-to-end
rows (`amr_fast.bench.train_e2e`).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from amr_fast.bench.common import names, precisions, setup, write_json
from amr_fast.bench.reference import ReferenceStep
from amr_fast.bench.train_e2e import e2e_rows, end_to_end
from amr_fast.config import TrainConfig
from amr_fast.models import build_networks
from amr_fast.precision import autocast, choose_precision
from amr_fast.presets import PRESETS
from amr_fast.train import Parts, train_iteration

MODELS = {
    "amr32-mixup": ("fashion-mnist-mixup", {}),
    "dsprites64-mixup": ("dsprites-mixup", {}),
}


def _batch(cfg: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (cfg.batch, cfg.channels, cfg.img_size, cfg.img_size), generator=g, dtype=torch.uint8)
    return {"x": x, "y": torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)}


def _ours(cfg: TrainConfig, seed: int, precision: str = "fp32"):
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    if cfg.channels_last:
        for net in nets.values():
            net.to(memory_format=torch.channels_last)
    parts = Parts.build(dataclasses.replace(cfg, seed=seed), nets, autocast=autocast(precision))
    state = {"it": 0}

    def step(batch):
        train_iteration(parts, [batch], state["it"] % cfg.ae_every == 0, step=state["it"])
        state["it"] += 1

    return step, parts.loss.passes


def _reference(cfg: TrainConfig, seed: int):
    torch.manual_seed(seed)
    ref = ReferenceStep(cfg, build_networks(cfg), torch.Generator().manual_seed(seed))
    return ref, ref.passes


def bench_model(
    cfg: TrainConfig, cycles: int, rounds: int, warmup_cycles: int = 1, variants: dict[str, dict] | None = None
) -> dict:
    """Time ours (cfg, and cfg with each of `variants`' field changes) and the reference on `cfg` (batch cfg.batch):
    `rounds` alternating rounds of `cycles` x ae_every iterations per path."""
    batches = [_batch(cfg, i) for i in range(cfg.ae_every)]
    paths = {"ours": _ours(cfg, 0)}
    for name, changes in (variants or {}).items():
        fields = {k: v for k, v in changes.items() if k != "precision"}
        paths[name] = _ours(dataclasses.replace(cfg, **fields), 0, changes.get("precision", "fp32"))
    paths["reference"] = _reference(cfg, 0)
    n_iter = cycles * cfg.ae_every
    seconds = {name: 0.0 for name in paths}
    cpu_seconds = {name: 0.0 for name in paths}
    per_iter = {}
    for name, (step, passes) in paths.items():  # warm-up (allocator, first-call costs), then count passes
        for i in range(warmup_cycles * cfg.ae_every):
            step(batches[i % len(batches)])
        before = dict(passes)
        for i in range(cfg.ae_every):
            step(batches[i])
        per_iter[name] = {k: (passes[k] - before[k]) / cfg.ae_every for k in passes}
    for _ in range(rounds):
        for name, (step, _) in paths.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n_iter):
                step(batches[i % len(batches)])
            seconds[name] += time.perf_counter() - t0
            cpu_seconds[name] += time.process_time() - c0
    images = rounds * n_iter * cfg.batch
    out = {
        name: {
            "img_per_s": images / seconds[name],
            "img_per_cpu_s": images / cpu_seconds[name],
            "ms_per_iter": 1000 * seconds[name] / (rounds * n_iter),
            "cpu_ms_per_iter": 1000 * cpu_seconds[name] / (rounds * n_iter),
            "calls_per_iter": per_iter[name],
        }
        for name in paths
    }
    for name in paths:
        if name != "reference":
            out[name]["speedup"] = out[name]["img_per_s"] / out["reference"]["img_per_s"]
            out[name]["speedup_cpu_time"] = out[name]["img_per_cpu_s"] / out["reference"]["img_per_cpu_s"]
            out[name]["changes"] = (variants or {}).get(name, {})
    out["iterations"] = rounds * n_iter
    out["batch"] = cfg.batch
    out["ae_every"] = cfg.ae_every
    keys = ("arch", "img_size", "channels", "width", "code_channels", "code_dim", "mixer", "k", "recon")
    out["config"] = {k: getattr(cfg, k) for k in keys + ("channels_last", "compile")}
    out["batched_call_sizes"] = "ours: enc B, dec 2B (rec+mix), D 3B (real+rec+mix) and 2B (ae phase); ref: all B"
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--cycles", type=int, default=2, help="ae_every-iteration cycles per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ours/reference rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument(
        "--variants",
        default="channels_last",
        help="comma-separated extra runs of ours with one config field flipped: channels_last, compile ('' = none)",
    )
    parser.add_argument("--precisions", default="auto", help="comma-separated fp32,bf16 for our step; auto: fp32, "
                        "plus bf16 where the CPU has native bf16 (amr_fast.precision)")  # fmt: skip
    parser.add_argument("--e2e-kimg", type=float, default=4.0, help="end-to-end rows: kimg of each `amr-fast train` "
                        "run on real shards (0 = skip the end-to-end rows)")  # fmt: skip
    parser.add_argument(
        "--data",
        default=None,
        help="shards for the end-to-end rows (default: Fashion-MNIST 32x32 sharded once into the cache from "
        "/usr/share/datasets/fashion-mnist, else generated)",
    )
    parser.add_argument(
        "--public",
        default="public-amr",
        help="the public AMR code with its bench.sh (README, 'Training speed'): its loop is alternated with ours "
        "(skipped if absent; '' = skip)",
    )
    parser.add_argument("--pairs", type=int, default=2, help="public-loop / our-loop pairs, alternated A B A B")
    parser.add_argument("--public-iters", type=int, default=0, help="timed iterations of the public loop per run "
                        "(0: its bench.sh default, 250 after 60 warm-up)")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    results = setup(args) | {"device": "cpu", "auto_precision": choose_precision("auto", "cpu"), "models": {}}
    models = names(args.models, MODELS)
    measured = precisions(args.precisions)
    extra = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(extra) - {"channels_last", "compile"}:
        raise ValueError(f"--variants takes channels_last and/or compile; got {args.variants!r}")
    for name in models:
        preset, overrides = MODELS[name]
        cfg = dataclasses.replace(PRESETS[preset], impl="auto", **overrides).validate()
        results["models"][name] = r = bench_with_ceiling(cfg, args, measured, extra)
        print(_table_rows(name, r), flush=True)
    results["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.e2e_kimg > 0 and "amr32-mixup" in models:
        results["end_to_end"] = e2e = end_to_end(args, results["models"]["amr32-mixup"])
        print(e2e_rows(e2e), flush=True)
    write_json(args.out, results)
    return 0


def bench_with_ceiling(cfg: TrainConfig, args: argparse.Namespace, measured: list[str], extra: list[str]) -> dict:
    """`bench_model` of cfg in each precision of `measured` (and each with the fields of `extra` flipped), then the
    FLOPs per image, the typical conv's roofline and each row's fraction of it."""
    variants: dict[str, dict] = {}
    for p in measured:
        tag = "ours" if p == "fp32" else f"ours {p}"
        if p != "fp32":
            variants[tag] = {"precision": p}
        for v in extra:  # the field flipped: "+channels_last" turns it on, "-channels_last" off
            variants[f"{tag}{'-' if getattr(cfg, v) else '+'}{v}"] = {"precision": p, v: not getattr(cfg, v)}
    r = bench_model(cfg, args.cycles, args.rounds, variants=variants)
    measured = list(dict.fromkeys(["fp32", *measured]))  # "ours" (fp32) is always there
    r["flops_per_image"] = {p: flops_per_image(cfg, p) for p in measured}
    r["conv_roofline"] = {p: conv_roofline(cfg, p) for p in measured}
    for path, row in r.items():  # the reference does more FLOPs per image than ours: no fraction for it
        if path != "reference" and isinstance(row, dict) and "img_per_s" in row:
            p = (row.get("changes") or {}).get("precision", "fp32")
            roof = r["conv_roofline"].get(p) or r["conv_roofline"]["fp32"]
            row["roofline_fraction"] = row["img_per_s"] * r["flops_per_image"]["fp32"] / 1e9 / roof["gflop_per_s"]
    return r


def _table_rows(name: str, r: dict) -> str:
    lines = []
    for path, p in r.items():
        if not isinstance(p, dict) or "img_per_s" not in p:
            continue
        calls = p["calls_per_iter"]
        speed = f"  {p['speedup']:.2f}x wall {p['speedup_cpu_time']:.2f}x cpu" if "speedup" in p else ""
        roof = f"  {p['roofline_fraction']:.0%} of roofline" if "roofline_fraction" in p else ""
        lines.append(
            f"{name:<17} {path:<26} {p['img_per_s']:7.1f} img/s {p['img_per_cpu_s']:7.1f} img/cpu-s  "
            f"enc {calls['enc']:.1f} dec {calls['dec']:.1f} disc {calls['disc']:.1f} calls/iter{speed}{roof}"
        )
    for prec, roof in r.get("conv_roofline", {}).items():
        flops = r["flops_per_image"]["fp32"]
        lines.append(
            f"{name:<17} {prec}: {flops / 1e6:.0f} MFLOP/image; typical conv ({roof['channels']}ch {roof['side']}x"
            f"{roof['side']}, batch {roof['batch']}, fwd+bwd) {roof['gflop_per_s']:.0f} GFLOP/s -> roofline "
            f"{roof['gflop_per_s'] * 1e9 / flops:.0f} img/s"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The ceiling: FLOPs per image of our step, and the measured throughput of a typical convolution of the model.


def flops_per_image(cfg: TrainConfig, precision: str = "fp32") -> float:
    """FLOPs of our step per training image, counted by torch's FlopCounterMode over one ae_every cycle (forward
    and backward of every conv / matmul; elementwise ops, norms and pooling are not counted)."""
    step, _ = _ours(cfg, 0, precision)
    batches = [_batch(cfg, i) for i in range(cfg.ae_every)]
    with FlopCounterMode(display=False) as counter:
        for b in batches:
            step(b)
    return counter.get_total_flops() / (cfg.ae_every * cfg.batch)


def typical_conv(cfg: TrainConfig) -> dict:
    """The model's middle 3x3 convolution (width << 1 channels in and out, at the second scale), on D's batched
    call (3 x batch images): the shape that dominates the step's FLOPs."""
    c = cfg.width << 1
    side = (cfg.img_size + 2) // 2  # the public stem's 34x34 maps pooled once (17 for 32x32)
    return {"batch": 3 * cfg.batch, "channels": c, "side": side}


def conv_roofline(cfg: TrainConfig, precision: str, seconds: float = 1.0) -> dict:
    """GFLOP/s of the typical conv's forward + backward (input and weight gradients) in `precision`, in the
    memory format of `cfg.channels_last`: the achievable ceiling we compare the step against."""
    shape = typical_conv(cfg)
    conv = torch.nn.Conv2d(shape["channels"], shape["channels"], 3, padding=1)
    x = torch.randn(shape["batch"], shape["channels"], shape["side"], shape["side"])
    if cfg.channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    amp = autocast(precision)

    def once():
        with amp():
            y = conv(x)
        y.backward(torch.ones_like(y))

    with FlopCounterMode(display=False) as counter:
        once()
    flops = counter.get_total_flops()
    for _ in range(3):
        once()
    n, t0 = 0, time.perf_counter()
    c0 = time.process_time()
    while time.perf_counter() - t0 < seconds or n < 5:
        once()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**shape, "gflop": flops / 1e9, "gflop_per_s": n * flops / wall / 1e9,
            "gflop_per_cpu_s": n * flops / cpu / 1e9}  # fmt: skip
