"""`amr-fast train`: the AMR training loop (Beckham et al., NeurIPS 2019, section 3) on Accelerate, in images.

One iteration consumes one global batch of `cfg.batch` images, split into per-device micro-batches of `batch_gpu`
(gradient accumulation makes up the rest). For every micro-batch `AMRLoss.begin()` encodes and decodes once and
draws the mixes (the autoencoder's forward pass carries gradients only on the iterations that update it, every
`ae_every`-th, as the public code's `update_g_every`); then the phases accumulate gradients, each with
`requires_grad` on its own module only: `ae` (autoencoder + class mixer; every `ae_every`-th iteration), `disc`
(every iteration) and `probe` (the online linear probe on the detached code, every iteration). Gradients of the
updated modules are averaged across ranks in ONE all-reduce of a flat buffer (our modules are called through
`ae.encode` / `ae.decode`, which DDP's forward hooks would not see, so we do not wrap them in DDP), the same
buffer carries the non-finite and stop flags, and the optimisers step unless a loss or gradient is non-finite:
such a step is skipped and counted, `max_nonfinite` in a row stop the run. That flag is the only host sync of an
iteration; metrics are reported with `amr_fast.stats.report` and reduced once per tick.

Every `tick_kimg`: a status line and a `stats.jsonl` row. Every `probe_kimg`: the online probe's exact
validation accuracy (every rank evaluates its share), and the test accuracy whenever validation improves (the
paper reports the best validation accuracy). Every `snapshot_kimg`: `snapshot-<kimg>.safetensors` and
`samples-<kimg>.png`. Every `state_kimg`: `state-<kimg>/` (Accelerate state, loop counters, generator states).
Re-running the same command resumes from the newest complete state; SIGTERM / SIGINT save a state and exit.

Run it (from the repository root; the same flags everywhere, the launcher decides the processes):

    amr-fast train --preset demo --outdir runs/demo                         # 1 process: CPU or 1 GPU
    amr-fast train --preset mnist-mixup --outdir runs/mnist data=/data/mnist-32
    accelerate launch --config_file launch/accelerate/1gpu-bf16.yaml -m amr_fast.cli train --preset ... --outdir ...
    accelerate launch --config_file launch/accelerate/1node-8gpu.yaml -m amr_fast.cli train --preset ... --outdir ...
    accelerate launch --config_file launch/accelerate/2node-8gpu.yaml --machine_rank $NODE_RANK \\
        --main_process_ip $MASTER_ADDR -m amr_fast.cli train --preset ... --outdir /shared/runs/x    # 2 nodes x 8
    ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/accelerate/cpu-2proc.yaml \\
        -m amr_fast.cli train --preset demo --outdir runs/demo2                                    # CPU x 2

`launch/slurm.sbatch` runs the multi-node command under Slurm, `launch/recipes/<preset>.sh` one per table row.
(`accelerate launch --cpu --num_processes 2` silently starts ONE process; the loop checks WORLD_SIZE.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from amr_fast import checkpoint, stats

# Fields that may differ when a run is resumed (schedule and runtime knobs); every other field must match.
RESUMABLE_FIELDS = ("total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "probe_kimg", "compile", "channels_last")
FP16_SCALE_GROWTH = 2000  # fp16 dynamic loss scaling: double the scale after this many good steps in a row
STATUS_KEYS = ("kimg", "time", "sec/tick", "img/s", "loss/ae", "loss/recon", "loss/disc", "probe/acc", "nonfinite")


# ---------------------------------------------------------------------------------------------------------------
# One iteration (shared with `amr-fast bench train`, which times exactly this).


@dataclass
class Parts:
    """What one training iteration touches. `ae_modules` are updated by the `ae` phase (autoencoder and, for the
    supervised mixer, the class mixer)."""

    ae: torch.nn.Module
    disc: torch.nn.Module
    probe: torch.nn.Module
    ae_modules: list[torch.nn.Module]
    opt_ae: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    opt_probe: torch.optim.Optimizer
    loss: object  # amr_fast.losses.AMRLoss
    generator: torch.Generator
    device: torch.device
    world_size: int = 1
    channels_last: bool = False
    autocast: Callable = contextlib.nullcontext  # a context-manager factory (accelerator.autocast)
    loss_scale: float = 1.0  # fp16 only: dynamic loss scale


def to_device_batch(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] -> x in [-1, 1] float32 on `device`; float inputs (spiral points) pass as they are."""
    x = batch["x"].to(device, non_blocking=True)
    x = x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch["y"].to(device, non_blocking=True).long()


