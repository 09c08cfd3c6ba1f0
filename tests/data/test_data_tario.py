"""The tar layer: our shards are plain tars, the vectorised fixed-layout parser agrees with the per-sample parser,
and both stop at damage instead of returning garbage."""

from __future__ import annotations

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
    keys, (raw, cls) = uniform_members(data, len(labels), [("raw", 700), ("cls", None)])
    assert keys.tolist() == [0, 3, 6, 9, 12, 15] and ascii_ints(cls).tolist() == labels
    assert [bytes(r) for r in raw] == payloads
    part_keys, (part_raw, part_cls) = uniform_members(data, 6, [("raw", 700), ("cls", None)], rows=slice(1, None, 2))
    assert part_keys.tolist() == [3, 9, 15] and ascii_ints(part_cls).tolist() == [-1, 0, 123456]  # one part
    assert [bytes(r) for r in part_raw] == payloads[1::2]
    samples = list(iter_samples(data))
    assert [int(k) for k, _ in samples] == keys.tolist()
    assert [int(bytes(f["cls"])) for _, f in samples] == labels and [bytes(f["raw"]) for _, f in samples] == payloads
    assert ascii_ints(np.frombuffer(b"-1\0\0-42\0", np.uint8).reshape(2, 4)).tolist() == [-1, -42]


def test_damage_is_refused_or_cut_short(tmp_path):
    write(tmp_path / "a.tar", list(range(5)))
    data = bytearray((tmp_path / "a.tar").read_bytes())
    layout = [("raw", 700), ("cls", None)]
    assert uniform_members(bytes(data), 5, [("raw", 701), ("cls", None)]) is None  # another layout
    assert uniform_members(bytes(data[:-3000]), 5, layout) is None  # truncated
    stride = 512 + 1024 + 1024
    data[2 * stride + 5] ^= 0xFF  # a flipped bit in the third sample's header: checksum mismatch
    assert uniform_members(bytes(data), 5, layout) is None
    assert [k for k, _ in iter_samples(bytes(data))] == ["00000000", "00000003"]  # stops at the damage
