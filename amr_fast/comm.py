"""The collectives of a training step (the gathers of `amr_fast.globalbatch`, the gradient all-reduce, the step's
flags): torch.distributed (gloo, NCCL), or, when every process of a CPU run is on this host, a shared-memory
segment that the processes write and read directly.

Why: on a small CPU a gloo collective costs more than its bytes. Measured on a 2-core VM, 2 processes: a gloo
all-gather of 256 bytes takes 0.5 ms back to back and 1.7 ms after 20 ms of compute (a waiting process sleeps, its
CPU idles and wakes late); the step of `amr-fast train` makes three or four of them. Through shared memory a
collective is a copy and a wait on a counter.

The segment (`setup`, every rank at the same point, after the process group exists): a counter per rank (each on
its own cache line) and two banks of one slot per rank. Collective (or chunk of a large one) k writes this rank's
bytes to its slot of bank k % 2, publishes k in its counter and waits until every counter has reached k; then every
rank reads all slots: an all-gather concatenates them in rank order, an all-reduce sums them in rank order (the
same bits on every rank, as the replicas of the model need). Two banks make one barrier per collective enough: a
rank writes bank k % 2 again at collective k + 2, after passing barrier k + 1, which no rank reaches before it has
read collective k. The segment's file is removed as soon as every rank has mapped it: nothing is left in /dev/shm
whatever ends the run.

Waiting spins (looking at the counters, `os.sched_yield` between looks so that another thread of the core runs)
for up to SPIN_SECONDS, then sleeps a millisecond between looks (a rank waiting for another's snapshot or
evaluation takes no CPU); every 0.1 s it checks that the other processes live (a dead one is an error, as a
closed gloo connection is) and gives up after TIMEOUT_SECONDS, as gloo does. Used on x86-64 Linux (whose stores
are seen in program order, fenced by a lock before the counter) when every rank can map the segment; elsewhere,
on a GPU, or with AMR_FAST_SHM=0 the collectives are torch.distributed's.
"""

from __future__ import annotations

import mmap
import os
import platform
import threading
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist

SEGMENT_BYTES = 32 << 20  # both banks, every rank's slot: the most a segment takes of /dev/shm
SLOT_BYTES = 4 << 20  # one rank's slot at most: larger collectives go in chunks of it
SPIN_SECONDS = 0.02  # wait with sched_yield this long, then with 1 ms sleeps
TIMEOUT_SECONDS = 1800.0  # gloo's default timeout
_LINE = 64  # bytes: one counter per cache line

_segment: _Segment | None = None