def _reduce_gradients(params: list[torch.Tensor], flags: torch.Tensor, world_size: int) -> torch.Tensor:
    """Average the gradients of `params` over ranks in one all-reduce of a flat buffer and sum `flags` (float32
    [F]) over ranks; returns the summed flags. A parameter without a gradient counts as zeros on every rank."""
    if world_size <= 1:
        return flags
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten().float() for g in grads] + [flags.float()])
    dist.all_reduce(flat)
    n = flat.numel() - flags.numel()
    flat[:n].div_(world_size)
    offset = 0
    for p, g in zip(params, grads):
        chunk = flat[offset : offset + g.numel()].view(p.shape)
        if p.grad is None:
            p.grad = chunk.to(p.dtype).clone()
        else:
            p.grad.copy_(chunk)
        offset += g.numel()
    return flat[n:]


def train_iteration(
    parts: Parts, batches: list[dict], update_ae: bool, stop: bool = False
) -> tuple[str, bool, list[dict[str, torch.Tensor]]]:
    """One optimisation step over the micro-batches of one global batch (per rank). Returns (status, stop requested
    on any rank, the phases' reported scalars); status "ok" (stepped), "loss" (a non-finite loss on some rank: step
    skipped) or "grad" (finite losses but a non-finite gradient, e.g. an fp16 overflow: step skipped)."""
    gain = parts.loss_scale / len(batches)
    groups = ([(parts.ae_modules, parts.opt_ae)] if update_ae else []) + [
        ([parts.disc], parts.opt_disc),
        ([parts.probe], parts.opt_probe),
    ]
    reported: list[dict[str, torch.Tensor]] = []
    for batch in batches:
        x, y = to_device_batch(batch, parts.device, parts.channels_last)
        with parts.autocast():
            parts.loss.begin(x, y, update_ae, parts.generator)  # one enc/dec forward; autograd only if update_ae
            for phase in ("ae", "disc", "probe") if update_ae else ("disc", "probe"):
                reported.append(parts.loss.accumulate_gradients(phase, gain))  # requires_grad: own modules only

    params = [p for modules, _ in groups for m in modules for p in m.parameters()]
    values = [v.detach().float().reshape(-1) for r in reported for v in r.values()]
    loss_bad = (~torch.isfinite(torch.cat(values))).sum().float() if values else torch.zeros((), device=parts.device)
    flags = torch.stack([loss_bad, torch.tensor(float(stop), device=loss_bad.device)]).to(parts.device)
    flags = _reduce_gradients(params, flags, parts.world_size)
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=parts.device)
    check = torch.stack([flags[0].float(), (~torch.isfinite(grad_norm)).float().to(flags.device), flags[1].float()])
    loss_bad_n, grad_bad, stop_n = check.tolist()  # THE host sync of an iteration
    status = "loss" if loss_bad_n else "grad" if grad_bad else "ok"
    if status == "ok":
        if parts.loss_scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / parts.loss_scale)
        for _, opt in groups:
            opt.step()
    for _, opt in groups:
        opt.zero_grad(set_to_none=True)
    return status, stop_n > 0, reported


# ---------------------------------------------------------------------------------------------------------------
# Helpers of the loop.


def cache_dir() -> Path:
    return Path(os.environ.get("AMR_FAST_CACHE", "~/.cache/amr_fast")).expanduser()


def _mixed_precision(cfg) -> str:
    from amr_fast.precision import choose_precision, default_device_type

    return choose_precision(cfg.precision, default_device_type())


def _check_world_size(num_processes: int) -> None:
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes != expected:
        raise ValueError(
            f"Accelerate runs {num_processes} process(es) but WORLD_SIZE={expected}; on CPU launch with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...` (`--cpu --num_processes N` "
            "silently starts one process) or with torchrun"
        )


