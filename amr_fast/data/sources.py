"""Readers for the published files of every dataset in the two papers, behind one interface (`Source`).

AMR (Beckham et al. 2019, section 4) uses MNIST, KMNIST, SVHN (32x32), dSprites, CelebA and Zappos50K (64x64);
Manifold Mixup (Verma et al. 2019, section 5) adds CIFAR-10/100. Fashion-MNIST has MNIST's format. Each reader
returns a `Source`: per split the labels (known up front, for class-balanced subsets) and a `load(indices)`
that returns the arrays of those samples, so large image folders are decoded chunk by chunk, never all at once.

Splits follow the AMR code where it has one: IDX sources hold out the last 10k of train as valid; SVHN the last
10% of train; CIFAR the last 5,000 of train; CelebA its own partition file; Zappos50K (no official split) a fixed
80/10/10 shuffle (seed 0, independent of --seed); dSprites train = the grid, valid = 5,000 random grid points.
"""

from __future__ import annotations

import functools
import gzip
import pickle
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from amr_fast.data import procedural


@dataclass
class Split:
    y: np.ndarray  # int64 [N]; -1 when unlabelled
    load: Callable[[np.ndarray], dict[str, np.ndarray]]  # indices [n] -> {"x": [n, ...], "y": [n], ...}
    # load may also return "keep": bool [n] (False: the source file of that sample did not decode)

    @property
    def num_samples(self) -> int:
        return len(self.y)


@dataclass
class Source:
    name: str
    splits: dict[str, Split]
    x_shape: tuple[int, ...]  # [C, H, W] images or [D] points
    class_names: list[str] = field(default_factory=list)
    attr_names: list[str] = field(default_factory=list)
    factor_names: list[str] = field(default_factory=list)
    notes: str = ""
    grid: bool = False  # procedural grid: `limit` picks random points rather than the first ones


def _arrays_split(x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> Split:
    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        out = {"x": x[idx], "y": y[idx]}
        out.update({k: v[idx] for k, v in extra.items()})
        return out

    return Split(y=np.asarray(y, dtype=np.int64), load=load)


def arrays_source(name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]) -> Source:
    """A Source from in-memory arrays {split: (x uint8 [N, C, H, W], y int64 [N])} (benchmarks, your own data)."""
    shapes = {x.shape[1:] for x, _ in splits.values()}
    if len(shapes) != 1:
        raise ValueError(f"all splits of {name!r} must have one image shape; got {sorted(shapes)}")
    return Source(
        name=name,
        splits={split: _arrays_split(x, y) for split, (x, y) in splits.items()},
        x_shape=shapes.pop(),
        class_names=class_names,
    )


def _resize_stack(x: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 [N, C, H, W] -> [N, C, size, size] with PIL's antialiased bilinear resize (as torchvision Resize)."""
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=np.uint8)
    for i, img in enumerate(x):
        for c in range(img.shape[0]):
            out[i, c] = np.asarray(Image.fromarray(img[c]).resize((size, size), Image.BILINEAR))
    return out


def _lazy_resize_split(x: np.ndarray, y: np.ndarray, size: int | None) -> Split:
    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": _resize_stack(x[idx], size), "y": y[idx]}

    return Split(y=np.asarray(y, dtype=np.int64), load=load)


def _held_out_source(name: str, train: tuple, test: tuple, n_valid: int, size: int | None, **meta) -> Source:
    """train / test arrays (x uint8 [N, C, H, W], y [N]) -> train, valid = the last n_valid of train, test."""
    (x, y), cut = train, len(train[0]) - n_valid
    return Source(
        name=name,
        splits={
            "train": _lazy_resize_split(x[:cut], y[:cut], size),
            "valid": _lazy_resize_split(x[cut:], y[cut:], size),
            "test": _lazy_resize_split(*test, size),
        },
        x_shape=(x.shape[1], size or x.shape[-1], size or x.shape[-1]),
        **meta,
    )


def _find(src: Path, names: list[str], what: str) -> Path:
    for name in names:
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(
        f"{what}: expected {' or '.join(names)} in {src} (not found); point --src at the folder that holds the "
        "files exactly as the publisher distributes them"
    )


