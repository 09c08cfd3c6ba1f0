"""train_loader(decode="thread"): the workers' streams in threads of this process give the batches of worker
processes, in the same order (so a run may switch between them and still resume its stream); errors surface."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from amr_fast.data import loader as loader_module
from amr_fast.data import make_shards, train_loader


@pytest.fixture
def mnist_like(idx_dir, tmp_path) -> Path:
    src, _ = idx_dir
    return make_shards("mnist", src, tmp_path / "mnist", shard_size=7)


@pytest.mark.parametrize("workers,start_batch", [(1, 0), (2, 0), (2, 5), (3, 4)])
def test_threads_give_the_process_workers_stream(mnist_like, workers, start_batch):
    kw = dict(workers=workers, start_batch=start_batch, seed=3)
    threads = [b["index"].tolist() for b in islice(train_loader(mnist_like, 4, decode="thread", **kw), 14)]
    procs = [b["index"].tolist() for b in islice(train_loader(mnist_like, 4, decode="process", **kw), 14)]
    assert threads == procs and len(threads) == 14


def test_decode_choice(monkeypatch, mnist_like):
    monkeypatch.setenv("AMR_FAST_DECODE", "thread")
    assert loader_module.decode_in_threads(2)
    monkeypatch.setenv("AMR_FAST_DECODE", "process")
    assert not loader_module.decode_in_threads(2)
    monkeypatch.delenv("AMR_FAST_DECODE")
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_module.decode_in_threads(2) and not loader_module.decode_in_threads(0)
    with pytest.raises(ValueError, match="decode must be"):
        train_loader(mnist_like, 4, decode="fork")


def test_a_reader_error_is_raised_in_the_consumer(mnist_like, monkeypatch):
    def broken(self, u):
        raise OSError("disk gone")

    monkeypatch.setattr(loader_module._Units, "read", broken)
    with pytest.raises(OSError, match="disk gone"):
        next(iter(train_loader(mnist_like, 4, workers=2, decode="thread")))
