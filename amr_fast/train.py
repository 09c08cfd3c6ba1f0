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
iteration; on one process with fused optimisers (CUDA; not fp16) not even that: the optimisers skip a non-finite
step on the device and the count is settled at the tick (`amr_fast.run.skip_on_device`). Metrics are reported
with `amr_fast.stats.report` and reduced once per tick.

Every `tick_kimg`: a status line and a `stats.jsonl` row. Every `probe_kimg`: the online probe's exact
validation accuracy (every rank evaluates its share), and the test accuracy whenever validation improves (the
paper reports the best validation accuracy). Every `snapshot_kimg`: `snapshot-<kimg>.safetensors` and
`samples-<kimg>.png`. Every `state_kimg`: `state-<kimg>/` (networks, optimisers, loop state, RNG
states; safetensors and JSON). The harness (`amr_fast.run`: directory, resume, signals, the tick with its
snapshot and state, the non-finite counter, stats rows) is shared with `amr-fast classify`; this file holds the AMR
parts, their step (`train_iteration`), the loop and what the harness calls at its fixed points (`_outputs`).
Re-running the same command resumes from the newest complete state; SIGTERM / SIGINT (also to the whole process
group) save a state and exit.

Run it (from the repository root; the same flags everywhere, the launcher decides the processes):

    amr-fast train --preset demo --outdir runs/demo         # a CPU: one process per core (procs=N); or 1 GPU
    amr-fast train --preset mnist-mixup --outdir runs/mnist data=data/mnist-32
    accelerate launch --config_file launch/accelerate/1gpu-bf16.yaml -m amr_fast.cli train --preset ... --outdir ...
    accelerate launch --config_file launch/accelerate/1node-8gpu.yaml -m amr_fast.cli train --preset ... --outdir ...
    accelerate launch --config_file launch/accelerate/2node-8gpu.yaml --machine_rank $NODE_RANK \\
        --main_process_ip $MASTER_ADDR -m amr_fast.cli train --preset ... --outdir /shared/runs/x    # 2 nodes x 8
    ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/accelerate/cpu-2proc.yaml \\
        -m amr_fast.cli train --preset demo --outdir runs/demo2                                    # CPU x 2

`launch/slurm.sbatch` runs the multi-node command under Slurm, `launch/recipes/<preset>.sh` one per table row.
(`accelerate launch --cpu --num_processes 2` starts ONE process: `amr_fast.run.check_world_size` stops it.)
The run is a function of its config and seed, not of its launch: global batches and mixing draws are the same on
any number of processes (`amr_fast.globalbatch`, `amr_fast.data.loader`), and a state resumes on any number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from amr_fast import checkpoint, comm, globalbatch, models, progress
from amr_fast import data as amr_data
from amr_fast import run as run_lib
from amr_fast.config import TrainConfig, probe_adam_args
from amr_fast.eval import grids
from amr_fast.eval.probe import probe_accuracy
from amr_fast.eval.summary import final_figures, summary_lines
from amr_fast.losses import AMRLoss
from amr_fast.models.base import to_channels_last
from amr_fast.presets import PRESETS, preset_line
from amr_fast.run import (
    LoopState,
    Run,
    config_from_args,
    configure_run_parser,
    cpu_processes,
    due,
    exit_status,
    start_processes,
)

