"""The dataset index (`index.json`) and the per-sample codec of our WebDataset shards.

A dataset directory holds `{split}-{i:06d}.tar` shards and one `index.json`, written last (see `write.py`): a
directory without `index.json` is not a dataset. The index records what the model config must agree with (image
size, channels, classes) and, under "fields", how each tensor of a batch is stored in a sample:

    x               "raw" (uint8 C*H*W bytes), "png" or "jpg" (PIL), or "f32" (float32 points, e.g. the spiral)
    y               "cls" (ASCII integer, the WebDataset convention); -1 when the dataset has no labels
    attrs           raw uint8 0/1 (CelebA's 40 attributes, published as +-1), float32 in a batch
    factors         raw float32 latent values (dSprites: color, shape, scale, orientation, posX, posY)
    factor_classes  raw int16 latent class indices, int64 in a batch
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from amr_fast.data.remote import fetch, join, local_path

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "valid", "test")


def load_index(root: str | Path) -> dict:
    """Read a dataset's `index.json`; add "root" (where its shards are) and "digest"; check local shards exist.

    root: the dataset directory (or its index.json), a file:// / http(s):// directory URL or a `pipe:...{}`
    command (see `amr_fast.data.remote`). Every way this can go wrong ends in one ValueError or FileNotFoundError
    that names the file and says what was expected.
    """
    path = local_path(root)
    if path is None:
        url = str(root)
        if re.search(r"\.tar/?$", url.replace("{}", "")):
            raise ValueError(f"data={url!r} names a shard; pass the dataset directory URL that holds index.json")
        index_url = join(url, INDEX_NAME) if not url.rstrip("/").endswith(INDEX_NAME) else url
        raw, error = fetch(index_url)
        if error is not None:
            raise FileNotFoundError(
                f"cannot read the dataset index {index_url}: {error}; pass the URL of the directory holding the "
                "shards and index.json written by `amr-fast shard` (e.g. http://host/fm32 or 'pipe:cat /mnt/fm32/{}')"
            )
        where, base = index_url, url.rstrip("/").removesuffix("/" + INDEX_NAME) if "{}" not in url else url
    else:
        if path.is_dir():
            path = path / INDEX_NAME
        if path.suffix == ".tar" or path.name.endswith(".tar.partial"):
            raise ValueError(
                f"{path} is a shard, not a dataset: pass its directory {path.parent} (the one holding index.json)"
            )
        if not path.is_file():
            hint = (
                " (shards without an index are an unfinished write: re-run `amr-fast shard`)"
                if path.parent.is_dir() and any(path.parent.glob("*.tar"))
                else ""
            )
            folder = path.parent if path.name == INDEX_NAME else path  # the dataset's directory, as the user named it
            if not hint and folder.is_dir() and any(folder.iterdir()):  # files, no shards: the raw data, likely
                raise FileNotFoundError(
                    f"{folder} holds no shards (no {INDEX_NAME}, no .tar): if these are a dataset's published files, "
                    f"shard them first, `amr-fast shard SOURCE --src {folder} --out DIR` (DIR: a new folder), then "
                    "pass data=DIR"
                )
            raise FileNotFoundError(
                f"no dataset index at {path}{hint}; create the dataset with `amr-fast shard SOURCE --src ... "
                f"--out {folder}`"
            )
        raw, where, base = path.read_bytes(), str(path), str(path.parent)
    index = _parse_index(raw, where)
    index["root"] = base
    index["digest"] = hashlib.sha1(raw).hexdigest()
    if path is not None:
        for split, info in index["splits"].items():
            missing = [name for name in info["shards"] if not (path.parent / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"split {split!r} of {path} lists {len(missing)} shard(s) that do not exist, e.g. "
                    f"{path.parent / missing[0]}; copy the whole dataset directory or re-create it with `amr-fast "
                    "shard`"
                )
    return index


def _parse_index(raw: bytes, where: str) -> dict:
    expected = f"a dataset index (JSON written by `amr-fast shard`, format_version {FORMAT_VERSION})"
    if raw[:512].startswith(b"\0") or raw[257:262] == b"ustar":
        raise ValueError(f"{where} is a tar shard, not {expected}: pass the dataset directory that holds index.json")
    try:
        index = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not text ({err.reason} at byte {err.start}), expected {expected}") from None
    except json.JSONDecodeError as err:
        cut = " (the file is cut short: copy it again)" if err.pos >= len(raw.rstrip()) - 1 else ""
        raise ValueError(
            f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}){cut}; expected "
            f"{expected}: re-copy the dataset or re-create it with `amr-fast shard`"
        ) from None
    if not isinstance(index, dict) or not isinstance(index.get("splits"), dict):
        raise ValueError(f"{where} is JSON but not {expected} (no 'splits'); re-create it with `amr-fast shard`")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format_version {version!r} but this amr_fast reads version {FORMAT_VERSION}: "
            "re-create the dataset with `amr-fast shard`"
        )
    return index


def check_index(index: dict, img_size: int, channels: int, num_classes: int | None = None) -> None:
    """Raise ValueError before training if the data and the model config disagree (both sides + the fix).

    Image datasets: `img_size` is the side of the square images and `channels` their channel count. Point
    datasets (the spiral): `channels` is the point dimension and `img_size` 0 or 1 (a point as a 1x1 image).
    num_classes: the config's class count; a labelled dataset with more classes is refused (its labels would be
    out of range for the model's heads).
    """
    name, where = index.get("name", "?"), index.get("root", "the index")
    classes = index.get("num_classes") or 0
    if num_classes is not None and classes > num_classes:
        raise ValueError(
            f"dataset {name!r} at {where} has {classes} classes but the config has num_classes={num_classes}: use "
            f"a preset for this dataset or the override num_classes={classes} (or shard the dataset you meant)"
        )
    if "dim" in index and index.get("image_size") is None:
        if channels != index["dim"] or img_size not in (0, 1, None):
            raise ValueError(
                f"dataset {name!r} at {where} holds {index['dim']}-D points but the model config expects "
                f"img_size={img_size}, channels={channels}: use an MLP preset with channels={index['dim']} and "
                "img_size=1"
            )
        return
    size, chans = index.get("image_size"), index.get("channels")
    if size != img_size or chans != channels:
        raise ValueError(
            f"dataset {name!r} at {where} has {size}x{size} images with {chans} channel(s) but the model config "
            f"expects {img_size}x{img_size} with {channels}: re-shard with `amr-fast shard {name} --size "
            f"{img_size} ...` (channels are fixed by the source), or overrides img_size=/channels= matching the data"
        )


# ---------------------------------------------------------------------------------------------------------------
# Sample codec.


def field_specs(
    x_shape: tuple[int, ...], encoding: str, *, attrs: int = 0, factors: int = 0, factor_classes: bool = False
) -> dict:
    """The index's "fields" entry. x_shape: [C, H, W] (uint8 images) or [D] (float32 points)."""
    if len(x_shape) == 1:
        fields = {"x": {"ext": "f32", "dtype": "float32", "shape": list(x_shape)}}
    else:
        ext = {"raw": "raw", "png": "png", "jpeg": "jpg"}[encoding]
        fields = {"x": {"ext": ext, "dtype": "uint8", "shape": list(x_shape)}}
    fields["y"] = {"ext": "cls", "dtype": "int64", "shape": []}
    if attrs:
        fields["attrs"] = {"ext": "attrs", "dtype": "uint8", "shape": [attrs]}
    if factors:
        fields["factors"] = {"ext": "factors", "dtype": "float32", "shape": [factors]}
    if factors and factor_classes:
        fields["factor_classes"] = {"ext": "fcls", "dtype": "int16", "shape": [factors]}
    return fields


