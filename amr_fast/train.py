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
states; safetensors and JSON). The run machinery (directory, resume, signals, schedule, non-finite counter, stats
rows) is `amr_fast.run`'s, shared with `amr-fast classify`: this file holds the AMR parts, their step and what
happens at a tick. Re-running the same command resumes from the newest complete state; SIGTERM / SIGINT (also to
the whole process group) save a state and exit.

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
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from amr_fast import checkpoint, globalbatch, models, progress, stats
from amr_fast import data as amr_data
from amr_fast import run as run_lib
from amr_fast.config import TrainConfig, probe_adam_args
from amr_fast.eval import grids
from amr_fast.eval.cli import encode_codes, factor_sampler, make_encode, recon_error
from amr_fast.eval.disentangle import FACTORVAE_PROTOCOLS, factorvae, factorvae_counts
from amr_fast.eval.probe import code_probes
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
    fmt_time,
    start_processes,
    step_status,
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
    losses = [v for r in reported for v in r.values()]
    grads = [p.grad for p in params if p.grad is not None]
    if parts.defer_skips:  # one process, no fp16: the fused optimisers skip a non-finite step on the device
        flags = run_lib.step_flags(losses, grads, None, lambda f: f)  # one process: nothing to reduce
        bad = run_lib.skip_on_device([opt for _, opt in groups], flags)
        for _, opt in groups:
            opt.zero_grad(set_to_none=True)
        return bad, stop, reported
    # the flags ride on the gradients' one all-reduce; their .tolist() is THE host sync of an iteration
    status, stop_any = step_status(
        losses, grads, stop, lambda flags: _reduce_gradients(params, flags, parts.world_size)
    )
    if status == "ok":
        if parts.loss_scale != 1.0:
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / parts.loss_scale)
        for _, opt in groups:
            opt.step()
    for _, opt in groups:
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
    # after the resume: a state saved by a run with unfused optimisers (on a CPU) keeps them unfused
    fused = all(g.get("fused") for opt in parts.optimizers.values() for g in opt.param_groups)
    parts.defer_skips = run.defer_skips and fused

    def save_state() -> Path:
        return run.save_state(nets, parts.optimizers, {})

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
    stop, probe_row, eval_cache = False, {}, {}
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
            keep = 1 - status if isinstance(status, torch.Tensor) else None  # decided on the device: 0 if skipped
            for name, value in (kv for r in reported for kv in r.items()) if keep is not None or status == "ok" else ():
                stats.report(name, value, keep)  # a skipped step's values do not count
            s.it, s.nimg = s.it + 1, s.nimg + images

            if probe_split and (run.finished or due(s.nimg - images, s.nimg, cfg.probe_kimg)):
                with run.not_training():  # img/s counts training only; the rest is sec/eval
                    probe_row = _probe_figures(run, parts, root, "test" in splits, eval_cache)
            if run.finished or due(s.tick_nimg, s.nimg, cfg.tick_kimg):  # a tick: stats, snapshot, state
                prev, done = s.tick_nimg, run.finished
                row, probe_row = {"it": s.it, **probe_row}, {}
                run.tick(row)
                if done or due(prev, s.nimg, cfg.snapshot_kimg):
                    with run.not_training():
                        if run.is_main:
                            _write_snapshot(run, nets, grid)
                        run.accelerator.wait_for_everyone()
                if done or due(prev, s.nimg, cfg.state_kimg):
                    save_state()
            if stop:
                break
        stopped = stop and not run.finished  # a signal during the last step: finished anyway
        if stopped:  # save where we are (mid-tick stats are dropped) and exit cleanly
            run.stop(save_state)
    return _summary(run, nets["ae"], stopped, root, splits)


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
    return tuple(t.to(run.device) for t in grid_images(root, grid_split, splits[grid_split]["num_samples"]))