def _src_dir(src: str | Path | None, source: str) -> Path:
    if src is None:
        raise ValueError(f"source {source!r} reads files: pass --src PATH (the folder holding its published files)")
    path = Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--src {path} does not exist; point it at the folder holding the {source} files")
    return path


# ---------------------------------------------------------------------------------------------------------------
# IDX: MNIST, KMNIST, Fashion-MNIST.

IDX_CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0,0,dtype,ndim then big-endian dims, then the data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # a half-downloaded .gz: "Compressed file ended ..."
            raise ValueError(
                f"{path} is a truncated or damaged gzip file ({err}); nothing was written: re-download it"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {raw[:4]!r}); re-download it")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} values; re-download it")
    return data.reshape(dims)


def _idx_source(name: str) -> Callable[..., Source]:
    def make(src: str | Path | None, size: int | None, **_: object) -> Source:
        root = _src_dir(src, name)
        arrays = {}
        for part, stem in [
            ("train_x", "train-images-idx3-ubyte"),
            ("train_y", "train-labels-idx1-ubyte"),
            ("test_x", "t10k-images-idx3-ubyte"),
            ("test_y", "t10k-labels-idx1-ubyte"),
        ]:
            dotted = stem.replace("-idx", ".idx")
            what = f"{name} {part.replace('_x', ' images').replace('_y', ' labels')}"
            arrays[part] = read_idx(_find(root, [stem + ".gz", stem, dotted + ".gz", dotted], what))
        train_x, train_y = arrays["train_x"][:, None], arrays["train_y"].astype(np.int64)
        test_x, test_y = arrays["test_x"][:, None], arrays["test_y"].astype(np.int64)
        if len(train_x) != len(train_y) or len(test_x) != len(test_y):
            raise ValueError(f"{root}: image and label files disagree in length; re-download the {name} files")
        n_valid = 10000 if len(train_x) > 20000 else len(train_x) // 6
        return _held_out_source(
            name,
            (train_x, train_y),
            (test_x, test_y),
            n_valid,
            size,
            class_names=IDX_CLASSES[name],
            notes=f"valid = the last {n_valid} of the published train set (as the AMR code)",
        )

    return make


# ---------------------------------------------------------------------------------------------------------------
# SVHN (.mat).


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as err:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ValueError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read (it would need h5py, not a dependency "
            "of amr_fast): use the published train_32x32.mat / test_32x32.mat, or re-save it with "
            "save(..., '-v7')"
        ) from err


def svhn(src: str | Path | None, size: int | None, **_: object) -> Source:
    root = _src_dir(src, "svhn")
    parts = {}
    for split, fname in [("train", "train_32x32.mat"), ("test", "test_32x32.mat")]:
        mat = _loadmat(_find(root, [fname], f"svhn {split}"))
        if "X" not in mat or "y" not in mat:
            raise ValueError(f"{root / fname} has no 'X' / 'y' arrays; use the cropped-digits files (*_32x32.mat)")
        x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # [32, 32, 3, N] -> [N, 3, 32, 32]
        y = mat["y"].reshape(-1).astype(np.int64) % 10  # label 10 means digit 0
        parts[split] = (x, y)
    x, y = parts["train"]
    return _held_out_source(
        "svhn",
        (x, y),
        parts["test"],
        len(x) // 10,
        size,
        class_names=[str(d) for d in range(10)],
        notes="valid = the last 10% of train_32x32.mat; label 10 stored as 0",
    )


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles, read with a restricted unpickler).

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell a bytes object
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the numpy array constructors and builtins that the CIFAR batches contain; refuses the rest."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: the CIFAR batches contain only numpy arrays, lists and bytes, so "
            "this file is not a published CIFAR batch (use the 'python version' archive from the publisher)"
        )


def restricted_load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict of arrays; use the CIFAR 'python version' batches")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_dir(src: str | Path | None, name: str, folder: str) -> Path:
    root = _src_dir(src, name)
    return root / folder if (root / folder).is_dir() else root


def _cifar_arrays(d: dict, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in d or label_key not in d:
        raise ValueError(f"{path} has no 'data' / '{label_key}' entries; use the CIFAR 'python version' batches")
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[label_key], dtype=np.int64)


