"""WebDataset tar shards at the byte level: a writer that publishes each shard atomically, and a fast reader.

A shard is a plain POSIX (ustar) tar in the WebDataset convention: one sample is the run of consecutive members
that share a key (`00001234.raw`, `00001234.cls`, ...), so `webdataset.WebDataset(url)` reads our shards too.
Two readers work on the shard's bytes in memory, both verifying every header checksum: `iter_samples` parses
the 512-byte headers one by one (several times faster than `tarfile`), and `uniform_members` parses a shard whose
samples all have the same layout (raw images, labels, factors) as one numpy array, with no Python loop over
samples; it returns None on anything unexpected, and the loader falls back to `iter_samples`.

Damage costs the damaged samples only. A header whose checksum fails is skipped and `iter_samples` resumes at the
next valid header (found with a vectorised scan of the following blocks), so random bytes in a shard lose the
samples they hit and a truncated shard loses its tail. Raw payloads have no checksum of their own in tar, so our
writer puts one in each header: the CRC-32 of the member's payload, as `crc` + 8 hex digits + NUL in the ustar
header's 12 unused bytes (offset 500, "pad" in POSIX; `tar`, `tarfile` and WebDataset ignore it). Both readers
verify it where present and drop the member's sample if it fails; shards without it (other writers) load
unverified.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK = 512
CRC_AT = 500  # the payload's CRC-32 in the header's unused "pad" bytes: b"crc" + 8 hex digits + NUL
CRC_MAGIC = b"crc"
_SCAN = 4096  # blocks checked at a time when looking for the next valid header after damage


def tar_header(name: str, size: int, crc: int | None = None) -> bytes:
    """A ustar header for a regular file (read-only, mtime 0: identical inputs give identical shards).

    crc: the payload's CRC-32, stored in the header's unused pad bytes (module docstring); None: no checksum.
    """
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
    if crc is not None:
        header[CRC_AT:BLOCK] = CRC_MAGIC + b"%08x\0" % crc
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
            self._file.write(tar_header(f"{key}.{ext}", len(payload), zlib.crc32(payload)))
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


def _valid_headers(blocks: np.ndarray) -> np.ndarray:
    """bool [n]: which 512-byte blocks [n, 512] are tar headers with a correct checksum (vectorised)."""
    stored = _octal_columns(blocks[:, 148:156])
    computed = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 256
    return stored == computed  # the checksum counts its own field as 8 spaces; all-zero blocks never match


def next_header(data: bytes, off: int) -> int:
    """Offset of the first block at or after `off` that is a valid header; len(data) if there is none."""
    n = (len(data) - off) // BLOCK
    blocks = np.frombuffer(data, dtype=np.uint8, count=n * BLOCK, offset=off).reshape(n, BLOCK)
    for first in range(0, n, _SCAN):
        hits = np.flatnonzero(_valid_headers(blocks[first : first + _SCAN]))
        if len(hits):
            return off + (first + int(hits[0])) * BLOCK
    return len(data)


def _crc_ok(header: bytes, payload: memoryview) -> bool:
    """False only if the header carries our CRC-32 and the payload does not match it."""
    if header[CRC_AT : CRC_AT + 3] != CRC_MAGIC:
        return True
    try:
        return int(header[CRC_AT + 3 : CRC_AT + 11], 16) == zlib.crc32(payload)
    except ValueError:
        return False


def iter_members(data: bytes) -> Iterator[tuple[int, bytes, memoryview | None]]:
    """Yield `(header offset, name, payload)` of every regular file in tar bytes, skipping damage.

    A header with a bad checksum is skipped: reading resumes at the next valid header. A payload that fails its
    CRC-32 (when the header has one) is yielded as None, so the caller drops that sample. A truncated shard
    ends at its last complete member. The caller compares what it received with what the index promised and
    counts the difference as skipped.
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
            stored, size = -1, 0  # not a header
        if stored != sum(header) - sum(header[148:156]) + 256:  # the checksum counts its own field as 8 spaces
            off = next_header(data, off + BLOCK)  # damage (or the end-of-archive marker): resynchronise
            long_name = None
            continue
        kind = header[156]
        start = off + BLOCK
        stop = start + size
        if stop > end:
            return  # truncated payload
        here, off = off, start + (size + BLOCK - 1) // BLOCK * BLOCK
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
        payload = view[start:stop]
        yield here, name, payload if _crc_ok(header, payload) else None