def _check_resume_config(cfg, outdir: Path) -> None:
    from amr_fast.config import from_dict

    path = outdir / "config.json"
    if not path.exists() or checkpoint.find_latest_state(outdir) is None:
        return
    old = from_dict(json.loads(path.read_text()))
    diff = [
        f"{name}: {getattr(old, name)!r} -> {getattr(cfg, name)!r}"
        for name in cfg.__dataclass_fields__
        if name not in RESUMABLE_FIELDS and getattr(old, name) != getattr(cfg, name)
    ]
    if diff:
        raise ValueError(
            f"{outdir} holds a run with a different config ({'; '.join(diff[:4])}); re-run with the same preset and "
            "overrides to resume it, or pass a new --outdir"
        )


def _crossed(prev_nimg: int, nimg: int, kimg: float) -> bool:
    """Did training pass a multiple of `kimg` thousand images between prev_nimg (excluded) and nimg?"""
    step = max(1, round(kimg * 1000))
    return nimg // step > prev_nimg // step


def _fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# Generated datasets ("builtin:NAME"): training-set size when cfg.subset is 0 (the full dSprites grid is 737k images,
# far more than a CPU demo sees), None = everything the generator makes.
BUILTIN_TRAIN_SIZE = {"dsprites-procedural": 20_000, "spiral": None}


def resolve_data_root(cfg, is_main: bool, wait: Callable[[], None]) -> Path:
    """The dataset directory: cfg.data, or for "builtin:NAME" a set generated once into the cache directory
    ($AMR_FAST_CACHE, default ~/.cache/amr_fast) by rank 0 while the other ranks wait."""
    if not cfg.data:
        raise ValueError("no dataset: pass data=DIR (a directory made by `amr-fast shard`) or use the demo preset")
    if not cfg.data.startswith("builtin:"):
        return Path(cfg.data)
    name = cfg.data.split(":", 1)[1]
    if name not in BUILTIN_TRAIN_SIZE:
        raise ValueError(f"unknown builtin dataset {name!r}; choose from {', '.join(BUILTIN_TRAIN_SIZE)}")
    subset = cfg.subset or BUILTIN_TRAIN_SIZE[name]
    root = cache_dir() / f"{name}-{subset or 'all'}"
    if is_main and not (root / "index.json").exists():
        from amr_fast import data as amr_data

        amr_data.make_shards(name, None, root, subset=subset, seed=0)  # index.json is written last
    wait()
    return root


@torch.no_grad()
def probe_accuracy(ae, probe, root: Path, split: str, batch: int, device, rank: int, world_size: int, autocast):
    """Exact accuracy of the online probe on a whole split: each rank classifies its share, counts are summed."""
    from amr_fast import data as amr_data

    was_training = ae.training
    ae.eval()
    probe.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
    for b in amr_data.eval_loader(root, split, batch, rank=rank, world_size=world_size):
        x, y = to_device_batch(b, device, False)
        with autocast():
            logits = probe(ae.encode(x).flatten(1))
        counts[0] += (logits.argmax(dim=1) == y).sum()
        counts[1] += y.numel()
    if world_size > 1:
        dist.all_reduce(counts)
    ae.train(was_training)
    probe.train(was_training)
    correct, total = counts.tolist()
    return correct / total if total else math.nan


class _Log:
    """Rank 0: echo to `log` and append to run/log.txt. Other ranks: silent."""

    def __init__(self, path: Path | None, log: Callable[[str], None] | None) -> None:
        self.path, self.log = path, log

    def __call__(self, line: str) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(line + "\n")
        if self.log is not None:
            self.log(line)


# ---------------------------------------------------------------------------------------------------------------
# The loop.


