"""amr_fast.checkpoint: snapshots are pure safetensors, atomic, finite-only; mismatches name the tensor."""

import json

import pytest
import torch
from safetensors import safe_open

from amr_fast import checkpoint


def _modules(width: int = 4) -> dict[str, torch.nn.Module]:
    return {
        "ae": torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 3)),
        "probe": torch.nn.Linear(3, 2),
    }


def test_snapshot_round_trip_without_pickle(tmp_path):
    mods = _modules()
    path = tmp_path / "snapshot-0000000.100.safetensors"
    checkpoint.save_snapshot(path, mods, {"arch": "x", "width": 4}, kimg=0.1, extra={"best": 0.5})
    with safe_open(str(path), framework="pt") as f:  # readable by plain safetensors, metadata all strings
        meta = f.metadata()
        assert meta["format"] == checkpoint.SNAPSHOT_FORMAT and json.loads(meta["config"])["width"] == 4
        assert "ae.0.weight" in f.keys() and "probe.bias" in f.keys()
    sd, meta = checkpoint.load_snapshot(path)
    assert meta["kimg"] == 0.1 and meta["best"] == 0.5 and meta["config"] == {"arch": "x", "width": 4}
    fresh = _modules()
    checkpoint.load_state_dicts(fresh, sd)
    for name in mods:
        for a, b in zip(mods[name].state_dict().values(), fresh[name].state_dict().values()):
            assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_snapshot_is_refused_and_nothing_is_written(tmp_path):
    mods = _modules()
    with torch.no_grad():
        mods["ae"][1].bias[0] = float("nan")
    path = tmp_path / "snap.safetensors"
    with pytest.raises(ValueError, match=r"ae\.1\.bias.*non-finite"):
        checkpoint.save_snapshot(path, mods, {}, kimg=1.0)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_wrong_architecture_names_the_first_mismatched_tensor(tmp_path):
    path = tmp_path / "snap.safetensors"
    checkpoint.save_snapshot(path, _modules(width=4), {}, kimg=1.0)
    sd, _ = checkpoint.load_snapshot(path)
    other = _modules(width=5)
    before = [t.clone() for t in other["probe"].state_dict().values()]
    with pytest.raises(ValueError, match=r"ae\.0\.weight: expected shape \(5, 3\), found \(4, 3\)"):
        checkpoint.load_state_dicts(other, sd)
    assert all(torch.equal(a, b) for a, b in zip(before, other["probe"].state_dict().values()))  # nothing loaded


def test_not_a_snapshot_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors snapshot"):
        checkpoint.load_snapshot(bad)
    with pytest.raises(FileNotFoundError):
        checkpoint.load_snapshot(tmp_path / "missing.safetensors")


def test_find_latest_state_ignores_incomplete_states(tmp_path):
    for nimg, complete in [(100, True), (300, True), (500, False)]:
        d = tmp_path / f"state-{checkpoint.kimg_tag(nimg)}"
        d.mkdir()
        if complete:
            (d / checkpoint.STATE_MARKER).write_text("{}")
    (tmp_path / f"state-{checkpoint.kimg_tag(700)}.tmp").mkdir()
    assert checkpoint.find_latest_state(tmp_path).name == f"state-{checkpoint.kimg_tag(300)}"
    assert checkpoint.find_latest_state(tmp_path / "nope") is None