STATUS_KEYS = (
    "kimg", "time", "sec/tick", "img/s", "loss/ae", "loss/recon", "loss/disc", "probe/acc", "nonfinite", "data/skipped"
)  # fmt: skip


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
    loss: AMRLoss
    seed: int  # the mixing draws of step n, micro-batch a: `globalbatch.draws(seed, n, "amr/a")`, on every rank
    device: torch.device
    world_size: int = 1
    channels_last: bool = False
    autocast: Callable = contextlib.nullcontext  # a context-manager factory (accelerator.autocast)
    loss_scale: float = 1.0  # fp16 only: dynamic loss scale
    defer_skips: bool = False  # `Run.defer_skips`: a non-finite step is skipped on the device, no host sync

    @classmethod
    def build(cls, cfg: TrainConfig, nets: dict[str, torch.nn.Module], world_size: int = 1, rank: int = 0,
              autocast: Callable = contextlib.nullcontext) -> Parts:  # fmt: skip
        """The optimisers (Adam with the public code's settings; the probe's own lr), the loss, and with
        cfg.compile the compiled methods the loss calls, for `nets` already on their device."""
        ae, disc, probe, mixer = nets["ae"], nets["disc"], nets["probe"], nets.get("mixer")
        ae_modules = [ae] + ([mixer] if mixer is not None else [])
        device = next(ae.parameters()).device
        fused = run_lib.fused_optimizers(device) or None  # on CUDA: one kernel a step, and a step skipped on the device
        adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=fused)
        opt_ae = torch.optim.Adam([p for m in ae_modules for p in m.parameters()], **adam)
        opt_disc = torch.optim.Adam(disc.parameters(), **adam)
        opt_probe = torch.optim.Adam(probe.parameters(), **probe_adam_args(cfg), fused=fused)
        loss = AMRLoss(cfg, nets, device, rank, world_size)
        if cfg.compile:  # compile the methods the loss calls; instance attributes keep the state_dict keys unchanged
            for net, names in ((ae, ("encode", "decode", "decode_with_logits", "encode_stats")), (disc, ("run",))):
                for name in names:
                    if hasattr(net, name):
                        setattr(net, name, torch.compile(getattr(net, name)))
        return cls(ae, disc, probe, ae_modules, opt_ae, opt_disc, opt_probe, loss, cfg.seed, device, world_size,
                   cfg.channels_last, autocast)  # fmt: skip

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt_ae": self.opt_ae, "opt_disc": self.opt_disc, "opt_probe": self.opt_probe}


def to_device_batch(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] -> x in [-1, 1] float32 on `device`; float inputs (spiral points) pass as they are."""
    x = amr_data.to_unit(batch["x"], device)
    if channels_last:
        x = to_channels_last(x)
    return x, batch["y"].to(device, non_blocking=True).long()


def _reduce_gradients(params: list[torch.Tensor], flags: torch.Tensor, world_size: int) -> torch.Tensor:
    """Average the gradients of `params` over ranks in one all-reduce of a flat buffer and sum `flags` (float32
    [F]) over ranks; returns the summed flags. A parameter without a gradient counts as zeros on every rank."""
    if world_size <= 1:
        return flags
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten().float() for g in grads] + [flags.float()])
    comm.all_reduce(flat)
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
    parts: Parts, batches: list[dict], update_ae: bool, stop: bool = False, step: int = 0
) -> tuple[str, bool, list[dict[str, torch.Tensor]]]:
    """Optimisation step `step` over this rank's micro-batches of one global batch. Returns (status, stop requested
    on any rank, the phases' reported scalars); status "ok" (stepped), "loss" (a non-finite loss on some rank: step
    skipped) or "grad" (finite losses but a non-finite gradient, e.g. an fp16 overflow: step skipped); with
    `parts.defer_skips`, a 0/1 tensor on the device instead (1: skipped; `run.skip_on_device`). Micro-batch a mixes
    over every rank's micro-batch a, with draws from (seed, step, a): the same on every launch."""
    gain = parts.loss_scale / len(batches)
    groups = ([(parts.ae_modules, parts.opt_ae)] if update_ae else []) + [
        ([parts.disc], parts.opt_disc),
        ([parts.probe], parts.opt_probe),
    ]
    reported: list[dict[str, torch.Tensor]] = []
    for a, batch in enumerate(batches):
        x, y = to_device_batch(batch, parts.device, parts.channels_last)
        generator = globalbatch.draws(parts.seed, step, f"amr/{a}", parts.device)  # every rank: the same draws
        with parts.autocast():
            parts.loss.begin(x, y, update_ae, generator)  # one enc/dec forward; autograd only if update_ae
            for phase in ("ae", "disc", "probe") if update_ae else ("disc", "probe"):
                reported.append(parts.loss.accumulate_gradients(phase, gain))  # requires_grad: own modules only

    params = [p for modules, _ in groups for m in modules for p in m.parameters()]
    optimizers = [opt for _, opt in groups]
    # the flags ride on the gradients' one all-reduce; their .tolist() is THE host sync of an iteration
    status, stop_any = run_lib.apply_step(
        optimizers, params, [v for r in reported for v in r.values()], stop,
        lambda flags: _reduce_gradients(params, flags, parts.world_size), parts.loss_scale, parts.defer_skips,
    )  # fmt: skip
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return status, stop_any, reported