def training_loop(
    cfg, outdir: str | Path, log: Callable[[str], None] | None = print, tensorboard: bool = False
) -> dict:
    """Train `cfg` into `outdir` (resuming from its newest complete state). Returns a summary (every rank):
    run_dir, kimg, snapshot, samples, probe figures, stopped (True if a signal ended it early).
    tensorboard: rank 0 also writes every stats row and sample grid to `outdir/tensorboard/`."""
    from accelerate import Accelerator

    from amr_fast import data as amr_data
    from amr_fast.config import to_json
    from amr_fast.losses import AMRLoss
    from amr_fast.models import build_networks

    cfg = cfg.validate()
    outdir = Path(outdir)
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg))
    _check_world_size(accelerator.num_processes)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    is_main = accelerator.is_main_process
    tb = None
    if tensorboard and is_main:  # first, so that a missing package fails before any work
        from amr_fast.eval.tensorboard import TensorBoardLogger

        tb = TensorBoardLogger(outdir)
    batch_gpu = cfg.batch_gpu or cfg.batch // world
    if batch_gpu < 1 or cfg.batch % (batch_gpu * world):
        raise ValueError(
            f"batch={cfg.batch} is not a multiple of batch_gpu x processes = {batch_gpu} x {world}; "
            "set batch to a multiple of the number of processes, or batch_gpu to a divisor of batch / processes"
        )
    accum = cfg.batch // (batch_gpu * world)

    if is_main:
        outdir.mkdir(parents=True, exist_ok=True)
        _check_resume_config(cfg, outdir)
        (outdir / "config.json").write_text(to_json(cfg) + "\n")
    accelerator.wait_for_everyone()
    say = _Log(outdir / "log.txt" if is_main else None, log)

    root = resolve_data_root(cfg, is_main, accelerator.wait_for_everyone)
    index = amr_data.load_index(root)
    amr_data.check_index(index, cfg.img_size, cfg.channels)
    if cfg.subset and not cfg.data.startswith("builtin:") and index.get("subset") != cfg.subset:
        raise ValueError(
            f"subset={cfg.subset} but the dataset at {root} was sharded with subset={index.get('subset')}; shard the "
            f"labelled subset with `amr-fast shard SOURCE --subset {cfg.subset} ...` and pass that directory"
        )
    splits = index.get("splits", {})
    probe_split = "valid" if index.get("num_classes", 0) >= 2 and "valid" in splits else None  # spiral: no labels

    # Networks, optimisers, loss. Same seed on every rank -> same init; broadcast anyway (cheap, once).
    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg)
    for net in nets.values():
        net.to(device)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        if world > 1:
            for t in net.state_dict().values():
                dist.broadcast(t, src=0)
    ae, disc, probe, mixer = nets["ae"], nets["disc"], nets["probe"], nets.get("mixer")
    ae_modules = [ae] + ([mixer] if mixer is not None else [])
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    opt_ae = torch.optim.Adam([p for m in ae_modules for p in m.parameters()], **adam)
    opt_disc = torch.optim.Adam(disc.parameters(), **adam)
    opt_probe = torch.optim.Adam(probe.parameters(), lr=cfg.probe_lr)
    loss = AMRLoss(cfg, nets, device)
    if cfg.compile:  # compile the methods the loss calls; instance attributes keep the state_dict keys unchanged
        for net, names in ((ae, ("encode", "decode", "decode_with_logits", "encode_stats")), (disc, ("run",))):
            for name in names:
                if hasattr(net, name):
                    setattr(net, name, torch.compile(getattr(net, name)))
    generator = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + rank)  # mixing draws, per rank
    accelerator.register_for_checkpointing(*nets.values(), opt_ae, opt_disc, opt_probe)

    # Resume.
    loop = {"nimg": 0, "it": 0, "tick_nimg": 0, "nonfinite": 0, "nonfinite_total": 0, "time": 0.0, "loss_scale": 1.0}
    loop.update({"best_valid_acc": None, "best_kimg": None, "test_acc_at_best": None, "valid_acc": None})
    loop.update({"snapshot": None, "samples": None})
    if cfg.precision == "fp16":
        loop["loss_scale"] = 2.0**15
    latest = checkpoint.find_latest_state(outdir)
    if latest is not None:
        saved, rank_tensors = checkpoint.load_state(accelerator, latest)
        loop.update(saved)
        generator.set_state(rank_tensors["generator"])
        if is_main and (outdir / "stats.jsonl").exists():  # drop rows written after that state (killed run)
            rows = [r for r in stats.read_jsonl(outdir / "stats.jsonl") if r.get("nimg", 0) <= loop["nimg"]]
            (outdir / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        say(f"resuming {outdir} from {latest.name} ({loop['nimg'] / 1000:.3f} kimg)")
    else:
        say(f"training {outdir} from scratch")
    stats.reset()

    parts = Parts(
        ae, disc, probe, ae_modules, opt_ae, opt_disc, opt_probe, loss, generator, device, world,
        cfg.channels_last, accelerator.autocast, loop["loss_scale"],
    )  # fmt: skip
    data_iter = iter(
        amr_data.train_loader(
            root, batch_gpu, rank=rank, world_size=world, seed=cfg.seed, workers=cfg.workers,
            start_batch=loop["it"] * accum,
        )
    )  # fmt: skip
    grid_x = grid_y = None
    if is_main:
        grid_split = next((s for s in ("valid", "test", "train") if s in splits), None)
        if grid_split is not None:
            first = next(iter(amr_data.eval_loader(root, grid_split, 16, rank=0, world_size=1)))
            grid_x, grid_y = first["x"][:8].to(device), first["y"][:8].to(device)
    collector = stats.Collector(outdir / "stats.jsonl", device, rank, world, log=say, status_keys=STATUS_KEYS)

    stop_signal = {"flag": False}
    previous_handlers = {}

    def _on_signal(signum, frame):
        stop_signal["flag"] = True
        signal.signal(signum, previous_handlers.get(signum, signal.SIG_DFL))  # a second signal acts at once

    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)

    total_nimg = round(cfg.total_kimg * 1000)
    say(
        f"{world} process(es) on {device}, batch {cfg.batch} = {world} x {batch_gpu} x {accum} accumulation, "
        f"precision {accelerator.mixed_precision}, data {root}, {cfg.total_kimg} kimg"
    )
    start_time, tick_time, tick_start_nimg = time.time() - loop["time"], time.time(), loop["nimg"]
    stopped = False
    if latest is not None and loop["nimg"] >= total_nimg:
        say(f"{outdir} already finished {loop['nimg'] / 1000:.3f} kimg (raise total_kimg=... to train longer)")
        total_nimg = -1  # skip the loop below
    try:
        while total_nimg >= 0:
            done = loop["nimg"] >= total_nimg
            if not done:
                update_ae = loop["it"] % cfg.ae_every == 0
                batches = [next(data_iter) for _ in range(accum)]
                status, stopped, reported = train_iteration(parts, batches, update_ae, stop_signal["flag"])
                if status == "ok":
                    loop["nonfinite"] = 0
                    for r in reported:
                        for name, value in r.items():
                            stats.report(name, value)
                    loop["scale_ok"] = loop.get("scale_ok", 0) + 1
                    if cfg.precision == "fp16" and loop["scale_ok"] % FP16_SCALE_GROWTH == 0:
                        parts.loss_scale = loop["loss_scale"] = min(parts.loss_scale * 2, 2.0**24)
                elif status == "grad" and cfg.precision == "fp16" and parts.loss_scale > 1.0:
                    parts.loss_scale = loop["loss_scale"] = parts.loss_scale / 2  # fp16 overflow: not a divergence
                    loop["scale_ok"] = 0
                    loop["fp16_overflows"] = loop.get("fp16_overflows", 0) + 1
                else:
                    loop["nonfinite"] += 1
                    loop["nonfinite_total"] += 1
                    if loop["nonfinite"] >= cfg.max_nonfinite:
                        raise ValueError(
                            f"{loop['nonfinite']} non-finite losses/gradients in a row at "
                            f"{loop['nimg'] / 1000:.3f} kimg (max_nonfinite={cfg.max_nonfinite}); the run diverged: "
                            "lower lr, use precision=fp32, or check the data; the last state and snapshot in "
                            f"{outdir} are finite"
                        )
                loop["it"] += 1
                loop["nimg"] += cfg.batch
                done = loop["nimg"] >= total_nimg
            if not (done or _crossed(loop["tick_nimg"], loop["nimg"], cfg.tick_kimg)):
                if stopped:
                    break
                continue

            # --- a tick: probe, stats, snapshot, state -------------------------------------------------------
            prev, nimg = loop["tick_nimg"], loop["nimg"]
            row = {"kimg": nimg / 1000, "nimg": nimg, "it": loop["it"]}
            train_end = time.time()  # img/s counts training only: the probe, snapshot and state are timed apart
            if probe_split and (done or _crossed(prev, nimg, cfg.probe_kimg)):
                acc = probe_accuracy(ae, probe, root, "valid", batch_gpu, device, rank, world, accelerator.autocast)
                loop["valid_acc"] = row["probe/valid_acc"] = acc
                if loop["best_valid_acc"] is None or acc > loop["best_valid_acc"]:
                    loop["best_valid_acc"], loop["best_kimg"] = acc, nimg / 1000
                    if "test" in splits:
                        loop["test_acc_at_best"] = probe_accuracy(
                            ae, probe, root, "test", batch_gpu, device, rank, world, accelerator.autocast
                        )
                row["probe/best_valid_acc"] = loop["best_valid_acc"]
                row["probe/test_acc_at_best"] = loop["test_acc_at_best"]
            now = time.time()
            loop["time"] = now - start_time
            row.update(
                {
                    "time": _fmt_time(loop["time"]),
                    "seconds": round(loop["time"], 3),
                    "sec/tick": round(now - tick_time, 3),
                    "img/s": round((nimg - tick_start_nimg) / max(train_end - tick_time, 1e-9), 2),
                    "sec/eval": round(now - train_end, 3),
                    "nonfinite": loop["nonfinite_total"],
                }
            )
            row = collector.tick(row)
            if tb is not None:
                tb.scalars(row, nimg / 1000)
            tick_time, tick_start_nimg = now, nimg
            if done or _crossed(prev, nimg, cfg.snapshot_kimg):
                if is_main:
                    _write_snapshot(outdir, nets, cfg, loop, grid_x, grid_y, device, say, tb)
                accelerator.wait_for_everyone()
            loop["tick_nimg"] = nimg
            if done or _crossed(prev, nimg, cfg.state_kimg):
                loop["loss_scale"] = parts.loss_scale
                checkpoint.save_state(accelerator, outdir, nimg, loop, {"generator": generator.get_state()})
            tick_time = time.time()  # the snapshot and state writes above do not count as the next tick's training
            if done or stopped:
                break
        stopped = stopped and loop["nimg"] < total_nimg  # a signal during the last step: finished anyway
        if stopped:  # a signal: save where we are (mid-tick stats are dropped) and exit cleanly
            path = checkpoint.find_latest_state(outdir)
            if path is None or checkpoint.state_kimg(path) != loop["nimg"] / 1000:
                loop["time"] = time.time() - start_time
                loop["loss_scale"] = parts.loss_scale
                path = checkpoint.save_state(
                    accelerator, outdir, loop["nimg"], loop, {"generator": generator.get_state()}
                )
            say(f"stopped by a signal at {loop['nimg'] / 1000:.3f} kimg; saved {path}; re-run the command to resume")
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if tb is not None:
            tb.close()

    summary = {
        "run_dir": str(outdir),
        "kimg": loop["nimg"] / 1000,
        "stopped": stopped,
        "snapshot": loop["snapshot"],
        "samples": loop["samples"],
        "probe": {
            "best_valid_acc": loop["best_valid_acc"],
            "best_kimg": loop["best_kimg"],
            "test_acc_at_best": loop["test_acc_at_best"],
            "last_valid_acc": loop["valid_acc"],
        },
        "nonfinite_steps": loop["nonfinite_total"],
    }
    if not stopped and is_main and cfg.arch == "dsprites64" and cfg.data.startswith("builtin:"):
        summary["factorvae"] = _factorvae(ae, cfg, device)
    for line in summary_lines(summary):
        say(line)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """Where a run's outputs are and its final figures (printed at the end of every run and kept in log.txt)."""
    probe = summary["probe"]
    lines = [
        f"run directory:   {summary['run_dir']}",
        f"last snapshot:   {summary['snapshot']}",
        f"last samples:    {summary['samples']}",
    ]
    if probe["best_valid_acc"] is not None:
        test = "n/a (no test split)" if probe["test_acc_at_best"] is None else f"{probe['test_acc_at_best']:.4f}"
        lines.append(
            f"online probe:    best valid acc {probe['best_valid_acc']:.4f} at {probe['best_kimg']:.3f} kimg, last "
            f"{probe['last_valid_acc']:.4f}; test acc at the best {test}"
        )
    if summary.get("factorvae"):
        lines.append(
            f"FactorVAE score: {summary['factorvae']['score']:.3f} (Kim & Mnih, all 5 dSprites factors, "
            f"{summary['factorvae']['n_train']}+{summary['factorvae']['n_eval']} votes; chance 0.2)"
        )
    if summary["stopped"]:
        lines.append("stopped early by a signal: re-run the same command to resume")
    return lines


