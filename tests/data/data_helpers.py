"""Helpers for the data tests: write tiny files in each source's published format."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """IDX format: 0, 0, dtype 0x08 (ubyte), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def cifar_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # bytes keys, numpy array: what the published batches contain


def save_image(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB image that JPEG-encodes without visible artefacts (what matters: shard -> read is exact)."""
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR))
