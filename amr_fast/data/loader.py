"""The streaming reader: an infinite, resumable training stream per rank, and an exact evaluation pass.

How the training stream is made (our equivalent of WebDataset's resampled shards, with MosaicML Streaming's
"elastic determinism": the sample order does not depend on the number of processes or workers):

- One GLOBAL stream of batches of `batch_size` (the global batch), a function of (dataset, split, seed,
  batch_size) only. It is read by C canonical "slots", C the largest of 12, 6, 4, 3, 2, 1 that leaves every slot
  at least two batches a round: the dataset and the batch decide C, never the launch. Global batch g is the
  (g // C)-th batch of slot g % C.
- Every rank reads the whole global stream and keeps its rows (`rank_rows`: for accumulation step a, rank r
  takes rows a * world * micro + r * micro ...): global batch g holds the same images in the same order on any
  world size, and rank r trains on its slice, so a run resumes on another number of processes. Each rank reads
  and decodes every sample (a raw shard's parse is numpy: a small cost next to a training step).
- Units: each shard is cut into P >= ceil(C / shards) interleaved parts (sample i of a shard goes to part
  i % P), so there are always at least as many units as slots; P is chosen (up to twice the minimum) to leave
  the fewest units unused per round.
- Rounds: round r permutes the units with a generator seeded by (seed, r); slot q gets the q-th block of
  U = units // C units, so within a round the slots read disjoint samples. Each slot yields exactly
  B = (the U smallest units' samples) // batch_size batches per round. The unused tail of a round differs from
  round to round. A shuffle buffer (seeded by (seed, r, slot)) mixes the samples a slot reads: each unit read
  is merged with the buffer and all but `shuffle_buffer` samples leave in random order.
- Speed: a unit is read as arrays at once. Raw shards (fixed-size members) are parsed by numpy without a
  Python loop over samples (`tario.uniform_members`); PNG / JPEG shards are decoded sample by sample. Workers
  send whole batches, so there is no per-sample inter-process traffic.
- Workers: worker w of W makes global batches start_batch + w, + W, ... (the DataLoader takes them round-robin);
  with W dividing C (workers 1, 2, 3, 4, 6) each worker reads its own slots only. `start_batch` (global batches
  already trained on) resumes the same stream on any world size and worker count, skipping whole rounds without
  reading them and replaying only the current round up to the resume point.
- Damage costs the damaged samples only: a sample that will not decode, fails its CRC-32 (where its header has
  one) or has a label outside the index's classes, a run of samples behind a broken tar
  header (reading resumes at the next valid header), and the tail of a truncated shard are skipped with a
  warning naming the shard and counted (`stats["skipped"]`, next to `stats["seen"]`); the slot then tops its
  round up from the round's unused units, so the batch count stays equal (every rank reads the same
  bytes and makes the same choice). More than `max_skipped` (1%) of the
  last `window` samples skipped stops the run with an error naming the dataset (config fields `max_skipped`,
  `skip_window` of both trainers).
- Remote data (`http(s)://` directory URLs, `pipe:...{}` commands; `amr_fast.data.remote`): a shard that cannot
  be read is retried, then what arrived is parsed and the rest counted as skipped, with the URL in the warning.
  With at least as many shards as readers each shard is one unit (P = 1), downloaded once per round; with
  fewer, the readers of a machine share one downloaded copy of each shard instead of downloading it per part.

Never pass these loaders to `accelerator.prepare`: it would wrap the DataLoader in its own sharding (each rank
keeps only every world_size-th batch of a stream that is already per rank), dropping data and breaking the
order and resume guarantees above. Move batches to the device yourself.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import threading
import warnings
import zlib
from collections import deque
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from amr_fast.data.index import collate, decode_plan, decode_sample, load_index, raw_array
from amr_fast.data.remote import fetch, fetch_shared, join, local_path
from amr_fast.data.tario import BLOCK, ascii_ints, iter_samples_at, uniform_members

SHUFFLE_BUFFER = 2000  # samples held per worker for shuffling


def _parts(shards: int, slots: int) -> int:
    """Parts per shard for training: at least ceil(slots / shards) so every slot gets a unit, then (up to twice
    that, which bounds the extra parsing of re-read shards) the count that leaves the fewest units unused per round.
    """
    low = max(1, math.ceil(slots / shards))
    return min(range(low, 2 * low + 1), key=lambda p: ((shards * p) % slots) / (shards * p))


def _take(arrays: dict[str, np.ndarray], idx: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _Units:
    """A split's shards cut into interleaved parts: unit u = (shard j, part p) = samples p, p + P, ... of j."""

    def __init__(self, index: dict, split: str, slots: int, balanced: bool = False) -> None:
        splits = index["splits"]
        if split not in splits:
            raise ValueError(
                f"dataset {index.get('name')!r} at {index['root']} has no split {split!r}; it has {', '.join(splits)}"
            )
        info = splits[split]
        self.root = index["root"]
        self.names = list(info["shards"])
        local = local_path(self.root)
        self.remote = local is None
        self.urls = [join(self.root, name) if local is None else str(local / name) for name in self.names]
        self.digest = index.get("digest", "")
        self.sizes = list(info.get("shard_sizes") or [])
        self.num_classes = int(index.get("num_classes") or 0)  # labels must lie in [0, num_classes) when > 0
        if not self.names or info["num_samples"] == 0:
            raise ValueError(f"split {split!r} of {self.root} is empty; re-create the dataset with `amr-fast shard`")
        shards = len(self.names)
        if self.remote and shards >= slots:
            self.parts = 1  # whole shards: each is downloaded once per round
        elif balanced:
            self.parts = _parts(shards, slots)
        else:
            self.parts = max(1, math.ceil(slots / shards))
        self.units = [(j, p) for j in range(shards) for p in range(self.parts)]
        self.unit_sizes = [len(range(p, self.sizes[j], self.parts)) for j, p in self.units]
        self.fields = index["fields"]
        self.plan = decode_plan(self.fields)
        # Fixed-size members only (raw images / points, labels, attributes, factors): parse shards without a
        # Python loop over samples. PNG / JPEG shards take the per-sample path.
        vectorised = all(ext not in ("png", "jpg") for _, ext, _, _ in self.plan)
        self.layout = (
            [(ext, None if ext == "cls" else nbytes) for _, ext, nbytes, _ in self.plan] if vectorised else None
        )
        self.stride = (
            sum(BLOCK * (1 + -(-(size or BLOCK) // BLOCK)) for _, size in self.layout) if self.layout else None
        )
        self._cache: tuple[int, bytes] | None = None

    def _shard(self, j: int) -> bytes:
        if self._cache is None or self._cache[0] != j:
            url = self.urls[j]
            if not self.remote:
                try:
                    data, error = Path(url).read_bytes(), None
                except OSError as err:
                    data, error = b"", str(err)
            elif self.parts == 1:
                data, error = fetch(url)
            else:  # several readers need parts of this shard: one download per machine, shared
                data, error = fetch_shared(url, self.names[j], self.digest)
            if error is not None:
                got = f"parsing the {len(data)} bytes received, " if data else ""
                warnings.warn(
                    f"cannot read shard {url}: {error}; {got}skipping the samples that did not arrive",
                    stacklevel=3,
                )
            self._cache = (j, data)
        return self._cache[1]

    def read(self, u: int) -> tuple[dict[str, np.ndarray], int]:
        """Unit u's readable samples as arrays ("index" + one per field) and the number of its samples lost."""
        j, p = self.units[u]
        data = self._shard(j)
        parsed = self._read_uniform(data, j, p) if self.layout is not None else None
        arrays, reported = parsed if parsed is not None else self._read_samples(data, j, p)
        arrays, reported = self._check_labels(arrays, j, reported)
        lost = self.unit_sizes[u] - len(arrays["index"])
        if lost > reported and (p == 0 or self.parts == 1):  # the samples counted in `reported` were named already
            warnings.warn(
                f"shard {self.urls[j]} is damaged (truncated or corrupt): {lost - reported} sample(s) of this "
                "part lost and skipped; re-create the dataset with `amr-fast shard` to recover them",
                stacklevel=2,
            )
        return arrays, max(lost, 0)

    def _check_labels(self, arrays: dict[str, np.ndarray], j: int, reported: int) -> tuple[dict, int]:
        """Drop (and count) samples whose label is outside [0, num_classes): a corrupt label or the wrong data."""
        y = arrays.get("y")
        if self.num_classes <= 0 or y is None:
            return arrays, reported
        ok = (y >= 0) & (y < self.num_classes)
        if ok.all():
            return arrays, reported
        bad = arrays["index"][~ok]
        warnings.warn(
            f"skipping {len(bad)} sample(s) of shard {self.urls[j]} with labels outside 0..{self.num_classes - 1} "
            f"(sample {bad[0]}: label {y[~ok][0]}); the dataset index says {self.num_classes} classes",
            stacklevel=3,
        )
        return _take(arrays, ok), reported + len(bad)

    def _read_uniform(self, data: bytes, j: int, p: int) -> tuple[dict[str, np.ndarray], int] | None:
        parsed = uniform_members(data, self.sizes[j], self.layout, rows=slice(p, None, self.parts))
        if parsed is None:
            return None  # not the exact layout (e.g. a damaged shard): the per-sample path copes with it
        keys, payloads, bad = parsed
        for key in bad:
            warnings.warn(f"skipping sample {key:08d} of shard {self.urls[j]}: it fails its checksum", stacklevel=3)
        out = {"index": keys.copy()}
        for (name, ext, _, _), payload in zip(self.plan, payloads):
            out[name] = ascii_ints(payload) if ext == "cls" else raw_array(name, self.fields[name], payload)
        return out, len(bad)

    def _read_samples(self, data: bytes, j: int, p: int) -> tuple[dict[str, np.ndarray], int]:
        decoded, keys, failed = [], [], 0
        for ordinal, (at, key, raw) in enumerate(iter_samples_at(data)):
            if self.stride:  # fixed layout: the position in the shard, even after lost samples
                ordinal = at // self.stride
            if ordinal % self.parts != p:
                continue
            try:
                if None in raw.values():
                    raise ValueError("it fails its checksum")
                decoded.append(decode_sample(raw, self.plan))
            except (ValueError, OSError, SyntaxError) as err:  # PIL raises OSError / SyntaxError on broken images
                warnings.warn(f"skipping undecodable sample {key} in {self.urls[j]}: {err}", stacklevel=3)
                failed += 1
                continue
            keys.append(int(key.rsplit("/", 1)[-1]))
        out = collate(decoded, self.fields)
        out["index"] = np.array(keys, dtype=np.int64)
        return out, failed


class _Batcher:
    """Cuts a stream of sample arrays into batches of `size`; carries the skipped-sample count to the next batch."""

    def __init__(self, size: int) -> None:
        self.size, self.parts, self.count, self.skipped = size, [], 0, 0

    def add(self, arrays: dict[str, np.ndarray]) -> Iterator[dict]:
        if len(arrays["index"]):
            self.parts.append(arrays)
            self.count += len(arrays["index"])
        while self.count >= self.size:
            pool = _concat(self.parts)
            self.parts, self.count = [_take(pool, slice(self.size, None))], self.count - self.size
            yield self._batch(_take(pool, slice(0, self.size)))

    def flush(self) -> Iterator[dict]:
        if self.count:
            yield self._batch(_concat(self.parts))
        elif self.skipped:
            yield {"_seen": 0, "_skipped": self.skipped}
        self.parts, self.count, self.skipped = [], 0, 0

    def _batch(self, arrays: dict[str, np.ndarray]) -> dict:
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        batch["_seen"], batch["_skipped"], self.skipped = len(arrays["index"]), self.skipped, 0
        return batch


CANONICAL_SLOTS = (12, 6, 4, 3, 2, 1)  # readers of the global stream: the most that leaves >= 2 batches a round


class _TrainStream(IterableDataset):
    """The GLOBAL stream of batches of `batch` samples (a function of the dataset, seed and `batch` only), of
    which this rank yields its rows (`rows`)."""

    def __init__(self, index: dict, split: str, batch: int, rows: np.ndarray | None, seed: int, workers: int,
                 start_batch: int, shuffle_buffer: int) -> None:  # fmt: skip
        self.W = max(workers, 1)
        self.index, self.split, self.batch, self.rows = index, split, batch, rows
        self.seed, self.start_batch, self.shuffle_buffer = seed, start_batch, shuffle_buffer
        for slots in CANONICAL_SLOTS:  # the dataset and the batch decide, never the world size or the workers
            self.slots = slots
            self.units = _Units(index, split, slots, balanced=True)
            self.per_slot = len(self.units.units) // slots  # U units per slot per round
            smallest = sorted(self.units.unit_sizes)[: self.per_slot]
            self.batches_per_round = sum(smallest) // batch  # B, equal for every slot
            if self.batches_per_round >= 2:
                break
        if self.batches_per_round == 0:
            raise ValueError(
                f"split {split!r} of {self.units.root} has {index['splits'][split]['num_samples']} samples: too few "
                f"for global batches of {batch}; lower batch, or re-shard with more samples"
            )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        return self.worker_stream(info.id if info is not None else 0)

    def worker_stream(self, w: int) -> Iterator[dict]:
        """What DataLoader worker `w` of W yields (a decode thread runs the same stream: `_threaded`): global
        batches g = start_batch + w, + W, + 2W, ...; batch g is the (g // slots)-th batch of slot g % slots."""
        streams: dict[int, Iterator[dict]] = {}
        for g in count(self.start_batch + w, self.W):
            slot = g % self.slots
            if slot not in streams:
                streams[slot] = self._slot_stream(slot, g // self.slots)
            yield self._mine(next(streams[slot]))

    def _slot_stream(self, slot: int, k: int) -> Iterator[dict]:
        """Slot `slot`'s batches from its k-th on (whole rounds before it are skipped without reading them)."""
        skip = k % self.batches_per_round
        for r in count(k // self.batches_per_round):
            for b, batch in enumerate(self._round(slot, r)):
                if b >= skip:
                    yield batch
            skip = 0

    def _mine(self, batch: dict) -> dict:
        """This rank's rows of a global batch (the counts `_seen`, `_skipped` stay the global batch's)."""
        if self.rows is None:
            return batch
        rows = torch.from_numpy(self.rows)
        return {k: v if k.startswith("_") else v.index_select(0, rows) for k, v in batch.items()}

    def _samples(self, slot: int, r: int, batcher: _Batcher) -> Iterator[dict[str, np.ndarray]]:
        """The slot's samples in round r: its units through a shuffle buffer, then top-ups if damage left it short."""
        units, U = self.units, self.per_slot
        order = np.random.default_rng([self.seed, r]).permutation(len(units.units))  # the same on every rank
        rng = np.random.default_rng([self.seed, r, slot, zlib.crc32(self.split.encode())])
        buffer = None
        for u in order[slot * U : (slot + 1) * U]:
            arrays, lost = units.read(int(u))
            batcher.skipped += lost
            pool = _concat([buffer, arrays]) if buffer is not None else arrays
            perm = rng.permutation(len(pool["index"]))  # every sample leaves uniformly from buffer + new unit
            cut = max(len(perm) - self.shuffle_buffer, 0)
            buffer = _take(pool, perm[cut:])
            yield _take(pool, perm[:cut])
        if buffer is not None:
            yield buffer
        spare = np.concatenate([order[self.slots * U :], order])  # the round's unused units first
        for _ in range(2):  # at most two passes over every unit before giving up
            for u in spare:
                arrays, lost = units.read(int(u))
                batcher.skipped += lost
                yield _take(arrays, rng.permutation(len(arrays["index"])))
        raise ValueError(
            f"split {self.split!r} of {units.root}: no readable samples left for reader {slot}; the shards are "
            "damaged: re-create the dataset with `amr-fast shard`"
        )

    def _round(self, slot: int, r: int) -> Iterator[dict]:
        batcher = _Batcher(self.batch)
        made = 0
        for arrays in self._samples(slot, r, batcher):
            for batch in batcher.add(arrays):
                yield batch
                made += 1
                if made == self.batches_per_round:
                    return


class _EvalStream(IterableDataset):
    def __init__(self, index: dict, split: str, batch_size: int, rank: int, world_size: int, workers: int) -> None:
        self.W = max(workers, 1)
        self.slots = world_size * self.W
        self.units = _Units(index, split, self.slots)
        self.batch_size, self.rank = batch_size, rank

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        slot = self.rank * self.W + (info.id if info is not None else 0)
        batcher = _Batcher(self.batch_size)
        for u in range(slot, len(self.units.units), self.slots):
            arrays, lost = self.units.read(u)
            batcher.skipped += lost
            yield from batcher.add(arrays)
        yield from batcher.flush()


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore SIGTERM / SIGINT: a signal to the whole process group (Slurm, systemd, Ctrl-C) is the main
    process's to handle (it saves a state and shuts the workers down); a worker it killed would crash the run."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(dataset: IterableDataset, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,  # workers make whole batches: one collate per batch, no per-sample IPC
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
        in_order=True,  # round-robin over workers: the order `start_batch` relies on
        worker_init_fn=_ignore_stop_signals,
    )


def _threaded(stream: _TrainStream, prefetch: int = 4) -> Iterator[dict]:
    """The DataLoader's worker streams, each in a daemon thread of this process, taken round-robin (the order of
    `DataLoader(in_order=True)`, so the stream is the same batch for batch as with worker processes). On a small
    CPU machine worker processes steal the cores of the training threads; the raw-shard reader is numpy (its big
    copies release the GIL), so threads decode ahead at a fraction of a core. A worker's error is re-raised here."""
    done = threading.Event()
    queues = [queue.Queue(maxsize=prefetch) for _ in range(stream.W)]

    def put(w: int, item: tuple) -> bool:
        while not done.is_set():
            try:
                queues[w].put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work(w: int) -> None:
        try:
            for batch in stream.worker_stream(w):
                if not put(w, (batch, None)):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(w, (None, err))

    threads = [threading.Thread(target=work, args=(w,), daemon=True, name=f"amr-decode-{w}") for w in range(stream.W)]
    for t in threads:
        t.start()
    try:
        for w in count():
            batch, err = queues[w % stream.W].get()
            if err is not None:
                raise err
            yield batch
    finally:  # join the threads: a daemon thread inside torch's C++ code at interpreter exit aborts the process
        done.set()  # ("terminate called without an active exception", exit 134) after a finished run
        for t in threads:
            t.join(timeout=60)


def decode_in_threads(workers: int) -> bool:
    """`decode="auto"`: worker threads on a small machine (<= 4 cores, where worker processes would take the
    training threads' cores), worker processes elsewhere. AMR_FAST_DECODE=thread|process overrides."""
    forced = os.environ.get("AMR_FAST_DECODE", "").strip()
    if forced in ("thread", "process"):
        return forced == "thread"
    return workers > 0 and (os.cpu_count() or 1) <= 4


def _guarded(loader: DataLoader, stats: dict | None, max_skipped: float, window: int, root: str) -> Iterator[dict]:
    """Pop the workers' counters, update `stats`, stop if too many samples were skipped in the last window."""
    batches = iter(loader)
    try:
        yield from _checked(batches, stats, max_skipped, window, root)
    finally:  # closing this generator stops the decode threads or worker processes at once, not at exit
        stop = getattr(batches, "close", None) or getattr(batches, "_shutdown_workers", None)
        if stop is not None:
            stop()


def _checked(loader: Iterator[dict], stats: dict | None, max_skipped: float, window: int, root: str):
    recent: deque[tuple[int, int]] = deque()
    seen_w = skipped_w = 0
    for batch in loader:
        seen, skipped = batch.pop("_seen"), batch.pop("_skipped")
        if stats is not None:
            stats["seen"] = stats.get("seen", 0) + seen
            stats["skipped"] = stats.get("skipped", 0) + skipped
        recent.append((seen, skipped))
        seen_w, skipped_w = seen_w + seen, skipped_w + skipped
        while len(recent) > 1 and seen_w + skipped_w - sum(recent[0]) >= window:
            s, k = recent.popleft()
            seen_w, skipped_w = seen_w - s, skipped_w - k
        if skipped_w > max_skipped * window:
            raise ValueError(
                f"{skipped_w} of the last {seen_w + skipped_w} samples read from {root} could not be read (limit "
                f"{max_skipped:.0%} of {window}): the shards are damaged; re-create the dataset with `amr-fast "
                f"shard` (or raise the override max_skipped={max_skipped} if you accept the loss; skip_window="
                f"{window} samples)"
            )
        if seen:
            yield batch


def rank_rows(batch: int, world_size: int, rank: int, micro: int = 0) -> np.ndarray | None:
    """The rows of a global batch of `batch` that rank `rank` of `world_size` trains on: for accumulation step a
    (micro = rows per rank and step; 0 = batch / world_size, no accumulation) rows a * world_size * micro +
    rank * micro ... + micro - 1, in step order. None: all of them (one process)."""
    micro = micro or batch // world_size
    if micro < 1 or batch % (micro * world_size):
        raise ValueError(f"a global batch of {batch} does not split into micro-batches of {micro} on {world_size} "
                         "process(es): batch must be a multiple of micro x world_size")  # fmt: skip
    if world_size == 1:
        return None
    steps = np.arange(batch // (micro * world_size))[:, None] * world_size * micro
    return (steps + rank * micro + np.arange(micro)[None, :]).reshape(-1)


def train_loader(
    root: str | Path,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    micro: int = 0,
    seed: int = 0,
    workers: int = 2,
    start_batch: int = 0,
    split: str = "train",
    stats: dict | None = None,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    max_skipped: float = 0.01,
    window: int = 10000,
    decode: str = "auto",
) -> Iterator[dict]:
    """Infinite stream of this rank's rows of the global training batches (see the module docstring).

    batch_size: the GLOBAL batch (all ranks and accumulation steps). The stream of global batches is a function of
    (dataset, split, seed, batch_size) only: the same images in the same order for any world size and any number
    of workers. Each item holds this rank's batch_size / world_size rows (`rank_rows`; `micro`: rows per rank and
    accumulation step, the trainer splits the item into its micro-batches). Each batch: "x" uint8 [N, C, H, W]
    (float32 [N, D] for point datasets), "y" int64 [N] (-1: unlabelled), "index" int64 [N] (each sample's index in
    its split), and when the dataset has them "attrs" float32 [N, A] in {0, 1}, "factors" float32 [N, F],
    "factor_classes" int64 [N, F]. A resumed run passes the number of global batches already trained on as
    `start_batch` (on any world size and worker count). Configuration errors raise here, before any worker starts.
    `decode`: where the `workers` streams run: "process" (DataLoader worker processes), "thread" (threads of this
    process, the same batches in the same order), "auto" (`decode_in_threads`).
    """
    if decode not in ("auto", "thread", "process"):
        raise ValueError(f"decode must be auto, thread or process; got {decode!r}")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0 or start_batch < 0:
        raise ValueError(
            f"need batch_size >= 1, 0 <= rank < world_size, workers >= 0, start_batch >= 0; got batch_size="
            f"{batch_size}, rank={rank}, world_size={world_size}, workers={workers}, start_batch={start_batch}"
        )
    rows = rank_rows(batch_size, world_size, rank, micro)
    index = load_index(root)
    stream = _TrainStream(index, split, batch_size, rows, seed, workers, start_batch, shuffle_buffer)
    threads = decode == "thread" or (decode == "auto" and decode_in_threads(workers))
    batches = _threaded(stream) if threads and workers > 0 else _loader(stream, workers)
    return _guarded(batches, stats, max_skipped, window, index["root"])


def eval_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    stats: dict | None = None,
    max_skipped: float = 0.01,
    window: int = 10000,
) -> Iterator[dict]:
    """One exact pass over `split`: every sample once across all ranks, in shard order, no padding duplicates.

    Ranks (and workers) read disjoint parts of the shards, so they may get DIFFERENT numbers of samples and
    batches (each worker's last batch may be short): gather results with a variable-size gather (or sum counts
    and correct predictions), never assume equal batch counts. Batches have the keys of `train_loader`.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise ValueError(
            f"need batch_size >= 1, 0 <= rank < world_size, workers >= 0; got batch_size={batch_size}, "
            f"rank={rank}, world_size={world_size}, workers={workers}"
        )
    index = load_index(root)
    stream = _EvalStream(index, split, batch_size, rank, world_size, workers)
    return _guarded(_loader(stream, workers), stats, max_skipped, window, index["root"])


def stream_counts(stats: dict, base: dict) -> dict[str, int]:
    """{"data/seen": n, "data/skipped": k}: samples of the global batches the training loader delivered / skipped
    as damaged so far (every rank reads the whole global stream: the same counts on every rank, no reduction).

    stats: the dict passed to `train_loader(stats=...)`; base: the counts of a resumed state (the same keys;
    missing = 0)."""
    return {
        "data/seen": base.get("data/seen", 0) + stats.get("seen", 0),
        "data/skipped": base.get("data/skipped", 0) + stats.get("skipped", 0),
    }
