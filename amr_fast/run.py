"""What every run needs, once, for both trainers (`amr_fast.train` and `amr_fast.classify`).

A `Run` is one training run in its directory (NVlabs edm2's `training_loop.py` shape: the trainer is a flat
sequence of blocks around one state object, `run.state`):

- precision and world size: `mixed_precision` (`amr_fast.precision.precision_choice`, one rule for every
  launcher, said in the log's first lines; fp16 brings a dynamic loss scale) and
  `check_world_size` (a launcher that silently started one process is an error);
- the run directory: `config.json` (written atomically), `log.txt` (`run.say`: every line the run prints, from
  its first, `start_line`), `stats.jsonl` (one row per tick, `run.tick`, whose status line ends with the run's
  ETA); an --outdir naming a file is an error;
- progress: the run's bar (`amr_fast.progress`) between the status lines, from `run.resume` to the end;
- resume: re-running the same command continues from the newest complete state (`run.resume`), refused when the
  config differs in anything but the schedule (`RESUMABLE_FIELDS`: a run can be extended by raising total_kimg);
  `stats.jsonl` is cut back to the rows at or before that state (all of them when there is none), so a run killed
  at any moment ends with the rows of an uninterrupted one;
- signals: SIGTERM / SIGINT (also sent to the whole process group, as Slurm and systemd do; the data loader's
  workers ignore them) set `run.stop_requested`; the trainer finishes its step, `run.stop` saves a state, and the
  process exits cleanly (`exit_status`: 130 after SIGINT, so that make or a script stops too, else 0); a second
  signal acts at once;
- one step's end for both trainers (`apply_step`: the optimisers step unless a loss or gradient is non-finite on
  some rank, the fp16 gradients unscaled first; `report_step`: a skipped step's values do not count) and what
  follows it (`run.after_step`): the trainer's evaluations when due (`Outputs.evaluate`, timed apart as sec/eval),
  and every tick_kimg the stats row, then the snapshot (rank 0 writes it, every rank waits) and the resume state
  when due, or the state and the end after a signal;
- the kimg schedule (`due`), the non-finite step counter with the divergence stop and the fp16 loss scale
  (`run.count_step`, `step_status`); with fused optimisers on one process (CUDA; not fp16) a step's flags stay on
  the device: the optimisers skip a non-finite step there (`skip_on_device`) and the counter is settled at the
  next tick or state (`run.defer_skips`), so no iteration waits for the GPU;
- the command line both trainers share: --preset, --outdir, --data, field=value overrides (anywhere on the line),
  --list-presets, --dry-run, --tensorboard (`configure_run_parser`, `config_from_args`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from amr_fast import checkpoint, comm, progress, stats
from amr_fast.data import stream_counts
from amr_fast.eval import tensorboard as eval_tensorboard
from amr_fast.overrides import from_dict, parse_overrides, to_json
from amr_fast.precision import default_device_type, keep_freed_memory, precision_choice
from amr_fast.presets import resolve
from amr_fast.progress import fmt_time

# Fields that may differ when a run is resumed (the schedule and runtime knobs); every other field must match.
RESUMABLE_FIELDS = (
    "total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "probe_kimg", "eval_kimg", "fgsm_kimg", "eval_batch",
    "compile", "max_skipped", "skip_window", "channels_last", "workers",
    "factorvae_votes", "factorvae_vote_batch",
)  # fmt: skip
FP16_INITIAL_SCALE = 2.0**15  # fp16 dynamic loss scaling: the first scale,
FP16_MAX_SCALE = 2.0**24  # its ceiling,
FP16_SCALE_GROWTH = 2000  # and doubled after this many good steps in a row (halved on an overflow)


_stop_signal: list[int | None] = [None]  # the signal that stopped the last run of this process (`exit_status`)


def exit_status() -> int:
    """The trainers' exit status: 130 after Ctrl-C (SIGINT) stopped the run (the state is saved), so that `make`
    or a shell script stops instead of going on with the next step; else 0 (SIGTERM too: a scheduler stopping
    a job that saved its state is not a failure)."""
    return 130 if _stop_signal[0] == signal.SIGINT else 0


def mixed_precision(precision: str) -> str:
    """Accelerate's mixed_precision for a config's precision ("auto": a launcher's bf16 / fp16, else bf16 on CUDA
    and on CPUs with native bf16, no elsewhere: `amr_fast.precision`)."""
    return precision_choice(precision, default_device_type())[0]


LAUNCHED = ("WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND")  # set by torchrun / accelerate launch


def launched() -> bool:
    """Under a launcher (torchrun, accelerate launch, Slurm's srun via them): it decides the processes."""
    return any(name in os.environ for name in LAUNCHED)


def cpu_processes(procs: int) -> int:
    """How many data-parallel processes a plain `amr-fast train|classify` starts: on a CPU (not under a launcher)
    one single-threaded process per usable core (`os.sched_getaffinity`), or `procs=N` (or AMR_FAST_PROCS=N);
    1 elsewhere."""
    if launched() or default_device_type() != "cpu":
        return 1
    return procs or int(os.environ.get("AMR_FAST_PROCS") or 0) or len(os.sched_getaffinity(0))


def start_processes(n: int, argv: list[str]) -> int:
    """Run this command line as n single-threaded gloo processes through torch's own launcher (torchrun's
    `--standalone`: a free port on this machine); returns the exit code (0 when every process exited 0)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):  # its notes on every start and stop, its failure lines
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.update(AMR_FAST_STARTED="1", ACCELERATE_USE_CPU="1")  # Accelerate: gloo on the CPU
    args = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(n), "--module", "amr_fast.cli", *argv])
    with tempfile.TemporaryDirectory(prefix="amr-fast-errors-") as errors:
        os.environ["AMR_FAST_ERRORS"] = errors  # a user error of a process: its message, in a file named by rank
        try:
            run(args)
        except ChildFailedError as err:
            messages = [p.read_text() for p in sorted(Path(errors).iterdir(), key=lambda p: int(p.name))]
            for message in dict.fromkeys(messages):  # every process meets the same mistake: say it once
                print(message, file=sys.stderr)
            # the cause: a process that exited by itself (the launcher then stops the others by SIGTERM), earliest
            rank, failure = min(err.failures.items(), key=lambda f: (f[1].exitcode < 0, f[1].timestamp, f[0]))
            code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed: 128 + signal
            if not messages:  # a crash (its traceback is above) or a signal
                print(f"amr-fast: process {rank} of {n} failed (exit code {failure.exitcode})", file=sys.stderr)
            return code
        except SignalException as stop:  # Ctrl-C / SIGTERM: the processes had it too, saved a state and exited (Run)
            _stop_signal[0] = stop.sigval
            return exit_status()
        finally:
            del os.environ["AMR_FAST_ERRORS"]
    return 0


def check_world_size(num_processes: int) -> None:
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` starts ONE process (accelerate's simple launcher); run "
            "`amr-fast train|classify ...` alone (on a CPU it starts one process per core; procs=N to choose), or "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m amr_fast.cli ...`, or "
            "`torchrun --nproc_per_node N -m amr_fast.cli ...`"
        )
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes != expected:
        raise ValueError(
            f"Accelerate runs {num_processes} process(es) but WORLD_SIZE={expected}; on CPU launch with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...` (`--cpu --num_processes N` "
            "silently starts one process) or with torchrun"
        )


def check_resume_config(cfg: Any, outdir: Path) -> None:
    """Refuse to resume a run of another config (only the fields in RESUMABLE_FIELDS may change)."""
    path = outdir / "config.json"
    if not path.exists() or checkpoint.find_latest_state(outdir) is None:
        return
    old = from_dict(checkpoint.read_json(path), type(cfg))
    diff = [
        f"{name}: {getattr(old, name)!r} -> {getattr(cfg, name)!r}"
        for name in cfg.__dataclass_fields__
        if name not in RESUMABLE_FIELDS and getattr(old, name) != getattr(cfg, name)
    ]
    if diff:
        raise ValueError(
            f"{outdir} holds a run with another config (different config fields: {'; '.join(diff[:4])}); re-run "
            "with the same preset and overrides to resume it (total_kimg and the *_kimg schedule may change), or "
            "pass a new --outdir"
        )


def due(prev_nimg: int, nimg: int, kimg: float) -> bool:
    """Did training pass a multiple of `kimg` thousand images between prev_nimg (excluded) and nimg?"""
    step = max(1, round(kimg * 1000))
    return nimg // step > prev_nimg // step


CONTENDED = 0.5  # a tick below this fraction of the run's best earlier tick says the cores are contended


def contention_note(speeds: list[float], speed: float) -> str:
    """The status line's note when a tick's img/s falls far below this process's best earlier tick (the first
    tick, warm-up, does not count); appends `speed` to `speeds`."""
    best = max(speeds[1:], default=0.0)
    speeds.append(speed)
    if not best or speed >= CONTENDED * best:
        return ""
    return (f"  <- {speed / best:.0%} of this run's earlier {best:.0f} img/s: the cores are contended (another "
            "job on this machine?); stop it, or give each run its own cores (procs=N, taskset -c)")  # fmt: skip


def trim_stats(path: Path, nimg: int) -> None:
    """Keep the rows of `path` (stats.jsonl) at or before `nimg` images, atomically: the rows a killed process
    wrote after the state a run resumes from (all rows when it starts from scratch) would be written again."""
    if not path.exists():
        return
    rows = [r for r in stats.read_jsonl(path) if r.get("nimg", round(r.get("kimg", 0) * 1000)) <= nimg]
    checkpoint.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def step_flags(
    losses: Iterable[torch.Tensor], grads: list[torch.Tensor], stop: bool | None, reduce: Callable[[torch.Tensor], Any]
) -> torch.Tensor:
    """After the backward pass, on the device: float32 [loss_bad, grad_bad(, stop)] summed over ranks by `reduce`
    (one all-reduce, or none on one process): non-finite losses, a non-finite gradient norm (e.g. an fp16 overflow),
    a stop request (left out when `stop` is None: copying a host flag to a GPU waits for it)."""
    values = [v.detach().float().reshape(-1) for v in losses]
    device = values[0].device if values else grads[0].device if grads else torch.device("cpu")
    loss_bad = (~torch.isfinite(torch.cat(values))).sum().float() if values else torch.zeros((), device=device)
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    flags = [loss_bad, (~torch.isfinite(norm)).float().to(device)]
    if stop is not None:
        flags.append(torch.tensor(float(stop), device=device))
    return reduce(torch.stack(flags))


def step_status(
    losses: Iterable[torch.Tensor], grads: list[torch.Tensor], stop: bool, reduce: Callable[[torch.Tensor], Any]
) -> tuple[str, bool]:
    """`step_flags` on the host: ("ok" | "loss" (a non-finite loss on some rank) | "grad" (finite losses, a non-
    finite gradient), stop requested on some rank), the same on every rank. `.tolist()` is the step's one host
    sync."""
    loss_n, grad_n, stop_n = step_flags(losses, grads, stop, reduce).tolist()
    return ("loss" if loss_n else "grad" if grad_n else "ok"), stop_n > 0


def fused_optimizers(device: torch.device) -> bool:
    """Whether the trainers build fused optimisers: on CUDA (one kernel a step for all parameters; a fused
    optimiser also skips a step on the device, `skip_on_device`)."""
    return device.type == "cuda"


def skip_on_device(optimizers: Iterable[torch.optim.Optimizer], flags: torch.Tensor) -> torch.Tensor:
    """Step fused `optimizers` unless `flags` (of `step_flags`) say the step is non-finite, decided on the device:
    a fused optimiser leaves its parameters and state (step count included) as they were when `found_inf` is 1
    (the mechanism of torch's GradScaler). Returns that 0/1 float32 flag, on the device."""
    bad = (flags[:2].sum() > 0).float()
    for opt in optimizers:
        if not all(group.get("fused") for group in opt.param_groups):
            raise ValueError("skip_on_device needs fused optimisers (fused=True); use step_status instead")
        opt.found_inf = bad
        try:
            opt.step()
        finally:
            del opt.found_inf
    return bad


def sum_over_ranks(flags: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        comm.all_reduce(flags)
    return flags


def apply_step(
    optimizers: list[torch.optim.Optimizer],
    params: list[torch.Tensor],
    losses: Iterable[torch.Tensor],
    stop: bool,
    reduce: Callable[[torch.Tensor], Any],
    loss_scale: float = 1.0,
    defer: bool = False,
) -> tuple[str | torch.Tensor, bool]:
    """After the backward pass: step `optimizers` unless a loss or a gradient of `params` is non-finite on some
    rank. Returns (status, stop requested on some rank): status "ok" | "loss" | "grad" of `step_status`, whose
    `reduce` sums the flags over ranks (and may average the gradients in the same all-reduce); the gradients are
    divided by the fp16 `loss_scale` before the step. defer (`Run.defer_skips`, fused optimisers): the step is
    skipped on the device, status is `skip_on_device`'s 0/1 tensor and nothing waits for the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if defer:  # one process: nothing to reduce
        return skip_on_device(optimizers, step_flags(losses, grads, None, lambda f: f)), stop
    status, stop_any = step_status(losses, grads, stop, reduce)
    if status == "ok":
        if loss_scale != 1.0:  # `reduce` may have given gradients to parameters that had none here
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / loss_scale)
        for opt in optimizers:
            opt.step()
    return status, stop_any


def report_step(status: str | torch.Tensor, values: Iterable[tuple[str, torch.Tensor]]) -> None:
    """`stats.report` a step's (name, value) pairs unless the step was skipped: on the host, only after "ok"; for a
    device status (`skip_on_device`), weighted by 1 - status, without a sync."""
    if isinstance(status, str) and status != "ok":
        return
    keep = 1 - status if isinstance(status, torch.Tensor) else None
    for name, value in values:
        stats.report(name, value, keep)


@dataclasses.dataclass
class Outputs:
    """What a trainer hands the harness for `Run.after_step`: its evaluation and its files. Every rank calls
    `evaluate`, `on_tick` and `save_state`; rank 0 alone calls `snapshot`, then every rank waits for it."""

    evaluate: Callable[[int], dict]  # (nimg before the step) -> the due evaluations' row entries ({}: none due)
    snapshot: Callable[[], None]  # snapshot-<kimg>.safetensors (and the trainer's pictures)
    save_state: Callable[[], Path]  # state-<kimg>/ (`Run.save_state` with the trainer's modules)
    on_tick: Callable[[dict], None] = lambda row: None  # the tick's row, before the snapshot and the state


@dataclasses.dataclass
class LoopState:
    """What every loop carries from step to step and saves in each resume state (loop.json)."""

    nimg: int = 0  # images trained on, all ranks
    tick_nimg: int = 0  # nimg at the last tick
    time: float = 0.0  # seconds of training, over every process of the run (resumes included)
    nonfinite: int = 0  # skipped steps in a row
    nonfinite_total: int = 0  # skipped steps since the start of the run
    loss_scale: float = 1.0  # fp16: the dynamic loss scale (1 otherwise)
    scale_ok: int = 0  # good steps since the loss scale last changed
    data_seen: int = 0  # samples the training loaders delivered, all ranks, since the start of the run
    data_skipped: int = 0  # samples they skipped as damaged (unreadable, bad checksum, label out of range)


class Run:
    """One run of `cfg` in `outdir` (see the module docstring). Every rank builds one, at the same point."""

    def __init__(
        self,
        cfg: Any,
        outdir: str | Path,
        state: LoopState,
        log: Callable[[str], None] | None = print,
        status_keys: Iterable[str] | None = None,
        tensorboard: bool = False,
        preset: str | None = None,
    ) -> None:
        self.cfg, self.outdir, self.state, self.log = cfg, Path(outdir), state, log
        status_keys = None if status_keys is None else [*status_keys, "eta"]
        if self.outdir.exists() and not self.outdir.is_dir():
            raise ValueError(f"--outdir {self.outdir} is a file; pass a directory (a new one, or a run to resume)")
        self.accelerator = Accelerator(mixed_precision=mixed_precision(cfg.precision))
        check_world_size(self.accelerator.num_processes)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device, self.is_main = self.accelerator.device, self.accelerator.is_main_process
        self.shared_memory = comm.setup(self.rank, self.world, self.device)  # the step's collectives on one host
        if self.device.type == "cpu":
            keep_freed_memory()
        self.fp16 = self.accelerator.mixed_precision == "fp16"
        # Non-finite steps counted on the device (`count_step` of a flag tensor), settled at a tick or a state: one
        # process (a stop request needs no all-reduce), no fp16 (its loss scale changes with every step's status).
        self.defer_skips = fused_optimizers(self.device) and self.world == 1 and not self.fp16
        self._skips: torch.Tensor | None = None  # [total, in a row, most in a row] since the last settle
        self.tb = (
            eval_tensorboard.TensorBoardLogger(self.outdir) if tensorboard and self.is_main else None
        )  # fails before any work
        self.latest = checkpoint.find_latest_state(self.outdir)
        self.state_nimg = round(checkpoint.state_kimg(self.latest) * 1000) if self.latest else None
        check_resume_config(cfg, self.outdir)  # every rank: none waits alone at the barrier below
        if self.is_main:
            self.outdir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text_atomic(self.outdir / "config.json", to_json(cfg) + "\n")
            trim_stats(self.outdir / "stats.jsonl", self.state_nimg or 0)
        self.accelerator.wait_for_everyone()
        self.say(start_line(self, preset))
        self.collector = stats.Collector(
            self.outdir / "stats.jsonl", self.device, self.rank, self.world,
            log=lambda line: self.say(line + self._note), status_keys=status_keys,
        )  # fmt: skip
        self._note, self._speeds = "", []  # the status line's contention note; img/s of this process's ticks
        self.bar = progress.bar(show=False)  # the run's own bar, from `resume` on
        self.stop_requested = False
        self._handlers: dict = {}
        self.eval_seconds = 0.0  # time since the last tick spent in `not_training` blocks (sec/eval)
        self.data_stats: dict = {}  # the training loader's counts (`loader_args`), since this process started
        self._data_base: dict = {}
        self._evaluated: dict = {}  # the row entries of the evaluations since the last tick (`after_step`)
        self.stopped = False  # a signal ended the run before total_kimg (`after_step`)
        self.last_row: dict = {}  # the last stats row (`tick`) of this process

    def loader_args(self) -> dict:
        """Keyword arguments of `data.train_loader` every run passes: its counts and the damage limit."""
        return dict(stats=self.data_stats, max_skipped=self.cfg.max_skipped, window=self.cfg.skip_window)

    def say(self, line: str) -> None:
        """Rank 0: append to log.txt and echo to `log` (above the progress bar). Other ranks: silent."""
        if not self.is_main:
            return
        with open(self.outdir / "log.txt", "a") as f:
            f.write(line + "\n")
        if self.log is not None:
            progress.write(line, self.log)
            sys.stdout.flush()

    @property
    def total_nimg(self) -> int:
        return round(self.cfg.total_kimg * 1000)

    @property
    def finished(self) -> bool:
        return self.state.nimg >= self.total_nimg

    def resume(
        self, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
    ) -> dict[str, torch.Tensor]:
        """Load the newest complete state into the modules, optimisers and `self.state` (or start from scratch);
        returns this rank's extra tensors saved with it ({} from scratch). Starts the clocks."""
        tensors: dict[str, torch.Tensor] = {}
        if self.fp16:
            self.state.loss_scale = FP16_INITIAL_SCALE
        if self.latest is None:
            self.say(f"training {self.outdir} from scratch")
        else:
            loop, tensors = checkpoint.load_state(self.accelerator, self.latest, modules, optimizers)
            names = {f.name for f in dataclasses.fields(self.state)}
            for name, value in loop.items():
                if name in names:
                    setattr(self.state, name, value)
            self.say(f"resuming {self.outdir} from {self.latest.name} ({self.state.nimg / 1000:.3f} kimg)")
            if self.finished:
                self.say(f"{self.outdir} already finished {self.state.nimg / 1000:.3f} kimg (raise total_kimg=... "
                         "to train longer)")  # fmt: skip
        self._data_base = {"data/seen": self.state.data_seen, "data/skipped": self.state.data_skipped}
        stats.reset()
        self.start_time, self.tick_time, self.tick_start_nimg = (
            time.time() - self.state.time,
            time.time(),
            self.state.nimg,
        )
        self._start_progress()
        return tensors

    @contextlib.contextmanager
    def not_training(self) -> Iterator[None]:
        """Time a block that is not training (evaluation, snapshot, state): the next stats row reports it as
        sec/eval, and its img/s counts training time only."""
        start = time.time()
        try:
            yield
        finally:
            self.eval_seconds += time.time() - start

    def count_step(self, status: str | torch.Tensor, what: str | None = None) -> None:
        """After each step (status of `step_status`): count skipped steps, stop a diverged run, and in fp16 grow
        the loss scale after FP16_SCALE_GROWTH good steps and halve it on an overflow (not a divergence). A 0/1
        tensor (`skip_on_device`'s) is counted on the device, without a sync, until `settle_skips`."""
        s = self.state
        self.bar.update(s.nimg - self.bar.n)  # the images before this step
        if isinstance(status, torch.Tensor):
            if self._skips is None:
                self._skips = torch.tensor([0.0, s.nonfinite, s.nonfinite], device=status.device)
            total, in_row, most = self._skips.unbind()
            in_row = (in_row + 1) * status
            self._skips = torch.stack([total + status, in_row, torch.maximum(most, in_row)])
            return
        if status == "ok":
            s.nonfinite, s.scale_ok = 0, s.scale_ok + 1
            if self.fp16 and s.scale_ok % FP16_SCALE_GROWTH == 0:
                s.loss_scale = min(s.loss_scale * 2, FP16_MAX_SCALE)
            return
        if status == "grad" and self.fp16 and s.loss_scale > 1.0:
            s.loss_scale, s.scale_ok = s.loss_scale / 2, 0
            return
        s.nonfinite, s.nonfinite_total = s.nonfinite + 1, s.nonfinite_total + 1
        self._check_diverged(s.nonfinite, what or {"loss": "losses", "grad": "gradients"}[status])

    def _check_diverged(self, in_a_row: int, what: str, when: str = "at") -> None:
        if in_a_row >= self.cfg.max_nonfinite:
            raise ValueError(
                f"{in_a_row} non-finite {what} in a row {when} {self.state.nimg / 1000:g} kimg (max_nonfinite="
                f"{self.cfg.max_nonfinite}); the run diverged: lower lr, use precision=fp32, or check the data, in a "
                f"new --outdir; the states and snapshots already in {self.outdir} are finite"
            )

    def settle_skips(self) -> None:
        """The device's count of skipped steps into `state` (one host sync); stop a run that diverged meanwhile."""
        if self._skips is None:
            return
        t = self._skips
        total, in_row, most = (round(v) for v in t.tolist())
        self._skips = torch.stack([torch.zeros_like(t[0]), t[1], t[1]])  # the run in a row goes on
        self.state.nonfinite_total += total
        self.state.nonfinite = in_row
        self._check_diverged(most, "losses/gradients", "by")  # counted on the device: by this tick

    def tick(self, extra: dict) -> dict:
        """One stats row: kimg, nimg, the trainer's `extra`, times (time, seconds, sec/tick, sec/eval), speed (img/s),
        skipped steps (nonfinite), the loaders' counts (data/seen, data/skipped), eta, and every value reported since
        the last tick (reduced over ranks); rank 0 appends it to stats.jsonl and prints the status line."""
        self.settle_skips()
        s, now = self.state, time.time()
        s.time = now - self.start_time
        counts = stream_counts(self.data_stats, self._data_base)  # samples read / skipped (every rank alike)
        s.data_seen, s.data_skipped = counts["data/seen"], counts["data/skipped"]
        row = {"kimg": s.nimg / 1000, "nimg": s.nimg, **extra}
        train_seconds = now - self.tick_time - self.eval_seconds  # img/s counts training only
        row.update({"time": fmt_time(s.time), "seconds": round(s.time, 3), "sec/tick": round(now - self.tick_time, 3),
                    "img/s": round((s.nimg - self.tick_start_nimg) / max(train_seconds, 1e-9), 2),
                    "sec/eval": round(self.eval_seconds, 3),
                    "nonfinite": s.nonfinite_total, **counts, "eta": self._eta(now)})  # fmt: skip
        self._note = contention_note(self._speeds, row["img/s"])
        self.bar.update(s.nimg - self.bar.n)
        row = self.last_row = self.collector.tick(row)
        if self.tb is not None:
            self.tb.scalars(row, s.nimg / 1000)
        self.tick_time, self.tick_start_nimg, s.tick_nimg, self.eval_seconds = now, s.nimg, s.nimg, 0.0
        return row

    def defers(self, optimizers: Iterable[torch.optim.Optimizer]) -> bool:
        """Whether steps of `optimizers` are skipped on the device (`apply_step`'s defer): `defer_skips` and every
        optimiser fused. Asked after `resume`: a state saved with unfused optimisers (on a CPU) keeps them unfused."""
        return self.defer_skips and all(g.get("fused") for opt in optimizers for g in opt.param_groups)

    def after_step(self, prev_nimg: int, stop: bool, out: Outputs, extra: dict) -> bool:
        """After a step took `state.nimg` from prev_nimg: the trainer's due evaluations (`out.evaluate`, timed as
        sec/eval), then at a tick (every tick_kimg, and at the end) the stats row of `extra`, the evaluations'
        entries and every reported value, the snapshot and the resume state when due (both fall on ticks). Returns
        True when the loop must end: `stop` (a signal on some rank) before total_kimg, after saving a state."""
        s, cfg, done = self.state, self.cfg, self.finished
        with self.not_training():
            self._evaluated.update(out.evaluate(prev_nimg))
        if done or due(s.tick_nimg, s.nimg, cfg.tick_kimg):
            since = s.tick_nimg
            out.on_tick(self.tick({**extra, **self._evaluated}))
            self._evaluated = {}
            if done or due(since, s.nimg, cfg.snapshot_kimg):
                with self.not_training():
                    if self.is_main:
                        out.snapshot()
                    self.accelerator.wait_for_everyone()
            if done or due(since, s.nimg, cfg.state_kimg):
                out.save_state()
        if stop and not self.finished:  # save where we are (mid-tick values are dropped) and end cleanly
            self.stopped = True
            self.stop(out.save_state)
        return stop

    def save_state(
        self,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        rank_tensors: dict[str, torch.Tensor],
    ) -> Path:
        """`state-<kimg>/` at the current nimg (every rank calls it)."""
        self.settle_skips()
        self.state.time = time.time() - self.start_time
        state = dataclasses.asdict(self.state)
        writing = f"writing state-{checkpoint.kimg_tag(self.state.nimg)}/"
        with self.not_training(), progress.phase(writing, self.is_main):
            self.latest = checkpoint.save_state(self.accelerator, self.outdir, self.state.nimg, state, modules,
                                                optimizers, rank_tensors)  # fmt: skip
        self.state_nimg = self.state.nimg
        return self.latest

    def stop(self, save: Callable[[], Path]) -> None:
        """After a signal: make sure a state at the current nimg exists (`save` writes one), say how to resume."""
        self.bar.close()  # the stop message goes under the bar, not through it
        path = self.latest if self.state_nimg == self.state.nimg else save()
        self.say(f"stopped by a signal at {self.state.nimg / 1000:g} kimg; saved {path}; re-run the command to resume")

    # Progress (`amr_fast.progress`): the run's bar and the status line's ETA.
    def _start_progress(self) -> None:
        """The run's bar (images, rate and the run's ETA) and the clock the status line's ETA is measured on."""
        self.bar.close()
        self.bar = progress.bar(total=self.total_nimg, initial=min(self.state.nimg, self.total_nimg), desc="train",
                                unit="img", unit_scale=True, show=self.is_main and not self.finished,
                                smoothing=0)  # fmt: skip
        self._eta_from = (time.time(), self.state.nimg)

    def _eta(self, now: float) -> str:
        """Time left to total_kimg at this process's pace so far (probes, snapshots and states included)."""
        t0, n0 = self._eta_from
        done, left = self.state.nimg - n0, self.total_nimg - self.state.nimg
        return fmt_time(left * (now - t0) / done) if done > 0 and left > 0 else "0m00s" if left <= 0 else "-"

    # Signals: `with run:` around the loop.
    def __enter__(self) -> Run:
        _stop_signal[0] = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A second signal acts at once; one within a second of the first is the same stop forwarded by a launcher
        # (torchrun passes the group's Ctrl-C / SIGTERM on to its processes, which had it already).
        if self.stop_requested:
            if time.time() - self._stop_time > 1.0:
                signal.signal(signum, self._handlers.get(signum, signal.SIG_DFL))
                signal.raise_signal(signum)
            return
        self.stop_requested, self._stop_time = True, time.time()
        _stop_signal[0] = signum
        if self.is_main:  # os.write: a print here could interrupt another write to stderr (a progress bar)
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            lead = "\n" if progress.interactive() else ""  # off the bar's line
            line = f"{what}: stopping; a state is saved when this step or evaluation ends ({what} again quits at once)"
            os.write(2, f"{lead}{line}\n".encode())

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        comm.close()
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()
        if self.tb is not None:
            self.tb.close()
        if self.world > 1 and exc[0] is None:  # the process group's threads end here, not at interpreter exit
            self.accelerator.wait_for_everyone()
            self.accelerator.end_training()


# ---------------------------------------------------------------------------------------------------------------
# The command line of both trainers: preset -> overrides -> validate (--dry-run prints the JSON and stops) -> train,
# whose first line (`start_line`) sums the config up; the whole config is the run's config.json.


def start_line(run: Run, preset: str | None) -> str:
    """The one line a run starts with: what it trains, on what, where (the full config is in config.json)."""
    cfg, precision = run.cfg, run.accelerator.mixed_precision
    why = precision_choice(cfg.precision, default_device_type())[1]
    return (
        f"preset {preset or '-'}, data {cfg.data}, {cfg.total_kimg:g} kimg, {run.world} process"
        f"{'es' if run.world > 1 else ''} on {run.device.type}, precision {'fp32' if precision == 'no' else precision}"
        f" ({why}), outdir {run.outdir} (full config: {run.outdir / 'config.json'})"
    )


def configure_run_parser(parser: argparse.ArgumentParser, default_preset: str, example: str, config: type) -> None:
    """The flags both trainers share; `field=value` overrides list every field of `config` in --help."""
    fields = ", ".join(config.__dataclass_fields__)
    overrides_help = f"config overrides, e.g. {example} (tuples comma-separated); fields: {fields}"
    parser.add_argument("--preset", default=default_preset, help="starting configuration (see --list-presets)")
    parser.add_argument("--outdir", default=None, help="run directory; re-running the same command resumes it "
                        "(default: runs/<preset>)")  # fmt: skip
    parser.add_argument(
        "--data",
        default=None,
        help="dataset made by `amr-fast shard`: a directory, an http(s):// directory URL or 'pipe:CMD {}' ({} = each "
        "file's name, e.g. 'pipe:aws s3 cp s3://bucket/fm32/{} -'); same as data=...",
    )
    parser.add_argument("overrides", nargs="*", metavar="field=value", help=overrides_help)
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit (a run "
                        "prints a one-line summary and writes the JSON to RUN/config.json)")  # fmt: skip
    parser.add_argument(
        "--tensorboard", action="store_true",
        help="also log every stats row (and sample grid) to RUN/tensorboard/ (needs the tensorboard package)",
    )  # fmt: skip


def config_from_args(args: argparse.Namespace, presets: dict) -> Any | None:
    """The validated config of the command line; None after --dry-run, which prints it as JSON. `procs=N` (not a
    config field: the launch, not the run) is taken out first (`args.procs`, 0 = one per core)."""
    args.procs = 0
    for item in [o for o in args.overrides if o.split("=", 1)[0] == "procs"]:
        value = item.split("=", 1)[1]
        if not value.isdigit():
            raise ValueError(f"procs must be a number of processes (0 = one per usable core); got {value!r}")
        args.procs = int(value)
        args.overrides.remove(item)
    overrides = parse_overrides(args.overrides)
    if args.data is not None:
        overrides["data"] = args.data
    cfg = resolve(args.preset, overrides, presets)
    if args.dry_run:
        print(to_json(cfg))
        return None
    return cfg