# ---------------------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class TrainState(LoopState):
    """The AMR loop's state (saved in every resume state): iterations, the online probe's figures, last outputs."""

    it: int = 0
    best_valid_acc: float | None = None
    best_kimg: float | None = None
    test_acc_at_best: float | None = None
    valid_acc: float | None = None
    snapshot: str | None = None
    samples: str | None = None


def training_loop(
    cfg: TrainConfig,
    outdir: str | Path,
    log: Callable[[str], None] | None = print,
    tensorboard: bool = False,
    preset: str | None = None,
) -> dict:
    """Train `cfg` into `outdir` (resuming from its newest complete state). Returns a summary (every rank):
    run_dir, kimg, snapshot, samples, probe figures, stopped (True if a signal ended it early).
    tensorboard: rank 0 also writes every stats row and sample grid to `outdir/tensorboard/`; preset: the name
    the first line of the log gives the config."""
    cfg = cfg.validate()
    run = Run(cfg, outdir, TrainState(), log, STATUS_KEYS, tensorboard, preset)
    s = run.state
    batch_gpu, accum = _micro_batches(cfg, run.world)
    root, splits, probe_split = _dataset(cfg, run)
    nets = _networks(cfg, run)
    parts = Parts.build(cfg, nets, run.world, run.rank, run.accelerator.autocast)
    run.resume(nets, parts.optimizers)
    parts.defer_skips = run.defers(parts.optimizers.values())

    data_iter = iter(amr_data.train_loader(root, cfg.batch, rank=run.rank, world_size=run.world, micro=batch_gpu,
                                           seed=cfg.seed, workers=cfg.workers, start_batch=s.it,
                                           **run.loader_args()))  # fmt: skip
    grid = _grid_batch(root, splits, run)
    run.say(
        f"batch {cfg.batch} = {run.world} process{'es' if run.world > 1 else ''} x {batch_gpu} x {accum} "
        f"accumulation, data {root}"
    )
    if accum > 1:
        run.say(f"mixing partners are drawn within each accumulation step's {run.world * batch_gpu} images, not the "
                f"whole batch of {cfg.batch} (raise batch_gpu or the number of processes to widen it)")  # fmt: skip
    out = _outputs(run, parts, nets, root, splits, probe_split, grid)
    # SIGTERM / SIGINT set run.stop_requested; the flag rides on the step's all-reduce. The loader is closed (its
    # threads joined) when the loop ends: never at interpreter exit.
    with run, contextlib.closing(data_iter):
        while not run.finished:
            parts.loss_scale = s.loss_scale
            mine = next(data_iter)  # this rank's rows of global batch s.it: accum micro-batches of batch_gpu
            batches = [{k: v[a * batch_gpu : (a + 1) * batch_gpu] for k, v in mine.items()} for a in range(accum)]
            update_ae, images = schedule(cfg, s.it)
            batches = partial_batch(batches, images, cfg.batch, run.world)
            status, stop, reported = train_iteration(parts, batches, update_ae, run.stop_requested, s.it)
            run.count_step(status, "losses/gradients")
            run_lib.report_step(status, (kv for r in reported for kv in r.items()))  # a skipped step's do not count
            prev, s.it, s.nimg = s.nimg, s.it + 1, s.nimg + images
            if run.after_step(prev, stop, out, {"it": s.it}):
                break
    return _summary(run, nets["ae"], root, splits)


