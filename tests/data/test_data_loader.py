"""The streaming reader: determinism and resume, equal batch counts with disjoint samples per reader, the exact
evaluation pass, damaged shards skipped and counted, subsets, atomic writes, and WebDataset compatibility."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from amr_fast.cli import main as cli_main
from amr_fast.data import eval_loader, load_index, make_shards, train_loader
from amr_fast.data import write as write_module
from amr_fast.data.loader import _TrainStream, rank_rows
from amr_fast.data.sources import arrays_source
from amr_fast.data.tario import ShardWriter, iter_samples
from amr_fast.data.write import balanced_subset, write_source


@pytest.fixture
def mnist_like(idx_dir, tmp_path) -> Path:
    src, _ = idx_dir
    return make_shards("mnist", src, tmp_path / "mnist", shard_size=7)  # train: 50 samples in 8 shards of 6 or 7


def indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def test_subset_is_reproducible_and_class_balanced(idx_dir, tmp_path):
    y = np.random.default_rng(1).integers(0, 4, 400)
    a, b, c = balanced_subset(y, 102, seed=3), balanced_subset(y, 102, seed=3), balanced_subset(y, 102, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert sorted(np.bincount(y[a]).tolist()) == [25, 25, 26, 26] and len(set(a.tolist())) == 102
    src, arrays = idx_dir
    root1 = make_shards("mnist", src, tmp_path / "s1", subset=20, seed=5)
    root2 = make_shards("mnist", src, tmp_path / "s2", subset=20, seed=5)
    read = [sorted(torch.cat([b["index"] for b in eval_loader(r, "train", 8)]).tolist()) for r in (root1, root2)]
    assert read[0] == read[1] and len(read[0]) == 20
    assert np.bincount(arrays["train_y"][read[0]], minlength=10).tolist() == [2] * 10
    assert load_index(root1)["splits"]["valid"]["num_samples"] == 10  # only train is subset
    with pytest.raises(ValueError, match="at most 50"):
        make_shards("mnist", src, tmp_path / "s3", subset=55)


def test_train_stream_is_deterministic_and_resumes(mnist_like):
    full = indices(islice(train_loader(mnist_like, 4, workers=2, seed=7), 23))
    again = indices(islice(train_loader(mnist_like, 4, workers=2, seed=7), 23))
    other = indices(islice(train_loader(mnist_like, 4, workers=2, seed=8), 23))
    assert full == again and full != other
    for start in (5, 14):  # mid-round and a later round; odd starts swap which worker serves which slot
        resumed = indices(islice(train_loader(mnist_like, 4, workers=2, seed=7, start_batch=start), 23 - start))
        assert resumed == full[start:]
    assert (
        indices(islice(train_loader(mnist_like, 4, workers=0, seed=7, start_batch=3), 4))
        == indices(islice(train_loader(mnist_like, 4, workers=0, seed=7), 7))[3:]
    )


@pytest.mark.parametrize("world_size, workers, micro", [(2, 0, 0), (3, 2, 0), (2, 1, 2)])
def test_ranks_take_their_rows_of_the_same_global_batches(mnist_like, world_size, workers, micro):
    """The global batches (their sample keys, hashed) are those of one process with one worker, for any world size,
    worker count and accumulation; within a round no sample repeats; every rank gets as many rows."""
    index = load_index(mnist_like)
    per_round = _TrainStream(index, "train", 12, None, 0, 0, 0, 100).batches_per_round
    one = indices(islice(train_loader(mnist_like, 12, workers=1), 2 * per_round))
    loaders = [train_loader(mnist_like, 12, rank=r, world_size=world_size, micro=micro, workers=workers)
               for r in range(world_size)]  # fmt: skip
    streams = [indices(islice(loader, 2 * per_round)) for loader in loaders]
    got = [[0] * 12 for _ in range(2 * per_round)]
    for r, stream in enumerate(streams):
        rows = rank_rows(12, world_size, r, micro)
        assert all(len(b) == 12 // world_size for b in stream)
        for g, b in enumerate(stream):
            for row, key in zip(rows, b):
                got[g][row] = key
    assert hash(str(got)) == hash(str(one))
    for r in range(2):  # two rounds: no sample twice in a round
        seen = [i for b in one[r * per_round : (r + 1) * per_round] for i in b]
        assert len(seen) == len(set(seen))


@pytest.mark.parametrize("world_size, workers", [(1, 0), (3, 2), (5, 0)])
def test_eval_pass_reads_every_sample_once(mnist_like, world_size, workers):
    loaders = [
        eval_loader(mnist_like, "train", 4, rank=r, world_size=world_size, workers=workers) for r in range(world_size)
    ]
    got = [i for loader in loaders for b in loader for i in b["index"].tolist()]
    assert sorted(got) == list(range(50))


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_shard_is_skipped_and_counted(mnist_like):
    index = load_index(mnist_like)
    shard = mnist_like / index["splits"]["train"]["shards"][2]
    lost = index["splits"]["train"]["shard_sizes"][2] - 3
    truncate(shard, 3 * 2560 + 700)  # 3 whole samples (784-byte raw + label: 2560 bytes), then a torn one
    stats = {}
    with pytest.warns(UserWarning, match="damaged"):
        batches = list(islice(train_loader(mnist_like, 5, workers=0, stats=stats, max_skipped=0.5), 12))
    assert stats["skipped"] >= lost and stats["seen"] == 60 and all(len(b["x"]) == 5 for b in batches)
    stats = {}
    with pytest.warns(UserWarning, match="damaged"):
        got = [
            i for b in eval_loader(mnist_like, "train", 8, stats=stats, max_skipped=0.5) for i in b["index"].tolist()
        ]
    assert stats == {"seen": 50 - lost, "skipped": lost} and len(set(got)) == 50 - lost  # exactly the lost ones
    with pytest.raises(ValueError, match="could not be read .*limit 1%.*re-create the dataset"):
        with pytest.warns(UserWarning):
            list(eval_loader(mnist_like, "train", 8, window=100))


def test_undecodable_sample_is_skipped_and_counted(tmp_path):
    root = make_shards("dsprites-procedural", None, tmp_path / "ds", limit=12, shard_size=6, encoding="png")
    index = load_index(root)
    assert index["encoding"] == "png"
    path = root / index["splits"]["train"]["shards"][0]
    samples = list(iter_samples(path.read_bytes()))
    writer = ShardWriter(path)
    for n, (key, fields) in enumerate(samples):
        fields = {ext: bytes(v) for ext, v in fields.items()}
        if n == 1:
            fields["png"] = fields["png"][:40]  # a PNG cut short: PIL fails to decode it
        writer.write(key, fields)
    writer.close()
    stats = {}
    with pytest.warns(UserWarning, match=f"undecodable sample {samples[1][0]}"):
        got = [i for b in eval_loader(root, "train", 5, stats=stats, max_skipped=0.5) for i in b["index"].tolist()]
    assert stats == {"seen": 11, "skipped": 1} and int(samples[1][0]) not in got


def test_interrupted_write_leaves_no_dataset(mnist_like, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(write_module, "encode_sample", broken)
    with pytest.raises(RuntimeError):
        make_shards("spiral", None, mnist_like, limit=10)  # over an existing dataset
    assert not (mnist_like / "index.json").exists() and not list(mnist_like.glob("*.partial"))
    with pytest.raises(FileNotFoundError, match="holds no shards"):
        load_index(mnist_like)


def test_a_missing_dataset_says_the_shard_command_for_that_directory(tmp_path):
    for given in (tmp_path / "fm32", tmp_path / "fm32" / "index.json"):
        with pytest.raises(FileNotFoundError, match=f"--out {tmp_path / 'fm32'}`"):
            load_index(given)
    raw = tmp_path / "fashion-mnist"  # data= pointed at the published files instead of their shards
    raw.mkdir()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"holds no shards .* --src {raw} --out DIR` .* data=DIR"):
        load_index(raw)


def test_shards_are_webdataset_shards(mnist_like):
    index = load_index(mnist_like)
    urls = [str(mnist_like / name) for name in index["splits"]["valid"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    ours = {int(i): (x, y) for b in eval_loader(mnist_like, "valid", 4) for i, x, y in zip(b["index"], b["x"], b["y"])}
    assert len(samples) == len(ours) == 10
    for s in samples:
        x, y = ours[int(s["__key__"])]
        assert s["raw"] == x.numpy().tobytes() and int(s["cls"]) == int(y)


def test_cli_shard_and_errors(tmp_path, capsys):
    assert cli_main(["shard", "spiral", "--out", str(tmp_path / "sp"), "--limit", "30"]) == 0
    assert "spiral: dim 2" in capsys.readouterr().out
    assert cli_main(["shard", "svhn", "--src", str(tmp_path), "--out", str(tmp_path / "sv")]) == 2
    err = capsys.readouterr().err
    assert "train_32x32.mat" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="no split 'extra'.*train, valid, test"):
        train_loader(tmp_path / "sp", 4, split="extra")


def test_png_and_jpeg_shards(tmp_path):
    rng = np.random.default_rng(0)
    x = np.repeat(np.repeat(rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), 8, axis=2), 8, axis=3)  # 32x32
    source = arrays_source("blocks", {"train": (x, np.arange(6) % 2)}, ["a", "b"])
    for encoding, tolerance in [("png", 0), ("jpeg", 12)]:
        root = write_source(source, tmp_path / encoding, encoding=encoding)
        assert load_index(root)["encoding"] == encoding
        batch = next(iter(eval_loader(root, "train", 6)))
        got = batch["x"][torch.argsort(batch["index"])].int()
        assert got.shape == (6, 3, 32, 32) and (got - torch.from_numpy(x).int()).abs().float().mean() <= tolerance


def test_progress_is_reported_per_chunk(tmp_path):
    calls = []
    make_shards("spiral", None, tmp_path / "sp", limit=30, progress=lambda *a: calls.append(a))
    assert calls == [("train", 0, 30), ("valid", 0, 30), ("test", 0, 30)]