def _names(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def cifar10(src: str | Path | None, size: int | None, **_: object) -> Source:
    root = _cifar_dir(src, "cifar10", "cifar-10-batches-py")
    xs, ys = [], []
    for i in range(1, 6):
        path = _find(root, [f"data_batch_{i}"], "cifar10 train")
        x, y = _cifar_arrays(restricted_load(path), path, "labels")
        xs.append(x)
        ys.append(y)
    test_path = _find(root, ["test_batch"], "cifar10 test")
    meta = restricted_load(_find(root, ["batches.meta"], "cifar10 class names"))
    return _cifar_source(
        "cifar10", np.concatenate(xs), np.concatenate(ys), test_path, "labels", size, meta, "label_names"
    )


def cifar100(src: str | Path | None, size: int | None, **_: object) -> Source:
    root = _cifar_dir(src, "cifar100", "cifar-100-python")
    path = _find(root, ["train"], "cifar100 train")
    x, y = _cifar_arrays(restricted_load(path), path, "fine_labels")
    meta = restricted_load(_find(root, ["meta"], "cifar100 class names"))
    test_path = _find(root, ["test"], "cifar100 test")
    return _cifar_source("cifar100", x, y, test_path, "fine_labels", size, meta, "fine_label_names")


def _cifar_source(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test_path: Path,
    label_key: str,
    size: int | None,
    meta: dict,
    names_key: str,
) -> Source:
    test_x, test_y = _cifar_arrays(restricted_load(test_path), test_path, label_key)
    n_valid = min(5000, len(x) // 10)
    return _held_out_source(
        name,
        (x, y),
        (test_x, test_y),
        n_valid,
        size,
        class_names=_names(meta.get(names_key, [])),
        notes=f"valid = the last {n_valid} of the training batches; fine labels for cifar100",
    )


# ---------------------------------------------------------------------------------------------------------------
# Image folders: CelebA, Zappos50K.


def _load_files(paths: list[Path], convert: Callable[[Image.Image], np.ndarray], threads: int = 4) -> tuple:
    """Decode image files in a thread pool (PIL releases the GIL) -> (uint8 [n, C, H, W], keep bool [n])."""

    def one(path: Path) -> np.ndarray | None:
        try:
            with Image.open(path) as im:
                return convert(im)
        except (OSError, ValueError, SyntaxError):
            return None

    with ThreadPoolExecutor(threads) as pool:
        imgs = list(pool.map(one, paths))
    keep = np.array([img is not None for img in imgs], dtype=bool)
    shape = next((img.shape for img in imgs if img is not None), None)
    if shape is None:
        return np.zeros((len(paths), 0, 0, 0), np.uint8), keep
    x = np.stack([img if img is not None else np.zeros(shape, np.uint8) for img in imgs])
    return x.transpose(0, 3, 1, 2), keep


def _files_split(paths: list[Path], y: np.ndarray, convert: Callable, **extra: np.ndarray) -> Split:
    """A split of image files decoded (and converted) chunk by chunk; extra: per-sample arrays such as attrs."""

    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        x, keep = _load_files([paths[i] for i in idx], convert)
        return {"x": x, "y": y[idx], "keep": keep, **{k: v[idx] for k, v in extra.items()}}

    return Split(y=y, load=load)


def celeba(src: str | Path | None, size: int | None, crop: int | None = None, **_: object) -> Source:
    root = _src_dir(src, "celeba")
    size, crop = size or 64, crop or 148
    img_dir = next((d for d in [root / "img_align_celeba", root / "Img" / "img_align_celeba"] if d.is_dir()), None)
    if img_dir is None:
        raise FileNotFoundError(
            f"celeba images: expected the folder img_align_celeba/ in {root} (not found); unzip "
            "img_align_celeba.zip there"
        )
    attr_path = _find(root, ["list_attr_celeba.txt", "Anno/list_attr_celeba.txt"], "celeba attributes")
    part_path = _find(root, ["list_eval_partition.txt", "Eval/list_eval_partition.txt"], "celeba partition")
    lines = attr_path.read_text().split("\n")
    attr_names = lines[1].split()
    files, attrs = [], []
    for line in lines[2:]:
        parts = line.split()
        if parts:
            files.append(parts[0])
            attrs.append([int(v) > 0 for v in parts[1:]])  # published as +-1
    attrs = np.array(attrs, dtype=np.uint8)
    if attrs.shape[1:] != (len(attr_names),):
        raise ValueError(f"{attr_path}: expected {len(attr_names)} attributes per line; re-download it")
    partition = dict(line.split() for line in part_path.read_text().split("\n") if line.strip())

    def convert(im: Image.Image) -> np.ndarray:
        im = im.convert("RGB")
        w, h = im.size
        c = min(crop, w, h)
        left, top = (w - c) // 2, (h - c) // 2
        return np.asarray(im.crop((left, top, left + c, top + c)).resize((size, size), Image.BICUBIC))

    splits = {}
    for split, code in [("train", "0"), ("valid", "1"), ("test", "2")]:
        sel = np.array([i for i, f in enumerate(files) if partition.get(f) == code], dtype=np.int64)
        paths = [img_dir / files[i] for i in sel]
        splits[split] = _files_split(paths, np.full(len(sel), -1, np.int64), convert, attrs=attrs[sel])
    return Source(
        name="celeba",
        splits=splits,
        x_shape=(3, size, size),
        attr_names=attr_names,
        notes=f"centre crop {crop}x{crop}, bicubic resize to {size}; attributes +-1 stored as 1 / 0; no labels",
    )


def zappos50k(src: str | Path | None, size: int | None, **_: object) -> Source:
    root = _src_dir(src, "zappos50k")
    root = root / "ut-zap50k-images" if (root / "ut-zap50k-images").is_dir() else root
    categories = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not categories:
        raise FileNotFoundError(
            f"zappos50k: expected the folder ut-zap50k-images/ with one folder per category (Boots, Sandals, Shoes, "
            f"Slippers) in {root}; unzip ut-zap50k-images.zip there"
        )
    files, labels = [], []
    for c, cat in enumerate(categories):
        for path in sorted((root / cat).rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                files.append(path)
                labels.append(c)
    if not files:
        raise FileNotFoundError(f"zappos50k: no .jpg files under {root}/{{{','.join(categories)}}}")
    size = size or 64
    labels = np.array(labels, dtype=np.int64)

    def convert(im: Image.Image) -> np.ndarray:
        im = im.convert("RGB")
        w, h = im.size
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))  # white background, as the product photos
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        return np.asarray(canvas.resize((size, size), Image.BICUBIC))

    order = np.random.default_rng(0).permutation(len(files))
    n_hold = len(files) // 10
    chosen = {"valid": order[:n_hold], "test": order[n_hold : 2 * n_hold], "train": order[2 * n_hold :]}
    splits = {}
    for split in ("train", "valid", "test"):
        sel = np.sort(chosen[split])
        splits[split] = _files_split([files[i] for i in sel], labels[sel], convert)
    return Source(
        name="zappos50k",
        splits=splits,
        x_shape=(3, size, size),
        class_names=categories,
        notes=f"class = category folder; padded square on white, bicubic resize to {size}; split 80/10/10 (seed 0)",
    )


# ---------------------------------------------------------------------------------------------------------------
# dSprites: the published .npz and our procedural renderer of the same grid; the spiral toy.

DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"


def _grid_source(name: str, shape_of: np.ndarray, load_points: Callable, size: int, notes: str) -> Source:
    """train = every grid point (shape_of: the shape class of each, the label), valid = 5,000 random points."""
    n_grid = len(shape_of)
    all_idx = np.arange(n_grid, dtype=np.int64)
    valid_idx = np.sort(np.random.default_rng(12345).choice(n_grid, size=min(5000, n_grid), replace=False))
    splits = {}
    for split, sel in [("train", all_idx), ("valid", valid_idx)]:

        def load(idx: np.ndarray, sel=sel) -> dict[str, np.ndarray]:
            return load_points(sel[idx])

        splits[split] = Split(y=shape_of[sel], load=load)
    return Source(
        name=name,
        splits=splits,
        x_shape=(1, size, size),
        class_names=procedural.DSPRITES_SHAPE_NAMES,
        factor_names=procedural.DSPRITES_FACTOR_NAMES,
        notes=notes + "; y = shape; valid = 5000 random grid points (dSprites has no held-out split)",
        grid=True,
    )


def dsprites(src: str | Path | None, size: int | None, **_: object) -> Source:
    root = _src_dir(src, "dsprites")
    path = root if root.is_file() else _find(root, [DSPRITES_FILE], "dsprites")
    if size not in (None, 64):
        raise ValueError("the published dSprites images are 64x64: drop --size (or use dsprites-procedural --size)")
    with np.load(path, allow_pickle=False) as npz:  # the 'metadata' entry is a pickle: never loaded
        if not {"imgs", "latents_values", "latents_classes"} <= set(npz.files):
            raise ValueError(f"{path} lacks imgs / latents_values / latents_classes; re-download {DSPRITES_FILE}")
        imgs, values, classes = npz["imgs"], npz["latents_values"], npz["latents_classes"]

    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "x": (imgs[idx][:, None] > 0).astype(np.uint8) * 255,
            "y": classes[idx, 1].astype(np.int64),
            "factors": values[idx].astype(np.float32),
            "factor_classes": classes[idx].astype(np.int64),
        }

    return _grid_source(
        "dsprites", classes[:, 1].astype(np.int64), load, 64, "the published dSprites .npz; pixels 0/1 stored as 0/255"
    )