def encode_sample(sample: dict[str, np.ndarray], fields: dict) -> dict[str, bytes]:
    """One sample's arrays (x [C,H,W] uint8 or [D] float32, y scalar, ...) -> {ext: bytes} for the tar."""
    out = {}
    for name, spec in fields.items():
        value = sample[name]
        ext = spec["ext"]
        if ext == "cls":
            out[ext] = str(int(value)).encode()
        elif ext in ("png", "jpg"):
            img = np.ascontiguousarray(np.asarray(value, np.uint8).transpose(1, 2, 0))
            img = img[:, :, 0] if img.shape[2] == 1 else img
            buf = io.BytesIO()
            if ext == "png":
                Image.fromarray(img).save(buf, format="PNG", compress_level=1)  # fast to write, same decode speed
            else:
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
            out[ext] = buf.getvalue()
        else:
            out[ext] = np.ascontiguousarray(value, dtype=spec["dtype"]).tobytes()
    return out


def _nbytes(spec: dict) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


def decode_plan(fields: dict) -> list[tuple[str, str, int, tuple]]:
    """(name, ext, byte count, shape) per field: computed once per reader, used by `decode_sample` per sample."""
    return [(name, spec["ext"], _nbytes(spec), tuple(spec["shape"])) for name, spec in fields.items()]


