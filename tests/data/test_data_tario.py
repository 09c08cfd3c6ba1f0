"""The tar layer: our shards are plain tars, the vectorised fixed-layout parser agrees with the per-sample parser,
and both stop at damage instead of returning garbage."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from amr_fast.data.tario import ShardWriter, ascii_ints, iter_samples, uniform_members


def write(path, labels, nbytes=700):
    writer = ShardWriter(path)
    rng = np.random.default_rng(len(labels))
    payloads = [rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes() for _ in labels]
    for i, (label, payload) in enumerate(zip(labels, payloads)):
        writer.write(f"{i * 3:08d}", {"raw": payload, "cls": str(label).encode()})
    writer.close()
    return payloads


def test_vectorised_parser_matches_per_sample_parser(tmp_path):
    labels = [3, -1, 12, 0, 7, 123456]
    payloads = write(tmp_path / "a.tar", labels)
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert [m.name for m in tar.getmembers()][:3] == ["00000000.raw", "00000000.cls", "00000003.raw"]
    data = (tmp_path / "a.tar").read_bytes()
    keys, (raw, cls), _ = uniform_members(data, len(labels), [("raw", 700), ("cls", None)])
    assert keys.tolist() == [0, 3, 6, 9, 12, 15] and ascii_ints(cls).tolist() == labels
    assert [bytes(r) for r in raw] == payloads
    part_keys, (part_raw, part_cls), _ = uniform_members(data, 6, [("raw", 700), ("cls", None)], rows=slice(1, None, 2))
    assert part_keys.tolist() == [3, 9, 15] and ascii_ints(part_cls).tolist() == [-1, 0, 123456]  # one part
    assert [bytes(r) for r in part_raw] == payloads[1::2]
    samples = list(iter_samples(data))
    assert [int(k) for k, _ in samples] == keys.tolist()
    assert [int(bytes(f["cls"])) for _, f in samples] == labels and [bytes(f["raw"]) for _, f in samples] == payloads
    assert ascii_ints(np.frombuffer(b"-1\0\0-42\0", np.uint8).reshape(2, 4)).tolist() == [-1, -42]


def test_damage_is_refused_or_skipped(tmp_path):
    write(tmp_path / "a.tar", list(range(5)))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    layout = [("raw", 700), ("cls", None)]
    assert uniform_members(bytes(data), 5, [("raw", 701), ("cls", None)]) is None  # another layout
    assert uniform_members(bytes(data[:-3000]), 5, layout) is None  # truncated
    stride = 512 + 1024 + 1024
    data[2 * stride + 5] ^= 0xFF  # a flipped bit in the third sample's header: checksum mismatch
    assert uniform_members(bytes(data), 5, layout) is None
    samples = list(iter_samples(bytes(data)))  # resynchronised at the next valid header: only sample 6 is hurt
    assert [k for k, _ in samples] == ["00000000", "00000003", "00000006", "00000009", "00000012"]
    assert sorted(samples[2][1]) == ["cls"] and all(sorted(f) == ["cls", "raw"] for k, f in samples if k != "00000006")
    assert [k for k, _ in iter_samples(bytes(data[: 4 * stride + 700]))][-1] == "00000009"  # truncated: tail lost


def test_payload_checksum_drops_only_the_damaged_sample(tmp_path):
    payloads = write(tmp_path / "a.tar", list(range(6)))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    stride = 512 + 1024 + 1024
    data[4 * stride + 512 + 100] ^= 0x01  # one bit of sample 4's image: the tar headers are still valid
    keys, (raw, cls), bad = uniform_members(bytes(data), 6, [("raw", 700), ("cls", None)])
    assert keys.tolist() == [0, 3, 6, 9, 15] and bad.tolist() == [12] and ascii_ints(cls).tolist() == [0, 1, 2, 3, 5]
    assert [bytes(r) for r in raw] == payloads[:4] + payloads[5:]
    samples = dict(iter_samples(bytes(data)))
    assert samples["00000012"]["raw"] is None and samples["00000012"]["cls"] is not None
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:  # still a plain tar for other readers
        assert len(tar.getmembers()) == 12


def test_old_shards_without_checksums_still_parse(tmp_path):
    payloads = write(tmp_path / "a.tar", [1, 2, 3])
    data = bytearray((tmp_path / "a.tar").read_bytes())
    for sample in range(3):
        for header in (sample * 2560, sample * 2560 + 1536):
            block = bytearray(data[header : header + 512])
            block[500:512] = bytes(12)  # as written before checksums: zero pad
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % sum(block)
            data[header : header + 512] = block
    keys, (raw, _), bad = uniform_members(bytes(data), 3, [("raw", 700), ("cls", None)])
    assert keys.tolist() == [0, 3, 6] and len(bad) == 0 and [bytes(r) for r in raw] == payloads
    assert all(None not in f.values() for _, f in iter_samples(bytes(data)))