def _micro_batches(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation steps) making up one global batch of cfg.batch."""
    batch_gpu = cfg.batch_gpu or cfg.batch // world
    if batch_gpu < 1 or cfg.batch % (batch_gpu * world):
        raise ValueError(
            f"batch={cfg.batch} is not a multiple of batch_gpu x processes = {batch_gpu} x {world}; "
            "set batch to a multiple of the number of processes, or batch_gpu to a divisor of batch / processes"
        )
    return batch_gpu, cfg.batch // (batch_gpu * world)


def _dataset(cfg: TrainConfig, run: Run) -> tuple[Path, dict, str | None]:
    """(dataset directory, its splits, the probe's split or None) after checking the index against the config."""
    root = amr_data.resolve_data_root(cfg.data, cfg.subset, run.is_main, run.accelerator.wait_for_everyone)
    index = amr_data.load_index(root)
    amr_data.check_index(index, cfg.img_size, cfg.channels, cfg.num_classes)
    if cfg.subset and not cfg.data.startswith("builtin:") and index.get("subset") != cfg.subset:
        raise ValueError(
            f"subset={cfg.subset} but the dataset at {root} was sharded with subset={index.get('subset')}; shard the "
            f"labelled subset with `amr-fast shard SOURCE --subset {cfg.subset} ...` and pass that directory"
        )
    splits = index.get("splits", {})
    probe_split = "valid" if index.get("num_classes", 0) >= 2 and "valid" in splits else None  # spiral: no labels
    return root, splits, probe_split


def _networks(cfg: TrainConfig, run: Run) -> dict[str, torch.nn.Module]:
    """The networks on the run's device. Same seed on every rank -> same init; broadcast anyway (cheap, once)."""
    torch.manual_seed(cfg.seed)
    nets = models.build_networks(cfg)
    for net in nets.values():
        net.to(run.device)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        if run.world > 1:
            for t in net.state_dict().values():
                dist.broadcast(t, src=0)
    return nets


def _grid_batch(root: Path, splits: dict, run: Run) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rank 0: the 8 held-out images (and labels) every samples PNG shows."""
    grid_split = next((s for s in ("valid", "test", "train") if s in splits), None)
    if not run.is_main or grid_split is None:
        return None
    return tuple(t.to(run.device) for t in grids.grid_images(root, grid_split, splits[grid_split]["num_samples"]))


def schedule(cfg: TrainConfig, it: int) -> tuple[bool, int]:
    """(update the autoencoder at iteration `it` (0-based), images that iteration trains on). Without epochs
    (epoch_images = 0) every batch is full and the AE counter is global: it % ae_every == 0. With epochs of
    epoch_images images, as the public loader: ceil(epoch_images / batch) batches an epoch, the last one partial;
    ae_schedule=per-epoch restarts the AE counter every epoch, as the public loop's `iter` (so the AE also
    updates on an epoch's first batch)."""
    if not cfg.epoch_images:
        return it % cfg.ae_every == 0, cfg.batch
    per_epoch = -(-cfg.epoch_images // cfg.batch)
    j = it % per_epoch
    images = cfg.epoch_images - j * cfg.batch if j == per_epoch - 1 else cfg.batch
    return (j if cfg.ae_schedule == "per-epoch" else it) % cfg.ae_every == 0, images


def partial_batch(batches: list[dict], images: int, batch: int, world: int) -> list[dict]:
    """This rank's micro-batches cut to a global batch of `images` (< batch: an epoch's partial last batch). Every
    micro-batch of every rank keeps the same number of rows (the codes are gathered across ranks): images // (world
    x micro-batches), at least 1, so with several processes or accumulation steps the partial batch is rounded
    to that multiple (exact in one process without accumulation)."""
    if images >= batch:
        return batches
    keep = max(1, images // (world * len(batches)))
    return [{key: v[:keep] for key, v in b.items()} for b in batches]


def _outputs(run: Run, parts: Parts, nets: dict, root: Path, splits: dict, probe_split: str | None,
             grid: tuple | None) -> run_lib.Outputs:  # fmt: skip
    """The AMR run's evaluation, every probe_kimg and at the end: the online probe's exact validation accuracy, and
    its test accuracy whenever validation improves (the paper reports the best validation accuracy); its snapshot
    with the samples PNG; its resume state."""
    s, cfg, cache = run.state, run.cfg, {}  # cache: the probe's splits, kept on the device between evaluations
    args = (run.device, run.rank, run.world, parts.autocast, cache, parts.channels_last)

    def evaluate(prev: int) -> dict:
        if not probe_split or not (run.finished or due(prev, s.nimg, cfg.probe_kimg)):
            return {}
        s.valid_acc = probe_accuracy(parts.ae, parts.probe, root, "valid", *args)
        if s.best_valid_acc is None or s.valid_acc > s.best_valid_acc:
            s.best_valid_acc, s.best_kimg = s.valid_acc, s.nimg / 1000
            if "test" in splits:
                s.test_acc_at_best = probe_accuracy(parts.ae, parts.probe, root, "test", *args)
        keys = ("valid_acc", "best_valid_acc", "test_acc_at_best")
        return {f"probe/{k}": getattr(s, k) for k in keys}

    return run_lib.Outputs(evaluate, lambda: _write_snapshot(run, nets, grid),
                           lambda: run.save_state(nets, parts.optimizers, {}))  # fmt: skip


def _write_snapshot(run: Run, nets: dict[str, torch.nn.Module], grid: tuple | None) -> None:
    s, cfg = run.state, run.cfg
    tag = checkpoint.kimg_tag(s.nimg)
    path = run.outdir / f"snapshot-{tag}.safetensors"
    probe_figures = {k: getattr(s, k) for k in ("best_valid_acc", "best_kimg", "test_acc_at_best", "valid_acc")}
    with progress.phase(f"writing {path.name}"):
        checkpoint.save_snapshot(
            path, nets, dataclasses.asdict(cfg), s.nimg / 1000, extra={"nimg": s.nimg, "probe": probe_figures}
        )
    s.snapshot = str(path)
    if grid is None:
        return
    g = torch.Generator(run.device).manual_seed(cfg.seed)
    img = grids.training_grid(nets["ae"], grid[0], cfg, g, y=grid[1], mixer=nets.get("mixer"))
    samples = run.outdir / f"samples-{tag}.png"
    grids.save_png(samples, img)
    s.samples = str(samples)
    if run.tb is not None:
        run.tb.image("samples", img, s.nimg / 1000)
    nets["ae"].train()


def _summary(run: Run, ae: torch.nn.Module, root: Path, splits: dict) -> dict:
    """The run's summary (returned on every rank; rank 0 prints where its outputs are)."""
    s, cfg = run.state, run.cfg
    summary = {
        "run_dir": str(run.outdir),
        "kimg": s.nimg / 1000,
        "stopped": run.stopped,
        "snapshot": s.snapshot,
        "samples": s.samples,
        "probe": {
            "best_valid_acc": s.best_valid_acc,
            "best_kimg": s.best_kimg,
            "test_acc_at_best": s.test_acc_at_best,
            "last_valid_acc": s.valid_acc,
        },
        "nonfinite_steps": s.nonfinite_total,
        "time": s.time,
        "img_per_s": s.nimg / s.time if s.time > 0 else None,
    }
    if not run.stopped and run.is_main:
        summary.update(final_figures(ae, cfg, root, run.device, splits))
    for line in summary_lines(summary):
        run.say(line)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# CLI: preset -> overrides -> validate (--dry-run prints the JSON and stops) -> training_loop.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    configure_run_parser(parser, "demo", "total_kimg=50 lamb=20 k=3", TrainConfig)


def main(args: argparse.Namespace) -> int:
    if args.list_presets:
        print("\n".join(preset_line(name) for name in PRESETS))  # table row, lambda, budget in kimg and epochs
        return 0
    cfg = config_from_args(args, PRESETS)
    if cfg is not None:
        outdir = args.outdir or Path("runs") / args.preset
        n = cpu_processes(args.procs)
        if n > 1:  # a CPU: one single-threaded data-parallel process per core, through torch's launcher
            return start_processes(n, sys.argv[1:])
        training_loop(cfg, outdir, tensorboard=args.tensorboard, preset=args.preset)
    return exit_status()