def _write_snapshot(outdir: Path, nets, cfg, loop: dict, grid_x, grid_y, device, say, tb=None) -> None:
    from amr_fast.config import to_json

    tag = checkpoint.kimg_tag(loop["nimg"])
    path = outdir / f"snapshot-{tag}.safetensors"
    probe_figures = {k: loop[k] for k in ("best_valid_acc", "best_kimg", "test_acc_at_best", "valid_acc")}
    checkpoint.save_snapshot(
        path, nets, json.loads(to_json(cfg)), loop["nimg"] / 1000, extra={"nimg": loop["nimg"], "probe": probe_figures}
    )
    loop["snapshot"] = str(path)
    if grid_x is None:
        return
    try:
        from amr_fast.eval import grids
    except ImportError:  # amr_fast.eval not installed in this build: the snapshot is what matters
        return
    g = torch.Generator(device).manual_seed(cfg.seed)
    img = grids.training_grid(nets["ae"], grid_x, cfg, g, y=grid_y, mixer=nets.get("mixer"))
    samples = outdir / f"samples-{tag}.png"
    grids.save_png(samples, img)
    loop["samples"] = str(samples)
    if tb is not None:
        tb.image("samples", img, loop["nimg"] / 1000)
    nets["ae"].train()


def _factorvae(ae, cfg, device) -> dict | None:
    """Kim & Mnih's FactorVAE score of the trained encoder on freshly rendered procedural dSprites, if the
    metric and the renderer are available in this build (a shorter vote count than the paper: a quick figure)."""
    import numpy as np

    from amr_fast.data import procedural
    from amr_fast.eval.disentangle import DSPRITES_SIZES, ProductFactors, factorvae_score

    def render(classes: np.ndarray) -> torch.Tensor:  # [n, 5] (shape, scale, orientation, posX, posY)
        with_color = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], axis=1)
        return torch.from_numpy(procedural.render_dsprites(procedural.dsprites_index(with_color), cfg.img_size))

    ae.eval()

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        x = x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()
        return ae.encode(x).flatten(1)

    score = factorvae_score(encode, ProductFactors(DSPRITES_SIZES, render), seed=0, n_train=200, n_eval=200, n_std=2000)
    ae.train()
    return {"score": score.score, "n_train": 200, "n_eval": 200}


