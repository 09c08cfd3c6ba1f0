"""Round trip for every source: published-format files made here -> make_shards -> eval_loader gives back the same
pixels, labels, attributes and factors, and the errors for missing / foreign files name the fix."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from data_helpers import cifar_pickle, save_image, smooth_image, write_idx
from PIL import Image

from amr_fast.data import check_index, eval_loader, load_index, make_shards, procedural
from amr_fast.data.sources import restricted_load


def read_split(root: Path, split: str) -> dict[str, torch.Tensor]:
    """Every sample of a split, sorted by its index in the split."""
    batches = list(eval_loader(root, split, 7, workers=0))
    out = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    order = torch.argsort(out["index"])
    return {k: v[order] for k, v in out.items()}


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashion-mnist"])
def test_idx_round_trip(name, idx_dir, tmp_path):
    src, arrays = idx_dir
    root = make_shards(name, src, tmp_path / "out", shard_size=16)
    index = load_index(root)
    assert {s: index["splits"][s]["num_samples"] for s in index["splits"]} == {"train": 50, "valid": 10, "test": 20}
    assert index["encoding"] == "raw" and index["image_size"] == 28 and index["channels"] == 1
    assert len(index["class_names"]) == index["num_classes"] == 10
    train, valid, test = (read_split(root, s) for s in ("train", "valid", "test"))
    assert torch.equal(train["x"][:, 0], torch.from_numpy(arrays["train_x"][:50]))
    assert torch.equal(train["y"], torch.from_numpy(arrays["train_y"][:50]).long())
    assert torch.equal(valid["x"][:, 0], torch.from_numpy(arrays["train_x"][50:]))  # valid = the end of train
    assert torch.equal(test["x"][:, 0], torch.from_numpy(arrays["test_x"]))
    assert torch.equal(test["y"], torch.from_numpy(arrays["test_y"]).long())


def test_idx_size_32_resizes_like_pil(idx_dir, tmp_path):
    src, arrays = idx_dir
    root = make_shards("mnist", src, tmp_path / "out32", size=32, limit=5)
    index = load_index(root)
    check_index(index, 32, 1)
    with pytest.raises(ValueError, match="--size 28"):
        check_index(index, 28, 1)
    test = read_split(root, "test")
    expected = np.asarray(Image.fromarray(arrays["test_x"][3]).resize((32, 32), Image.BILINEAR))
    assert test["x"].shape == (5, 1, 32, 32)
    assert np.array_equal(test["x"][3, 0].numpy(), expected)


def test_svhn_round_trip(tmp_path, rng):
    src = tmp_path / "svhn"
    src.mkdir()
    parts = {}
    for fname, n in [("train_32x32.mat", 20), ("test_32x32.mat", 6)]:
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 = digit 0
        scipy.io.savemat(src / fname, {"X": x, "y": y})
        parts[fname] = (x, y)
    root = make_shards("svhn", src, tmp_path / "out")
    train, valid = read_split(root, "train"), read_split(root, "valid")
    x, y = parts["train_32x32.mat"]
    assert len(train["y"]) == 18 and len(valid["y"]) == 2  # valid = the last 10%
    assert torch.equal(train["x"], torch.from_numpy(x.transpose(3, 2, 0, 1)[:18].copy()))
    assert torch.equal(train["y"], torch.from_numpy(y[:18, 0].astype(np.int64) % 10))
    assert 10 not in train["y"].tolist()


def test_cifar10_round_trip(cifar10_dir, tmp_path):
    src, x, y = cifar10_dir
    root = make_shards("cifar10", src, tmp_path / "out")
    train, valid = read_split(root, "train"), read_split(root, "valid")
    assert len(train["y"]) + len(valid["y"]) == 40
    assert torch.equal(torch.cat([train["x"], valid["x"]]), torch.from_numpy(x.reshape(-1, 3, 32, 32)))
    assert torch.equal(torch.cat([train["y"], valid["y"]]), torch.from_numpy(y).long())
    assert load_index(root)["class_names"] == [f"c{i}" for i in range(10)]


def test_cifar100_round_trip(tmp_path, rng):
    src = tmp_path / "cifar-100-python"
    src.mkdir()
    x = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
    fine = [int(v) for v in rng.integers(0, 100, 30)]
    cifar_pickle(src / "train", {b"data": x, b"fine_labels": fine, b"coarse_labels": [0] * 30})
    cifar_pickle(src / "test", {b"data": x[:4], b"fine_labels": fine[:4], b"coarse_labels": [0] * 4})
    cifar_pickle(src / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    root = make_shards("cifar100", tmp_path, tmp_path / "out")
    test = read_split(root, "test")
    assert torch.equal(test["x"], torch.from_numpy(x[:4].reshape(-1, 3, 32, 32)))
    assert test["y"].tolist() == fine[:4]
    assert load_index(root)["num_classes"] == 100


class Foreign:
    pass


def test_restricted_unpickler_refuses_other_classes(tmp_path):
    for obj, name in [({b"data": Foreign()}, "Foreign"), ({b"x": __import__("collections").OrderedDict()}, "Ordered")]:
        path = tmp_path / "data_batch_1"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError, match=f"refusing to load .*{name}"):
            restricted_load(path)
    # A pickle that would run a command when loaded by plain pickle.load is refused before anything runs.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, ([sys.executable, "-c", f"open({str(marker)!r}, 'w')"],))

    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load \w+\.call"):
        restricted_load(path)
    assert not marker.exists()


def test_celeba_round_trip(tmp_path, rng):
    src = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    imgs = {}
    for name in names:
        save_image(src / "img_align_celeba" / name, smooth_image(rng, 16))
        imgs[name] = np.asarray(Image.open(src / "img_align_celeba" / name).convert("RGB"))  # the decoded JPEG
    attr_names = ["Smiling", "Male", "Young"]
    attrs = rng.choice([-1, 1], size=(len(names), 3))
    lines = [str(len(names)), " ".join(attr_names)] + [
        f"{n} " + " ".join(f"{a:2d}" for a in row) for n, row in zip(names, attrs)
    ]
    (src / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [0, 0, 0, 0, 1, 2, 2]
    (src / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    root = make_shards("celeba", src, tmp_path / "out", size=16, crop=16)  # crop = size: pixels pass unchanged
    index = load_index(root)
    assert index["attr_names"] == attr_names and index["encoding"] == "raw"
    train = read_split(root, "train")
    assert len(train["y"]) == 4 and (train["y"] == -1).all()
    for i in range(4):
        assert np.array_equal(train["x"][i].numpy().transpose(1, 2, 0), imgs[names[i]])
    assert torch.equal(train["attrs"], torch.from_numpy((attrs[:4] > 0).astype(np.float32)))
    assert len(read_split(root, "test")["y"]) == 2


def test_zappos_round_trip_skips_broken_image(tmp_path, rng):
    src = tmp_path / "ut-zap50k-images"
    imgs = {}
    for c, cat in enumerate(["Boots", "Sandals", "Shoes", "Slippers"]):
        for i in range(5):
            path = src / cat / "Brand" / f"{c}{i}.png"
            img = smooth_image(rng, 64)
            save_image(path, img)
            imgs[(c, int(img.sum()))] = img
    (src / "Shoes" / "Brand" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="could not be decoded"):
        root = make_shards("zappos50k", tmp_path, tmp_path / "out", encoding="png")
    index = load_index(root)
    assert index["class_names"] == ["Boots", "Sandals", "Shoes", "Slippers"]
    assert sum(s["num_samples"] for s in index["splits"].values()) == 20
    for split in index["splits"]:
        got = read_split(root, split)
        for x, y in zip(got["x"], got["y"]):
            img = x.numpy().transpose(1, 2, 0)
            assert np.array_equal(imgs[(int(y), int(img.sum()))], img)  # pixels and class identical


def test_dsprites_npz_round_trip(tmp_path, rng):
    n = 12
    per_shape = procedural.DSPRITES_NUM // 3
    grid_idx = [int(rng.integers(k * per_shape, (k + 1) * per_shape)) for k in (2, 0, 1) for _ in range(n // 3)]
    classes = procedural.dsprites_factors(np.array(grid_idx))[0]  # 4 sprites of each shape, not in grid order
    values = procedural.dsprites_factors(procedural.dsprites_index(classes))[1].astype(np.float64)
    imgs = rng.integers(0, 2, (n, 64, 64), dtype=np.uint8)
    np.savez(tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz", imgs=imgs, latents_values=values,
             latents_classes=classes)  # fmt: skip
    root = make_shards("dsprites", tmp_path, tmp_path / "out")
    train = read_split(root, "train")
    assert torch.equal(train["x"][:, 0], torch.from_numpy(imgs * 255))
    assert torch.equal(train["factor_classes"], torch.from_numpy(classes))
    assert torch.allclose(train["factors"], torch.from_numpy(values).float())
    assert torch.equal(train["y"], torch.from_numpy(classes[:, 1]))  # y = shape
    assert load_index(root)["factor_names"] == procedural.DSPRITES_FACTOR_NAMES
    subset = read_split(make_shards("dsprites", tmp_path, tmp_path / "sub", subset=6), "train")
    assert torch.bincount(subset["y"]).tolist() == [2, 2, 2]  # balanced by the file's own shape labels
    assert torch.equal(subset["y"], torch.from_numpy(classes[subset["index"].numpy(), 1]))


def test_procedural_and_spiral_round_trip(tmp_path):
    root = make_shards("dsprites-procedural", None, tmp_path / "ds", limit=40)
    train = read_split(root, "train")
    grid_idx = procedural.dsprites_index(train["factor_classes"].numpy())
    assert np.array_equal(train["x"].numpy(), procedural.render_dsprites(grid_idx))
    assert np.allclose(train["factors"].numpy(), procedural.dsprites_factors(grid_idx)[1])
    root = make_shards("spiral", None, tmp_path / "spiral", limit=50)
    index = load_index(root)
    check_index(index, 1, 2)  # a point is a 1x1 "image" with 2 channels
    with pytest.raises(ValueError, match="channels=2 and img_size=1"):
        check_index(index, 32, 1)
    test = read_split(root, "test")
    points, t = procedural.spiral(1000, seed=1002)
    assert test["x"].dtype == torch.float32 and torch.equal(test["x"], torch.from_numpy(points[:50]))
    assert torch.equal(test["factors"], torch.from_numpy(t[:50])) and (test["y"] == -1).all()


def test_missing_and_misnamed_files_name_what_is_expected(tmp_path, idx_dir):
    src, _ = idx_dir
    (src / "t10k-labels-idx1-ubyte").rename(src / "t10k-labels.bin")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz or t10k-labels-idx1-ubyte.* in .*idx"):
        make_shards("mnist", src, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="train_32x32.mat in"):
        make_shards("svhn", tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        make_shards("celeba", tmp_path, tmp_path / "out")
    write_idx(src / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), gz=False)  # 3 labels for 20 images
    with pytest.raises(ValueError, match="disagree in length"):
        make_shards("mnist", src, tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()


def test_matlab_v73_file_is_a_clear_error(tmp_path):
    header = b"MATLAB 7.3 MAT-file, HDF5 schema 1.00 .".ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"  # version 2
    (tmp_path / "train_32x32.mat").write_bytes(header + b"\0" * 512)
    with pytest.raises(ValueError, match=r"v7\.3 \(HDF5\).*h5py.*-v7"):
        make_shards("svhn", tmp_path, tmp_path / "out")