def grid_images(root: Path, split: str, num_samples: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The n images of samples-*.png: evenly spaced over the split (splits may be sorted by class, e.g. dSprites'
    valid), dealt round-robin over their labels so that the first three (the k = 3 triangle) and the pairs
    (i, i + n/2) of the strips mix different classes where the split has them. -> (x [n, ...], y [n])."""
    want = set(torch.linspace(0, max(num_samples - 1, 0), n).round().long().tolist())
    xs, ys, seen = [], [], 0
    for b in amr_data.eval_loader(root, split, 256, rank=0, world_size=1):
        for i in range(len(b["y"])):
            if seen + i in want:
                xs.append(b["x"][i])
                ys.append(int(b["y"][i]))
        seen += len(b["y"])
        if seen > max(want):
            break
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(ys):
        by_label.setdefault(label, []).append(i)
    queues, order = list(by_label.values()), []
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    return torch.stack([xs[i] for i in order]), torch.tensor([ys[i] for i in order])


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


EVAL_CACHE_BYTES = 1 << 30  # eval splits up to this size stay on the device between probe evaluations


def _eval_batches(root: Path, split: str, device, rank: int, world_size: int, cache: dict | None):
    """This rank's share of `split` as device batches (uint8 images, labels) of 1024. With `cache` (a dict the
    loop keeps), a split of at most EVAL_CACHE_BYTES is read from its shards once and kept on the device: the
    per-epoch probe of the paper presets then costs the encoder's forward pass only."""
    if cache is not None and split in cache:
        yield from cache[split]
        return
    kept, size = [], 0
    for b in amr_data.eval_loader(root, split, 1024, rank=rank, world_size=world_size):
        xy = (b["x"].to(device, non_blocking=True), b["y"].to(device, non_blocking=True))
        size += xy[0].numel() * xy[0].element_size()
        if kept is not None and size <= EVAL_CACHE_BYTES:
            kept.append(xy)
        else:
            kept = None
        yield xy
    if cache is not None and kept is not None:
        cache[split] = kept


