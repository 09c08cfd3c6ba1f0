"""`make_shards`: a source's published files -> WebDataset tar shards per split + `index.json`, published last.

Every split is written as `{split}-{i:06d}.tar` shards of equal size (at most `shard_size` samples); train is
written in a seeded random order (so each shard mixes classes; the published dSprites grid is sorted by factor),
valid / test in source order. The key of a sample is its index in its split (`00001234`). A write takes a lock
on the directory, deletes the old index (the directory stops being a dataset), writes each shard under a
`.partial` name and renames it when complete, and writes `index.json` atomically at the very end: an interrupted
write never looks complete.

Encoding (`encoding="auto"`): raw uint8 bytes up to 64x64x3 values per image (MNIST-like, SVHN, CIFAR, dSprites,
CelebA / Zappos at 64x64), lossless PNG above; JPEG (q95) on request. Raw shards have a fixed layout that the
reader parses without a Python loop over samples; decoding a PNG costs far more than raw (README, "Data"),
while PNG stores natural 64x64 images only a little smaller and each tar member costs a 512-byte header and
padding anyway. Binary dSprites compress well as PNG: `--encoding png` for the full grid if
disk matters more than decode speed.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from amr_fast.data.index import FORMAT_VERSION, INDEX_NAME, SPLITS, encode_sample, field_specs
from amr_fast.data.remote import file_lock
from amr_fast.data.sources import Source, Split, open_source
from amr_fast.data.tario import ShardWriter
from amr_fast.progress import bar as progress_bar

RAW_MAX_VALUES = 64 * 64 * 3  # auto encoding: raw up to 64x64 RGB, PNG above
CHUNK = 1024  # samples loaded (decoded / rendered) at a time
Progress = Callable[[str, int, int], None]  # progress(split, samples done, samples in the split)
_OUR_FILES = re.compile(r"^(train|valid|test)-\d{6}\.tar(\.partial)?$")


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A reproducible subset of n indices with equal counts per class (labels -1: a plain random subset)."""
    rng = np.random.default_rng(seed)
    if n > len(y):
        raise ValueError(f"--subset {n} is larger than the training split ({len(y)} samples): use at most {len(y)}")
    classes = np.unique(y[y >= 0])
    if len(classes) == 0:
        return np.sort(rng.choice(len(y), size=n, replace=False))
    per = np.full(len(classes), n // len(classes))
    per[rng.permutation(len(classes))[: n % len(classes)]] += 1  # the remainder goes to random classes
    chosen = []
    for c, k in zip(classes, per):
        members = np.flatnonzero(y == c)
        if k > len(members):
            raise ValueError(
                f"--subset {n} needs {k} samples of class {c} but the training split has {len(members)}: "
                f"use --subset <= {len(members) * len(classes)}"
            )
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _pick_encoding(source: Source, encoding: str) -> str:
    if encoding not in ("auto", "raw", "png", "jpeg"):
        raise ValueError(f"encoding must be auto, raw, png or jpeg; got {encoding!r}")
    if len(source.x_shape) == 1:
        return "raw"  # points are float32 vectors
    if encoding == "auto":
        return "raw" if int(np.prod(source.x_shape)) <= RAW_MAX_VALUES else "png"
    if encoding != "raw" and source.x_shape[0] not in (1, 3):
        raise ValueError(f"{encoding} needs 1 or 3 channels, {source.name} has {source.x_shape[0]}: use raw")
    return encoding


def _write_split(
    split: str, data: Split, order: np.ndarray, out: Path, fields: dict, shard_size: int, progress: Progress | None
) -> dict:
    # Equal shards (sizes differ by at most one): the reader's batches per round follow its smallest unit.
    n_shards = max(1, -(-len(order) // shard_size))
    base, extra = divmod(len(order), n_shards)
    targets = [base + (i < extra) for i in range(n_shards)]
    shards, sizes, skipped = [], [], 0
    writer: ShardWriter | None = None
    bar = progress_bar(total=len(order), desc=f"writing {out.name}/{split}", unit="img", unit_scale=True)
    try:
        for start in range(0, len(order), CHUNK):
            bar.update(start - bar.n)
            if progress is not None:
                progress(split, start, len(order))
            idx = order[start : start + CHUNK]
            arrays = data.load(idx)
            keep = arrays.pop("keep", np.ones(len(idx), dtype=bool))
            for j, i in enumerate(idx):
                if not keep[j]:
                    skipped += 1
                    continue
                if writer is None:
                    writer = ShardWriter(out / f"{split}-{len(shards):06d}.tar")
                sample = {name: arrays[name][j] for name in fields}
                writer.write(f"{int(i):08d}", encode_sample(sample, fields))
                if writer.num_samples == targets[min(len(shards), n_shards - 1)]:
                    writer.close()
                    shards.append(writer.path.name)
                    sizes.append(writer.num_samples)
                    writer = None
        if writer is not None:
            writer.close()
            shards.append(writer.path.name)
            sizes.append(writer.num_samples)
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    if skipped:
        warnings.warn(f"{split}: skipped {skipped} source images that could not be decoded", stacklevel=2)
    return {"num_samples": int(sum(sizes)), "shards": shards, "shard_sizes": sizes, "skipped_at_write": skipped}


def make_shards(
    source: str,
    src: str | Path | None,
    out: str | Path,
    *,
    size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    shard_size: int = 5000,
    limit: int | None = None,
    encoding: str = "auto",
    crop: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write `source`'s splits as shards + index.json into `out`; return `out`.

    size: image side after resizing (IDX / SVHN / CIFAR / CelebA / Zappos / procedural dSprites); None keeps
    the source's size (CelebA / Zappos: 64). subset: keep a class-balanced random subset of train with this many
    samples (seeded by `seed`). limit: at most this many samples per split (tests, demos). crop: CelebA's centre
    crop (148). progress: called as progress(split, done, total) before each chunk of samples (a bar shows
    them anyway: `amr_fast.progress`). For
    "dsprites-procedural" and "spiral" src is None.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 samples per shard; got {shard_size}")
    if size is not None and not 8 <= size <= 1024:
        raise ValueError(f"--size must be an image side between 8 and 1024 pixels; got {size}")
    opened = open_source(source, src, size, crop=crop)
    return write_source(
        opened, out, subset=subset, seed=seed, shard_size=shard_size, limit=limit, encoding=encoding, progress=progress
    )


def write_source(
    opened: Source,
    out: str | Path,
    *,
    subset: int | None = None,
    seed: int = 0,
    shard_size: int = 5000,
    limit: int | None = None,
    encoding: str = "auto",
    progress: Progress | None = None,
) -> Path:
    """Write an opened `Source` (see `make_shards` for the arguments; `sources.arrays_source` wraps arrays)."""
    enc = _pick_encoding(opened, encoding)
    probe = next(iter(opened.splits.values())).load(np.zeros(1, dtype=np.int64))
    fields = field_specs(
        opened.x_shape,
        enc,
        attrs=len(opened.attr_names),
        factors=len(opened.factor_names),
        factor_classes="factor_classes" in probe,
    )
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".write.lock"):  # one writer per directory: a second make_shards into it waits for the first
        (out / INDEX_NAME).unlink(missing_ok=True)  # from here on the directory is not a dataset until we finish
        for old in out.iterdir():
            if _OUR_FILES.match(old.name):
                old.unlink()
        rng = np.random.default_rng(seed)
        splits = {}
        for split in SPLITS:
            if split not in opened.splits:
                continue
            data = opened.splits[split]
            order = np.arange(data.num_samples, dtype=np.int64)
            if split == "train" and subset is not None:
                order = balanced_subset(data.y, subset, seed)
            if limit is not None and len(order) > limit:
                order = np.sort(rng.choice(order, size=limit, replace=False)) if opened.grid else order[:limit]
            if split == "train":
                order = rng.permutation(order)
            splits[split] = _write_split(split, data, order, out, fields, shard_size, progress)
        x_spec = fields["x"]
        index = {
            "name": opened.name,
            "format_version": FORMAT_VERSION,
            "image_size": x_spec["shape"][-1] if len(opened.x_shape) == 3 else None,
            "channels": x_spec["shape"][0] if len(opened.x_shape) == 3 else None,
            **({"dim": opened.x_shape[0]} if len(opened.x_shape) == 1 else {}),
            "num_classes": len(opened.class_names),
            "class_names": opened.class_names,
            "attr_names": opened.attr_names,
            "factor_names": opened.factor_names,
            "encoding": enc,
            "fields": fields,
            "splits": splits,
            "notes": opened.notes,
            "params": {"subset": subset, "seed": seed, "shard_size": shard_size, "limit": limit, "encoding": encoding},
        }
        tmp = out / (INDEX_NAME + ".partial")
        with open(tmp, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / INDEX_NAME)  # publish: the dataset is complete only now
    return out