def iter_samples_at(data: bytes) -> Iterator[tuple[int, str, dict[str, memoryview | None]]]:
    """`iter_samples` with each sample's byte offset (of its first header); a None field failed its CRC-32."""
    key: bytes | None = None
    fields: dict[str, memoryview | None] = {}
    at = 0
    for off, name, payload in iter_members(data):
        slash = name.rfind(b"/")
        dot = name.find(b".", slash + 1)
        if dot < 0:
            continue
        k = name[:dot]
        if k != key:
            if key is not None:
                yield at, key.decode("utf-8", "replace"), fields
            key, fields, at = k, {}, off
        fields[name[dot + 1 :].decode("utf-8", "replace")] = payload
    if key is not None:
        yield at, key.decode("utf-8", "replace"), fields


def iter_samples(data: bytes) -> Iterator[tuple[str, dict[str, memoryview | None]]]:
    """Group consecutive members by WebDataset key (the name up to the first dot after the last slash)."""
    for _, key, fields in iter_samples_at(data):
        yield key, fields


def _octal_columns(block: np.ndarray) -> np.ndarray:
    """Vectorised octal parse of fixed-width header fields [n, w] (digits, then NUL / space padding)."""
    digits = block.astype(np.int64) - 48
    valid = (digits >= 0) & (digits <= 7)
    ndig = valid.cumprod(axis=1).sum(axis=1)  # leading run of octal digits
    k = np.arange(block.shape[1])
    weights = np.where(k[None, :] < ndig[:, None], 8 ** np.clip(ndig[:, None] - 1 - k[None, :], 0, None), 0)
    return (np.where(valid, digits, 0) * weights).sum(axis=1)


def _hex_columns(block: np.ndarray) -> np.ndarray:
    """Vectorised parse of 8 lowercase / uppercase hex digits per row [n, 8] -> int64 [n] (garbage stays garbage)."""
    b = block.astype(np.int64)
    digits = np.where(b >= 97, b - 87, np.where(b >= 65, b - 55, b - 48))
    return (digits * 16 ** np.arange(block.shape[1] - 1, -1, -1, dtype=np.int64)).sum(axis=1)


def _crc_failures(header: np.ndarray, payload: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """bool [n]: rows whose header carries our CRC-32 and whose payload (first `sizes` bytes) does not match it."""
    has = (header[:, CRC_AT : CRC_AT + 3] == np.frombuffer(CRC_MAGIC, np.uint8)).all(axis=1)
    bad = np.zeros(len(header), dtype=bool)
    rows = np.flatnonzero(has)
    if len(rows):
        stored = _hex_columns(header[rows, CRC_AT + 3 : CRC_AT + 11])
        computed = np.fromiter((zlib.crc32(payload[i, : sizes[i]]) for i in rows), dtype=np.int64, count=len(rows))
        bad[rows] = stored != computed
    return bad


def uniform_members(
    data: bytes, count: int, members: list[tuple[str, int | None]], key_digits: int = 8, rows: slice = slice(None)
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray] | None:
    """Parse a shard whose samples all have the same layout, without a Python loop over samples' headers.

    members: (ext, payload size) per member of a sample, in order; size None means "at most 512 bytes" (a label).
    rows: which samples to parse (e.g. `slice(p, None, P)`: one part of the shard; only those headers are read).
    Returns (keys int64 [n], payload views [n, size or 512] per member, keys of the samples dropped because a
    payload failed its CRC-32) for the selected samples, or None if the bytes do not have exactly this layout with
    valid headers (damaged, other writer, other keys): then use `iter_samples`.
    """
    blocks = [1 + ((size if size is not None else BLOCK) + BLOCK - 1) // BLOCK for _, size in members]
    stride = BLOCK * sum(blocks)
    if count == 0 or len(data) < count * stride:
        return None
    table = np.frombuffer(data, dtype=np.uint8, count=count * stride).reshape(count, stride)[rows]
    payloads, keys, off = [], None, 0
    bad = np.zeros(len(table), dtype=bool)
    for (ext, size), nblocks in zip(members, blocks):
        header = table[:, off : off + BLOCK]
        name = f".{ext}\0".encode()
        sizes = _octal_columns(header[:, 124:136])
        ok = (
            _valid_headers(header).all()
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
        bad |= _crc_failures(header, payloads[-1], sizes)
        off += nblocks * BLOCK
    if bad.any():
        return keys[~bad], [p[~bad] for p in payloads], keys[bad]
    return keys, payloads, keys[:0]


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