def decode_sample(raw: dict[str, memoryview], plan: list[tuple[str, str, int, tuple]]) -> dict:
    """Check / decode one sample's members (plan: `decode_plan(index["fields"])`); raise ValueError if a field is
    missing or does not decode. Fixed-size raw fields stay bytes (joined and reinterpreted once per batch in
    `collate`).
    """
    out = {}
    for name, ext, nbytes, shape in plan:
        payload = raw.get(ext)
        if payload is None:
            raise ValueError(f"sample has no .{ext} member")
        if ext == "cls":
            out[name] = int(bytes(payload))
        elif ext == "png" or ext == "jpg":
            c, h, w = shape
            mode = "L" if c == 1 else "RGB"
            with Image.open(io.BytesIO(payload)) as im:
                img = np.asarray(im if im.mode == mode else im.convert(mode))
            if img.shape[:2] != (h, w):
                raise ValueError(f"image is {img.shape[:2]}, expected {(h, w)}")
            out[name] = img
        else:
            if len(payload) != nbytes:
                raise ValueError(f".{ext} has {len(payload)} bytes, expected {nbytes}")
            out[name] = payload
    return out


def raw_array(name: str, spec: dict, rows: np.ndarray) -> np.ndarray:
    """Fixed-size raw payloads [n, nbytes] uint8 -> the batch array of field `name` (a new, writable array).

    attrs (stored uint8 0/1) become float32, factor_classes (stored int16) int64; the rest keep the stored dtype.
    """
    arr = np.array(rows, dtype=np.uint8, order="C").view(spec["dtype"]).reshape(len(rows), *spec["shape"])
    if name == "attrs":
        return arr.astype(np.float32)
    if name == "factor_classes":
        return arr.astype(np.int64)
    return arr


def collate(samples: list[dict], fields: dict) -> dict[str, np.ndarray]:
    """Decoded samples -> arrays: x uint8 [N,C,H,W] (float32 [N,D] points), y int64 [N], attrs float32 ..."""
    n = len(samples)
    out = {}
    for name, spec in fields.items():
        values = [s[name] for s in samples]
        ext = spec["ext"]
        if ext == "cls":
            out[name] = np.array(values, dtype=np.int64).reshape(n)
        elif ext in ("png", "jpg"):
            c, h, w = spec["shape"]
            arr = np.stack(values).reshape(n, h, w, c) if n else np.zeros((0, h, w, c), np.uint8)
            out[name] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
        else:
            rows = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(n, _nbytes(spec))
            out[name] = raw_array(name, spec, rows)
    return out