def dsprites_procedural(
    src: str | Path | None, size: int | None, style: str = "dsprites-procedural", **_: object
) -> Source:
    """Our renderer of the dSprites grid; `style` (procedural.DSPRITES_STYLES, also the source's name) sets the
    sprite size."""
    if src is not None:
        raise ValueError(f"{style} renders its images and reads no files: drop --src")
    size = size or 64

    def load(idx: np.ndarray) -> dict[str, np.ndarray]:
        classes, values = procedural.dsprites_factors(idx)
        x = procedural.render_dsprites(idx, size, style=style)
        return {"x": x, "y": classes[:, 1], "factors": values, "factor_classes": classes}

    shape_of = procedural.dsprites_factors(np.arange(procedural.DSPRITES_NUM))[0][:, 1]
    return _grid_source(style, shape_of, load, size, "rendered by amr_fast")


def spiral(src: str | Path | None, size: int | None, **_: object) -> Source:
    if src is not None or size is not None:
        raise ValueError("spiral generates 2-D points and reads no files: drop --src and --size")
    splits = {}
    for i, (split, n) in enumerate([("train", 10000), ("valid", 1000), ("test", 1000)]):
        points, t = procedural.spiral(n, seed=1000 + i)

        def load(idx: np.ndarray, points=points, t=t) -> dict[str, np.ndarray]:
            return {"x": points[idx], "y": np.full(len(idx), -1, np.int64), "factors": t[idx]}

        splits[split] = Split(y=np.full(n, -1, np.int64), load=load)
    return Source(name="spiral", splits=splits, x_shape=(2,), factor_names=["t"], notes="2-D spiral toy, no labels")


SOURCES: dict[str, Callable[..., Source]] = {
    "mnist": _idx_source("mnist"),
    "kmnist": _idx_source("kmnist"),
    "fashion-mnist": _idx_source("fashion-mnist"),
    "svhn": svhn,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "celeba": celeba,
    "zappos50k": zappos50k,
    "dsprites": dsprites,
    "dsprites-procedural": dsprites_procedural,
    "dsprites-procedural-large": functools.partial(dsprites_procedural, style="dsprites-procedural-large"),
    "dsprites-procedural-xl": functools.partial(dsprites_procedural, style="dsprites-procedural-xl"),
    "spiral": spiral,
}


def open_source(name: str, src: str | Path | None, size: int | None = None, **options: object) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[name](src, size, **options)


__all__ = [
    "SOURCES",
    "Source",
    "Split",
    "arrays_source",
    "open_source",
    "read_idx",
    "RestrictedUnpickler",
    "restricted_load",
]
