"""Fixtures for the data tests: tiny copies of every source's published file layout, written into tmp dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import cifar_pickle, write_idx


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def idx_dir(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    """MNIST-style IDX files: 60 train (gzipped) and 20 test (plain) images of 28x28 with labels 0..9."""
    src = tmp_path / "idx"
    src.mkdir()
    arrays = {
        "train_x": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train_y": np.arange(60, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    write_idx(src / "train-images-idx3-ubyte", arrays["train_x"], gz=True)
    write_idx(src / "train-labels-idx1-ubyte", arrays["train_y"], gz=True)
    write_idx(src / "t10k-images-idx3-ubyte", arrays["test_x"], gz=False)
    write_idx(src / "t10k-labels-idx1-ubyte", arrays["test_y"], gz=False)
    return src, arrays


@pytest.fixture
def cifar10_dir(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray]:
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (8, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, 8)]
        cifar_pickle(src / f"data_batch_{i}", {b"batch_label": b"b", b"data": x, b"labels": y, b"filenames": []})
        xs.append(x)
        ys.append(y)
    test_x = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    cifar_pickle(src / "test_batch", {b"data": test_x, b"labels": [1, 2, 3, 4, 5, 6]})
    cifar_pickle(src / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return tmp_path, np.concatenate(xs), np.concatenate(ys)