class _Segment:
    def __init__(self, rank: int, world: int, mm: mmap.mmap, pids: list[int]) -> None:
        self.rank, self.world, self.mm, self.pids, self.k = rank, world, mm, pids, 0
        self.slot = min(SLOT_BYTES, SEGMENT_BYTES // (2 * world)) // _LINE * _LINE
        self.counters = np.frombuffer(mm, dtype=np.int64, count=_LINE // 8 * world)[:: _LINE // 8]
        self.banks = torch.frombuffer(mm, dtype=torch.uint8, offset=_LINE * world, count=2 * world * self.slot)
        self.banks = self.banks.view(2, world, self.slot)
        self.fence = threading.Lock()

    def exchange(self, part: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `part` (contiguous, at most a slot's bytes, the same shape and dtype on every rank), in
        rank order: views into the segment, valid until the collective after next."""
        self.k += 1
        bank = self.banks[self.k % 2]
        nbytes = part.numel() * part.element_size()
        bank[self.rank, :nbytes].copy_(part.reshape(-1).view(torch.uint8))
        with self.fence:  # a locked instruction: the slot's bytes are visible before the counter
            pass
        self.counters[self.rank] = self.k
        self._wait(self.k)
        return [bank[r, :nbytes].view(part.dtype).view(part.shape) for r in range(self.world)]

    def _wait(self, k: int) -> None:
        counters = self.counters
        if counters.min() >= k:
            return
        start = check = time.monotonic()
        while counters.min() < k:
            now = time.monotonic()
            if now - start < SPIN_SECONDS:
                os.sched_yield()
                continue
            time.sleep(0.001)
            if now - check > 0.1:
                check = now
                self._check_peers(now - start)

    def _check_peers(self, waited: float) -> None:
        for r, pid in enumerate(self.pids):
            if r != self.rank and not _alive(pid):
                raise RuntimeError(f"process {r} of {self.world} ended while process {self.rank} waited for it")
        if waited > TIMEOUT_SECONDS:
            raise RuntimeError(f"process {self.rank} of {self.world} waited {waited:.0f} s for the others")


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped by the launcher, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def supported() -> bool:
    """Whether this machine can use the shared-memory path (x86-64 Linux with /dev/shm; AMR_FAST_SHM=0: never)."""
    return (os.environ.get("AMR_FAST_SHM", "1") != "0" and platform.system() == "Linux"
            and platform.machine() in ("x86_64", "AMD64") and os.path.isdir("/dev/shm"))  # fmt: skip


def _path(key: int) -> str:
    return f"/dev/shm/amr-fast-{key:016x}"


def setup(rank: int, world: int, device: torch.device) -> bool:
    """Every rank, after the process group exists: the shared-memory path for this process group's CPU
    collectives when all ranks can map one segment (they are on one host), else torch.distributed's. Returns
    whether the shared-memory path is on."""
    global _segment
    close()
    if world <= 1 or device.type != "cpu":
        return False
    size = _LINE * world + 2 * world * (min(SLOT_BYTES, SEGMENT_BYTES // (2 * world)) // _LINE * _LINE)
    key = torch.zeros(2, dtype=torch.int64)  # rank 0's segment name (0: none); tensors, not pickled objects
    if rank == 0 and supported():
        key[0] = uuid.uuid4().int >> 65
        try:
            with open(_path(int(key[0])), "wb") as f:
                f.truncate(size)
        except OSError:
            key[0] = 0
    dist.broadcast(key, src=0)
    mm = None
    if int(key[0]) and supported():
        try:
            with open(_path(int(key[0])), "r+b") as f:
                mm = mmap.mmap(f.fileno(), size)
        except OSError:  # another host, or another /dev/shm
            mm = None
    mapped = torch.tensor([[int(mm is not None), os.getpid()]], dtype=torch.int64)
    everyone = [torch.empty_like(mapped) for _ in range(world)]
    dist.all_gather(everyone, mapped)
    if rank == 0 and int(key[0]):
        os.unlink(_path(int(key[0])))  # every rank has mapped it (or given up): no file outlives the run
    if not all(int(t[0, 0]) for t in everyone):
        if mm is not None:
            mm.close()
        return False
    _segment = _Segment(rank, world, mm, [int(t[0, 1]) for t in everyone])
    return True


def close() -> None:
    """Back to torch.distributed's collectives (the segment is unmapped)."""
    global _segment
    if _segment is not None:
        segment, _segment = _segment, None
        del segment.banks, segment.counters
        segment.mm.close()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum the contiguous tensor `t` over ranks in place (every rank gets the same bits); returns t."""
    if _segment is None or t.device.type != "cpu":
        dist.all_reduce(t)
        return t
    flat = t.view(-1)
    per = _segment.slot // t.element_size()
    for start in range(0, flat.numel(), per):
        part = flat[start : start + per]
        slots = _segment.exchange(part)
        part.copy_(slots[0])
        for other in slots[1:]:
            part.add_(other)
    return t


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """[n, ...] on every rank (the same shape and dtype) -> [world * n, ...]: every rank's x in rank order."""
    if _segment is None or x.device.type != "cpu":
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)
    flat = x.contiguous().view(-1)
    out = torch.empty((_segment.world, flat.numel()), dtype=x.dtype)
    per = _segment.slot // x.element_size()
    for start in range(0, flat.numel(), per):
        for r, part in enumerate(_segment.exchange(flat[start : start + per])):
            out[r, start : start + per] = part
    return out.view(_segment.world * x.shape[0], *x.shape[1:])