# ---------------------------------------------------------------------------------------------------------------
# CLI: preset -> overrides -> validate -> print JSON (--dry-run stops) -> training_loop.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", help="starting configuration (see --list-presets)")
    parser.add_argument("--outdir", default=None, help="run directory; re-running the same command resumes it "
                        "(default: runs/<preset>)")  # fmt: skip
    parser.add_argument("--data", default=None, help="dataset directory made by `amr-fast shard` (same as data=DIR)")
    parser.add_argument(
        "overrides", nargs="*", metavar="field=value", help="config overrides, e.g. total_kimg=50 lamb=20 k=3"
    )
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument(
        "--tensorboard", action="store_true",
        help="also log every stats row and sample grid to RUN/tensorboard/ (needs the tensorboard package)",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from amr_fast.config import PRESETS, parse_overrides, resolve, to_json

    if args.list_presets:
        for name, preset in PRESETS.items():
            kind = f"{preset.arch:<10} {preset.method:<8} mixer={preset.mixer:<9} k={preset.k}"
            print(f"{name:<28} {kind} data={preset.data or '(pass data=DIR)'}")
        return 0
    overrides = parse_overrides(args.overrides)
    if args.data is not None:
        overrides["data"] = args.data
    cfg = resolve(args.preset, overrides)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    outdir = Path(args.outdir) if args.outdir else Path("runs") / args.preset
    if int(os.environ.get("RANK", "0")) == 0:
        print(to_json(cfg))
    training_loop(
        cfg, outdir, log=lambda line: print(line, flush=True), tensorboard=args.tensorboard
    )  # ends with where its outputs are
    return 0
