"""`amr-fast bench train`: training images/s of our step next to the public AMR code's schedule, same networks.

Measures the 32x32 AMR model with mixup k = 2 (the Fashion-MNIST preset: 32x32x1, 32-dim code, batch 64,
autoencoder updated every 5th iteration) and the 64x64 dSprites model, on synthetic uint8 batches (the data
loader is not measured: `amr-fast bench data` does that), in one process, side by side:

- **ours**: `amr_fast.train.train_iteration`, exactly the step the trainer runs: one encoder/decoder pass per
  iteration, with autograd only on the iterations that update the autoencoder; x_rec and x_mix decoded in one
  batched call; D on real/rec/mix in one batched call; mixing with `amr_fast.kernels` (impl "auto").
- **reference**: the public code's schedule (`SwapGAN.train_on_instance`, Beckham et al. 2019) written out here:
  EVERY iteration runs the encoder and both decoder passes with autograd and D on x_rec and x_mix for the
  autoencoder's loss (its backward only every 5th iteration), then recomputes D on x, x_rec and x_mix for D's own
  loss; mixing through `amr_fast.mixing` (the plain-torch spec, impl "ref"). Same networks, same losses
  (`amr_fast.losses.recon_loss` / `gan_loss`), same optimisers.

Iterations are timed in whole cycles of `ae_every` (so both paths do the same number of autoencoder updates),
alternating ours / reference rounds so machine noise hits both. Reported: images per wall-clock second and per
CPU-second of this process (on a shared machine the second is the steadier figure), the speed-ups,
and the encoder / decoder / discriminator calls per iteration (a batched call counts once; its batch size is in
the JSON). The public code itself reaches about 160 img/s for the 32x32 model on this 2-core CPU (issue 4).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from amr_fast import data as amr_data
from amr_fast import mixing
from amr_fast import stats as amr_stats
from amr_fast.config import TrainConfig, probe_adam_args
from amr_fast.data import to_unit
from amr_fast.data.builtin import cache_dir
from amr_fast.losses import gan_loss, recon_loss
from amr_fast.models import build_networks
from amr_fast.precision import choose_precision, cpu_has_native_bf16, keep_freed_memory
from amr_fast.presets import PRESETS
from amr_fast.train import Parts, train_iteration

MODELS = {
    "amr32-mixup": ("fashion-mnist-mixup", {}),
    "dsprites64-mixup": ("dsprites-mixup", {}),
}


def _optimisers(cfg: TrainConfig, nets: dict) -> tuple[torch.optim.Optimizer, ...]:
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return (
        torch.optim.Adam(nets["ae"].parameters(), **adam),
        torch.optim.Adam(nets["disc"].parameters(), **adam),
        torch.optim.Adam(nets["probe"].parameters(), **probe_adam_args(cfg)),
    )


def _batch(cfg: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (cfg.batch, cfg.channels, cfg.img_size, cfg.img_size), generator=g, dtype=torch.uint8)
    return {"x": x, "y": torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)}


# ---------------------------------------------------------------------------------------------------------------
# The public code's schedule, k = 2 mixup (models/swapgan.py train_on_instance + models/twogan.py mix).


class ReferenceStep:
    """One iteration of the public AMR code's schedule on our networks (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, nets: dict, generator: torch.Generator) -> None:
        if cfg.mixer != "mixup" or cfg.k != 2 or cfg.method != "amr":
            raise ValueError("the reference schedule is written for method=amr, mixer=mixup, k=2")
        self.cfg, self.g = cfg, generator
        self.ae, self.disc, self.probe = nets["ae"], nets["disc"], nets["probe"]
        self.opt_ae, self.opt_disc, self.opt_probe = _optimisers(cfg, nets)
        self.passes = {"enc": 0, "dec": 0, "disc": 0}
        self.it = 0

    def _dec(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.passes["dec"] += 1
        return self.ae.decode_with_logits(h)

    def _disc(self, x: torch.Tensor) -> torch.Tensor:
        self.passes["disc"] += 1
        return self.disc(x)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        x = to_unit(batch["x"])
        y = batch["y"]
        for opt in (self.opt_ae, self.opt_disc, self.opt_probe):
            opt.zero_grad()
        # Autoencoder's loss, built every iteration (with autograd), stepped every ae_every-th.
        self.passes["enc"] += 1
        h = self.ae.encode(x)
        x_rec, logits = self._dec(h)
        recon = recon_loss(cfg.recon, x_rec, logits, x)
        g_rec = gan_loss(self._disc(x_rec), 1.0)
        perm = mixing.sample_perm(2, x.shape[0], self.g)
        w = mixing.sample_uniform_weights(x.shape[0], self.g)
        h_mix = mixing.simplex_mix(h, perm, w)
        x_mix, _ = self._dec(h_mix)
        g_mix = gan_loss(self._disc(x_mix), 1.0)
        gen_loss = cfg.lamb * recon + g_rec + g_mix
        if self.it % cfg.ae_every == 0:
            gen_loss.backward()
            self.opt_ae.step()
        # Discriminator: recomputed on x, x_rec and x_mix.
        self.opt_disc.zero_grad()
        d_loss = gan_loss(self._disc(x), 1.0) + gan_loss(self._disc(x_rec.detach()), 0.0)
        d_loss = d_loss + gan_loss(self._disc(x_mix.detach()), 0.0)
        d_loss.backward()
        self.opt_disc.step()
        # Probe on the detached code.
        F.cross_entropy(self.probe(h.detach().flatten(1)), y).backward()
        self.opt_probe.step()
        self.it += 1


# ---------------------------------------------------------------------------------------------------------------


def autocast_factory(precision: str, device: str = "cpu"):
    """A context-manager factory for `precision` ("fp32" or "bf16"), as the trainer's accelerator.autocast."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "bf16":
        return lambda: torch.autocast(device, dtype=torch.bfloat16)
    raise ValueError(f"precision must be fp32 or bf16 here; got {precision!r}")


def _ours(cfg: TrainConfig, seed: int, precision: str = "fp32"):
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    if cfg.channels_last:
        for net in nets.values():
            net.to(memory_format=torch.channels_last)
    parts = Parts.build(dataclasses.replace(cfg, seed=seed), nets, autocast=autocast_factory(precision))
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


def _precisions(spec: str) -> list[str]:
    if spec == "auto":
        return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    out = [p.strip() for p in spec.split(",") if p.strip()]
    if not out or set(out) - {"fp32", "bf16"}:
        raise ValueError(f"--precisions takes fp32 and/or bf16 (or auto); got {spec!r}")
    return out


def main(args: argparse.Namespace) -> int:
    keep_freed_memory()  # as the trainers do on a CPU (amr_fast.run.Run)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
               "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "device": "cpu", "auto_precision": choose_precision("auto", "cpu"), "models": {}}  # fmt: skip
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    precisions = _precisions(args.precisions)
    extra = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(extra) - {"channels_last", "compile"}:
        raise ValueError(f"--variants takes channels_last and/or compile; got {args.variants!r}")
    for name in names:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        preset, overrides = MODELS[name]
        cfg = dataclasses.replace(PRESETS[preset], impl="auto", **overrides).validate()
        variants: dict[str, dict] = {}
        for p in precisions:
            tag = "ours" if p == "fp32" else f"ours {p}"
            if p != "fp32":
                variants[tag] = {"precision": p}
            for v in extra:  # the field flipped: "+channels_last" turns it on, "-channels_last" off
                variants[f"{tag}{'-' if getattr(cfg, v) else '+'}{v}"] = {"precision": p, v: not getattr(cfg, v)}
        r = bench_model(cfg, args.cycles, args.rounds, variants=variants)
        measured = list(dict.fromkeys(["fp32", *precisions]))  # "ours" (fp32) is always there
        r["flops_per_image"] = {p: flops_per_image(cfg, p) for p in measured}
        r["conv_roofline"] = {p: conv_roofline(cfg, p) for p in measured}
        for path, row in r.items():  # the reference does more FLOPs per image than ours: no fraction for it
            if path != "reference" and isinstance(row, dict) and "img_per_s" in row:
                p = (row.get("changes") or {}).get("precision", "fp32")
                roof = r["conv_roofline"].get(p) or r["conv_roofline"]["fp32"]
                row["roofline_fraction"] = row["img_per_s"] * r["flops_per_image"]["fp32"] / 1e9 / roof["gflop_per_s"]
        results["models"][name] = r
        print(_table_rows(name, r), flush=True)
    results["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.e2e_kimg > 0 and "amr32-mixup" in names:
        results["end_to_end"] = e2e = _end_to_end(args, results["models"]["amr32-mixup"], tempfile)
        print(_e2e_rows(e2e), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def _end_to_end(args: argparse.Namespace, step: dict, tempfile) -> dict:
    """The default config's `amr-fast train` (and fp32), then the public loop and ours alternated A B A B."""
    data = Path(args.data) if args.data else default_data_root()
    public = Path(args.public) if args.public else None
    out: dict = {"data": str(data), "kimg": args.e2e_kimg, "runs": {}, "pairs": []}
    with tempfile.TemporaryDirectory(prefix="amr-bench-e2e-") as tmp:
        work = Path(tmp)
        out["runs"]["train, default config"] = run_train_e2e(data, args.e2e_kimg, {}, work)
        out["runs"]["train, procs=1"] = run_train_e2e(data, args.e2e_kimg, {"procs": "1"}, work)
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


def _e2e_rows(e2e: dict) -> str:
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
    autocast = autocast_factory(precision)

    def once():
        with autocast():
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


# ---------------------------------------------------------------------------------------------------------------
# End to end: the real `amr-fast train` loop on real shards, and the public AMR code's own loop, in child processes
# (their peak RSS is their own), alternated A B A B.

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


def run_train_e2e(data: Path, kimg: float, overrides: dict[str, str], workdir: Path, name: str = "") -> dict:
    """`amr-fast train --preset fashion-mnist-mixup` (the default config plus `overrides`; `procs=N` chooses the
    number of processes, by default one per core on a CPU) for `kimg` on `data`, ticks every kimg / 8, no probe /
    snapshot / state until the end: img/s over the steady ticks (all but the first, which holds start-up; the
    end-of-run evaluation is timed apart by the trainer, `sec/eval`). Peak RSS: the command's own process (with
    several processes, the launcher's; each data-parallel process holds its own copy of the model)."""
    outdir = workdir / f"train-{name or len(list(workdir.glob('train-*')))}"
    shutil.rmtree(outdir, ignore_errors=True)
    args = {"total_kimg": kimg, "tick_kimg": kimg / 8, "probe_kimg": 10 * kimg, "snapshot_kimg": 10 * kimg,
            "state_kimg": 10 * kimg, **overrides}  # fmt: skip
    rss = workdir / f"rss-{outdir.name}.txt"
    cmd = [sys.executable, "-c", _HWM_MAIN, str(rss), "train", "--preset", "fashion-mnist-mixup"]
    cmd += ["--outdir", str(outdir), f"data={data}"] + [f"{k}={v}" for k, v in args.items()]
    rc, info = _child(cmd)
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
            "overrides": overrides, "processes": procs}  # fmt: skip


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