@torch.no_grad()
def probe_accuracy(ae, probe, root: Path, split: str, device, rank: int, world_size: int, autocast, cache=None,
                   channels_last: bool = False):  # fmt: skip
    """Exact accuracy of the online probe on a whole split: each rank classifies its share, counts are summed."""
    was_training = ae.training
    ae.eval()
    probe.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, total
    size = -(-amr_data.load_index(root)["splits"][split]["num_samples"] // world_size)
    batches = ({"x": x, "y": y} for x, y in _eval_batches(root, split, device, rank, world_size, cache))
    for b in progress.counted(batches, size, f"online probe on {split}", rank == 0):
        x, y = amr_data.to_unit(b["x"], device), b["y"]
        with autocast():
            logits = probe(ae.encode(to_channels_last(x) if channels_last else x).flatten(1))
        counts[0] += (logits.argmax(dim=1) == y.long()).sum()
        counts[1] += y.numel()
    if world_size > 1:
        dist.all_reduce(counts)
    ae.train(was_training)
    probe.train(was_training)
    correct, total = counts.tolist()
    return correct / total if total else math.nan


def _probe_figures(run: Run, parts: Parts, root: Path, has_test: bool, cache: dict) -> dict:
    """The online probe's validation accuracy, and its test accuracy whenever validation improves (stats keys)."""
    s = run.state
    args = (run.device, run.rank, run.world, parts.autocast, cache, parts.channels_last)
    s.valid_acc = probe_accuracy(parts.ae, parts.probe, root, "valid", *args)
    if s.best_valid_acc is None or s.valid_acc > s.best_valid_acc:
        s.best_valid_acc, s.best_kimg = s.valid_acc, s.nimg / 1000
        if has_test:
            s.test_acc_at_best = probe_accuracy(parts.ae, parts.probe, root, "test", *args)
    return {
        "probe/valid_acc": s.valid_acc,
        "probe/best_valid_acc": s.best_valid_acc,
        "probe/test_acc_at_best": s.test_acc_at_best,
    }


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


def _summary(run: Run, ae: torch.nn.Module, stopped: bool, root: Path, splits: dict) -> dict:
    """The run's summary (returned on every rank; rank 0 prints where its outputs are)."""
    s, cfg = run.state, run.cfg
    summary = {
        "run_dir": str(run.outdir),
        "kimg": s.nimg / 1000,
        "stopped": stopped,
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
    if not stopped and run.is_main and cfg.arch != "mlp" and "valid" in splits:
        summary["recon"] = recon_error(ae, cfg, root, "valid", run.device, limit=5000)
        ae.train()
    if not stopped and run.is_main and cfg.arch == "dsprites64" and amr_data.load_index(root).get("factor_names"):
        summary["factorvae"] = _factorvae(ae, cfg, root, run.device)
        summary["shape_probes"] = _shape_probes(ae, cfg, root, run.device)
    for line in summary_lines(summary):
        run.say(line)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """Where a run's outputs are and its final figures (printed at the end of every run and kept in log.txt)."""
    probe = summary["probe"]
    lines = [
        f"run directory:   {summary['run_dir']}",
        f"last snapshot:   {summary['snapshot'] or 'none yet (snapshot_kimg)'}",
        f"last samples:    {summary['samples'] or 'none yet (snapshot_kimg)'}",
    ]
    if probe["best_valid_acc"] is not None:
        test = "n/a (no test split)" if probe["test_acc_at_best"] is None else f"{probe['test_acc_at_best']:.4f}"
        lines.append(
            f"online probe:    best valid acc {probe['best_valid_acc']:.4f} at {probe['best_kimg']:.3f} kimg, last "
            f"{probe['last_valid_acc']:.4f}; test acc at the best {test}"
        )
    if summary.get("recon"):
        r = summary["recon"]
        lines.append(
            f"recon error:     mean |x_rec - x| {r['l1']:.4f}, MSE {r['mse']:.4f} "
            f"({r['n']} {r['split']} images, pixels in [-1, 1])"
        )
    for protocol, f in (summary.get("factorvae") or {}).items():
        what = {
            "kim-mnih": f"Kim & Mnih, all 5 dSprites factors, {f['n_train']}+{f['n_eval']} votes of "
            f"{f['batch_size']}; chance 0.2",
            "amr-public": f"the AMR authors' procedure: train accuracy on {f['n_train']} votes of {f['batch_size']}, "
            "posY uncredited; max 0.8",
        }[protocol]
        lines.append(f"FactorVAE score: {f['score']:.3f} {protocol} ({what})")
    if summary.get("shape_probes"):
        p = summary["shape_probes"]
        lines.append(
            f"shape probes:    linear {p['linear']:.3f}, MLP {p['mlp']:.3f} (offline, on the final code: "
            f"{p['n_train']} train -> {p['n_test']} valid codes; chance {1 / p['num_classes']:.2f})"
        )
    if summary.get("img_per_s"):
        lines.append(
            f"training time:   {fmt_time(summary['time'])} for {summary['kimg']:g} kimg, "
            f"{summary['img_per_s']:.0f} img/s (probes and snapshots included)"
        )
    if summary["stopped"]:
        lines.append("stopped early by a signal: re-run the same command to resume")
    return lines


def _shape_probes(ae, cfg, root: Path, device) -> dict:
    """Offline probes of the final code for the labels (dSprites: shape), linear and one-hidden-layer MLP: how much
    of the shape the code holds, and how much of it a linear read-out (the paper's probe) can use."""
    encode = make_encode(ae, device)
    h_tr, y_tr = encode_codes(encode, root, "train", 10_000)
    h_va, y_va = encode_codes(encode, root, "valid", 5_000)
    ae.train()
    return {**code_probes(h_tr, y_tr, h_va, y_va, cfg.num_classes), "num_classes": cfg.num_classes}


def _factorvae(ae, cfg, root: Path, device) -> dict:
    """The FactorVAE score of the trained encoder under both protocols (kim-mnih, amr-public), each with its
    published vote counts unless cfg.factorvae_votes / factorvae_vote_batch shorten them; procedural dSprites are
    rendered afresh, a sharded dSprites is sampled from its train split (`amr-fast eval` does the same)."""
    sampler = factor_sampler(amr_data.load_index(root), cfg, pool=50_000)
    encode, out = make_encode(ae, device), {}
    for protocol in FACTORVAE_PROTOCOLS:
        kw = factorvae_counts(protocol, cfg.factorvae_votes, cfg.factorvae_vote_batch)
        score = factorvae(encode, sampler, protocol, seed=0, **kw).as_dict()
        out[protocol] = {k: score[k] for k in ("score", "train_accuracy", "n_train", "n_eval", "batch_size")}
    ae.train()
    return out


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
