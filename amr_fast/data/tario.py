"""WebDataset tar shards at the byte level: a writer that publishes each shard atomically, and a fast reader.

A shard is a plain POSIX (ustar) tar in the WebDataset convention: one sample is the run of consecutive members
that share a key (`00001234.raw`, `00001234.cls`, ...), so `webdataset.WebDataset(url)` reads our shards too.
Two readers work on the shard's bytes in memory, both verifying every header checksum: `iter_samples` parses
the 512-byte headers one by one (several times faster than `tarfile`; a truncated or damaged shard simply ends
early, so the loader can skip what is lost and count it), and `uniform_members` parses a shard whose samples all
have the same layout (raw images, labels, factors) as one numpy array, with no Python loop over samples; it
returns None on anything unexpected, and the loader falls back to `iter_samples`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK = 512


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file (read-only, mtime 0: identical inputs give identical shards)."""
    encoded = name.encode()
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes; use shorter keys")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = b"0000444\0"  # mode
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"  # mtime
    header[148:156] = b" " * 8  # checksum placeholder: counted as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class ShardWriter:
    """Write samples into `path` (a tar); the file appears under its final name only after `close()`.

    Each sample is `(key, {ext: bytes})`, written as members `key.ext`. Until `close()` the data lives in
    `path + ".partial"`, so an interrupted writer never leaves a shard that looks finished.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self.tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close() / abort()
        self.num_samples = 0

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        for ext, payload in fields.items():
            self._file.write(tar_header(f"{key}.{ext}", len(payload)))
            self._file.write(payload)
            self._file.write(b"\0" * (-len(payload) % BLOCK))
        self.num_samples += 1

    def close(self) -> None:
        self._file.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    return int(field, 8) if field else 0


def iter_members(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """Yield `(name, payload)` of every regular file in tar bytes; stop at the end or at the first damage.

    A truncated or corrupt shard simply ends early: the caller compares what it received with what the index
    promised and counts the difference as skipped.
    """
    view = memoryview(data)
    end = len(data)
    off = 0
    long_name: bytes | None = None
    while off + BLOCK <= end:
        header = data[off : off + BLOCK]
        try:
            size = _octal(header[124:136])
            stored = _octal(header[148:156])
        except ValueError:
            return  # not a header: damaged archive
        if stored != sum(header) - sum(header[148:156]) + 256:  # the checksum counts its own field as 8 spaces
            return  # also the end-of-archive marker (all zeros)
        kind = header[156]
        start = off + BLOCK
        stop = start + size
        if stop > end:
            return  # truncated payload
        off = start + (size + BLOCK - 1) // BLOCK * BLOCK
        if kind == 76:  # b"L": GNU long name of the next member
            long_name = bytes(view[start:stop]).rstrip(b"\0")
            continue
        if kind != 48 and kind != 0:  # not b"0" / b"\0" (a regular file): directories, pax headers, links
            long_name = None
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[:100].split(b"\0", 1)[0]
            if header[345] and header[257:262] == b"ustar":  # ustar name prefix
                name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        yield name, view[start:stop]


def iter_samples(data: bytes) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """Group consecutive members by WebDataset key (the name up to the first dot after the last slash)."""
    key: bytes | None = None
    fields: dict[str, memoryview] = {}
    for name, payload in iter_members(data):
        slash = name.rfind(b"/")
        dot = name.find(b".", slash + 1)
        if dot < 0:
            continue
        k = name[:dot]
        if k != key:
            if key is not None:
                yield key.decode("utf-8", "replace"), fields
            key, fields = k, {}
        fields[name[dot + 1 :].decode("utf-8", "replace")] = payload
    if key is not None:
        yield key.decode("utf-8", "replace"), fields


def _octal_columns(block: np.ndarray) -> np.ndarray:
    """Vectorised octal parse of fixed-width header fields [n, w] (digits, then NUL / space padding)."""
    digits = block.astype(np.int64) - 48
    valid = (digits >= 0) & (digits <= 7)
    ndig = valid.cumprod(axis=1).sum(axis=1)  # leading run of octal digits
    k = np.arange(block.shape[1])
    weights = np.where(k[None, :] < ndig[:, None], 8 ** np.clip(ndig[:, None] - 1 - k[None, :], 0, None), 0)
    return (np.where(valid, digits, 0) * weights).sum(axis=1)


def uniform_members(
    data: bytes, count: int, members: list[tuple[str, int | None]], key_digits: int = 8, rows: slice = slice(None)
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Parse a shard whose samples all have the same layout, without a Python loop over samples.

    members: (ext, payload size) per member of a sample, in order; size None means "at most 512 bytes" (a label).
    rows: which samples to parse (e.g. `slice(p, None, P)`: one part of the shard; only those headers are read).
    Returns (keys int64 [n], payload views [n, size or 512] per member) for the selected samples, or None if the
    bytes do not have exactly this layout with valid headers (damaged, other writer, other keys): then use
    `iter_samples`.
    """
    blocks = [1 + ((size if size is not None else BLOCK) + BLOCK - 1) // BLOCK for _, size in members]
    stride = BLOCK * sum(blocks)
    if count == 0 or len(data) < count * stride:
        return None
    table = np.frombuffer(data, dtype=np.uint8, count=count * stride).reshape(count, stride)[rows]
    payloads, keys, off = [], None, 0
    for (ext, size), nblocks in zip(members, blocks):
        header = table[:, off : off + BLOCK]
        name = f".{ext}\0".encode()
        stored = _octal_columns(header[:, 148:156])
        computed = header.sum(axis=1, dtype=np.int64) - header[:, 148:156].sum(axis=1, dtype=np.int64) + 256
        sizes = _octal_columns(header[:, 124:136])
        ok = (
            (stored == computed).all()
            and (header[:, 156] == 48).all()  # b"0": regular file
            and (header[:, key_digits : key_digits + len(name)] == np.frombuffer(name, np.uint8)).all()
            and ((sizes == size).all() if size is not None else ((sizes > 0) & (sizes <= BLOCK)).all())
        )
        if not ok:
            return None
        member_keys = (header[:, :key_digits].astype(np.int64) - 48) @ (10 ** np.arange(key_digits - 1, -1, -1))
        if keys is None:
            if ((header[:, :key_digits] < 48) | (header[:, :key_digits] > 57)).any():
                return None
            keys = member_keys
        elif not np.array_equal(keys, member_keys):
            return None
        payloads.append(table[:, off + BLOCK : off + BLOCK + (size if size is not None else BLOCK)])
        off += nblocks * BLOCK
    return keys, payloads


def ascii_ints(payload: np.ndarray) -> np.ndarray:
    """Vectorised int() of NUL-padded ASCII integers (WebDataset .cls members) [n, w] -> int64 [n]."""
    payload = payload[:, :20]  # int64 has at most 19 digits and a sign
    neg = payload[:, 0] == 45  # "-"
    digits = payload[:, 1:] if neg.all() else payload
    if neg.any() and not neg.all():
        return np.array([int(bytes(row).rstrip(b"\0")) for row in payload], dtype=np.int64)
    d = digits.astype(np.int64) - 48
    valid = (d >= 0) & (d <= 9)
    ndig = valid.cumprod(axis=1).sum(axis=1)
    k = np.arange(d.shape[1])
    weights = np.where(k[None, :] < ndig[:, None], 10 ** np.clip(ndig[:, None] - 1 - k[None, :], 0, 18), 0)
    value = (np.where(valid, d, 0) * weights).sum(axis=1)
    return -value if neg.all() else value
