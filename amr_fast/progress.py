"""Progress of every slow phase (training up to the next status line, probes, metrics, evaluation, sharding,
rendering, snapshots, downloads), so that a run is never silent for long.

On a terminal (stderr is a TTY): a tqdm bar with count, rate and ETA, cleared when its phase ends (the run's own
bar stays at the bottom while status lines scroll above it). Anywhere else (a log file, Slurm, a pipe): plain
lines, no carriage returns, at most one every `AMR_FAST_PROGRESS_S` seconds (default 30) and none within that
time after a line of the run's own (so the run's bar is a heartbeat between status lines), the first after 10 s
of a phase, and a last one when a phase that printed ends. Bars and lines go to stderr, only from rank 0 (`RANK`
unset or 0), and are not part of `log.txt`, which keeps what the run printed on stdout. `AMR_FAST_PROGRESS=0`
turns them off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

# No tqdm monitor thread: with it, a run stopped by SIGTERM with loader threads can abort at exit ("terminate
# called without an active exception").
tqdm.monitor_interval = 0
_last_output = [0.0]  # when the run last printed a line of its own (`note_output`): plain lines wait after it


def interval() -> float:
    """Seconds between two plain progress lines (not a terminal)."""
    return float(os.environ.get("AMR_FAST_PROGRESS_S", "30"))


def enabled() -> bool:
    return os.environ.get("AMR_FAST_PROGRESS", "1") != "0" and int(os.environ.get("RANK", "0")) == 0


def interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def note_output() -> None:
    """The run printed a line (a status line): a plain progress line is due only `interval()` after it."""
    _last_output[0] = time.monotonic()


class _Null:
    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _Lines(tqdm):
    """tqdm for logs: each display is one plain line on stderr, at most one per `interval()` and none within an
    interval after the run's own last line, except the last one (`close` disables the bar, then displays)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now, every = time.monotonic(), interval()
        printed = getattr(self, "_printed", None)
        recent = (printed is not None and now - printed < every) or now - _last_output[0] < every
        if msg == "" or (recent and not self.disable):
            return True
        self._printed = now
        print(self.__str__() if msg is None else msg, file=sys.stderr, flush=True)
        return True


def bar(
    iterable: Iterable | None = None,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = False,
    show: bool = True,
    **kw: Any,
) -> tqdm:
    """A progress bar (tqdm's API: iterate it, or `update(n)` / `close()`); a silent one where `show` is False,
    progress is off or this is not rank 0."""
    disable = not (show and enabled())
    if disable or interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable, dynamic_ncols=True,
                    file=sys.stderr, **kw)  # fmt: skip
    every = interval()
    first = min(every, 10.0)
    return _Lines(iterable, total=total, desc=desc, unit=unit, leave=True, file=_Null(), mininterval=first,
                  delay=first, ascii=True, ncols=100, **kw)  # fmt: skip


def write(line: str, log: Callable[[str], None]) -> None:
    """Print a line of the run through `log` without breaking a bar on the terminal (tqdm clears and redraws)."""
    note_output()
    if enabled() and interactive():
        with tqdm.external_write_mode(file=sys.stdout):
            log(line)
    else:
        log(line)


@contextlib.contextmanager
def phase(desc: str, show: bool = True) -> Iterator[None]:
    """A step without a count (a snapshot write, a state write): after `interval()` seconds (2 s on a terminal)
    a line `desc ...` on stderr and, at the end, how long it took."""
    if not (show and enabled()):
        yield
        return
    start, said = time.monotonic(), threading.Event()

    def announce() -> None:
        said.set()
        tqdm.write(f"{desc} ...", file=sys.stderr)  # above any bar on the terminal

    timer = threading.Timer(2.0 if interactive() else interval(), announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            tqdm.write(f"{desc}: done in {time.monotonic() - start:.0f} s", file=sys.stderr)


def counted(batches: Iterable[dict], total: int | None, desc: str, show: bool = True, share: int = 1) -> Iterator[dict]:
    """The batches (dicts with "x") of a loader, counting their images on a bar of `total` images. share: the
    number of processes reading equal parts of the `total` images (the bar shows `share` x this one's count)."""
    b = bar(total=total, desc=desc, unit="img", unit_scale=True, show=show)
    try:
        for batch in batches:
            yield batch
            b.update(min(share * len(batch["x"]), total - b.n) if total else share * len(batch["x"]))
    finally:
        b.close()


def fmt_time(seconds: float) -> str:
    """Seconds as the status line and the summary write them: 4m05s, 1h02m03s."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
