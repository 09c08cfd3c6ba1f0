"""Snapshots and resume states (DESIGN.md "Contract: runs and checkpoints"; edm2-style rerun-to-resume).

- A *snapshot* (`snapshot-<kimg>.safetensors`) is pure safetensors: every tensor of every module under
  `"<module>.<name>"`, plus metadata strings `format`, `amr_fast_version`, `config` (JSON) and `kimg`. It loads
  without the run directory and without pickle (`load_networks`). Writes are atomic (tmp file + os.replace) and
  refuse non-finite tensors, so a diverged run never leaves a NaN snapshot.
- A *state* (`state-<kimg>/`) is the full Accelerate state (models, optimisers, every rank's RNG states) plus the
  loop's own counters (`loop.json`) and each rank's extra tensors (`rank<r>.safetensors`, e.g. the mixing
  generator). It is written into `state-<kimg>.tmp/`, renamed, and only then marked complete by the file
  `COMPLETE`; `find_latest_state` ignores anything without the marker, so a crash mid-write never leaves a newest
  state that fails to load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import amr_fast

if TYPE_CHECKING:
    from accelerate import Accelerator

SNAPSHOT_FORMAT = "amr_fast.snapshot.v1"
STATE_MARKER = "COMPLETE"
_STATE_RE = re.compile(r"^state-(\d+(?:\.\d+)?)$")


def kimg_tag(nimg: int) -> str:
    """File-name tag for a point in training: thousands of images, zero-padded so names sort by time."""
    return f"{nimg / 1000:010.3f}"


# ---------------------------------------------------------------------------------------------------------------
# Snapshots.


def save_snapshot(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    config: dict,
    kimg: float,
    extra: dict | None = None,
) -> None:
    """Write every module's state dict to one safetensors file, atomically. `extra` values are stored as JSON
    metadata strings. Raises ValueError (and writes nothing) if any tensor is non-finite."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for mname, module in modules.items():
        for name, t in module.state_dict().items():
            t = t.detach()
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"refusing to write snapshot {path.name}: tensor {mname}.{name} holds non-finite values "
                    "(the run diverged; lower lr or use precision=fp32, and resume from an earlier state)"
                )
            tensors[f"{mname}.{name}"] = t.to("cpu", copy=True).contiguous()  # copies: no shared storage
    metadata = {
        "format": SNAPSHOT_FORMAT,
        "amr_fast_version": amr_fast.__version__,
        "config": json.dumps(config),
        "kimg": repr(float(kimg)),
    }
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"snapshot extra key {key!r} is reserved; rename it")
        metadata[key] = json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_snapshot(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(state dicts per module, metadata). Metadata `config` and extras are parsed from JSON, `kimg` is a float."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"snapshot {path} does not exist; pass a snapshot-<kimg>.safetensors of a run")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a file that is not safetensors
        raise ValueError(f"{path} is not a safetensors snapshot ({err}); pass a snapshot-<kimg>.safetensors") from err
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(
            f"{path} is not an amr_fast snapshot (metadata format={meta.get('format')!r}, expected "
            f"{SNAPSHOT_FORMAT!r}); pass a snapshot-<kimg>.safetensors written by `amr-fast train`"
        )
    parsed: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("format", "amr_fast_version"):
            parsed[key] = value
        elif key == "kimg":
            parsed[key] = float(value)
        else:
            parsed[key] = json.loads(value)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        mname, _, name = key.partition(".")
        state_dicts.setdefault(mname, {})[name] = t
    return state_dicts, parsed


def load_state_dicts(modules: dict[str, torch.nn.Module], state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load per-module state dicts into `modules`, checking every tensor first. Raises ValueError naming the first
    mismatched tensor (name, expected shape, found shape) and changes nothing in that case."""
    for mname, module in modules.items():
        if mname not in state_dicts:
            raise ValueError(
                f"the snapshot has no module {mname!r} (it holds {sorted(state_dicts)}); build the networks from "
                "the snapshot's own config (load_networks) or drop that module"
            )
        found = state_dicts[mname]
        for name, t in module.state_dict().items():
            if name not in found:
                raise ValueError(
                    f"architecture mismatch at {mname}.{name}: expected shape {tuple(t.shape)}, found no such "
                    "tensor in the snapshot; build the networks from the snapshot's own config"
                )
            if tuple(found[name].shape) != tuple(t.shape):
                raise ValueError(
                    f"architecture mismatch at {mname}.{name}: expected shape {tuple(t.shape)}, found "
                    f"{tuple(found[name].shape)}; build the networks from the snapshot's own config"
                )
        extra = sorted(set(found) - set(module.state_dict()))
        if extra:
            raise ValueError(
                f"architecture mismatch at {mname}.{extra[0]}: expected no such tensor, found shape "
                f"{tuple(found[extra[0]].shape)}; build the networks from the snapshot's own config"
            )
    for mname, module in modules.items():
        module.load_state_dict(state_dicts[mname])


def load_networks(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.nn.Module], Any]:
    """Rebuild the networks of a snapshot from its own config and load its weights: (networks, TrainConfig)."""
    from amr_fast.config import from_dict
    from amr_fast.models import build_networks

    state_dicts, meta = load_snapshot(path)
    cfg = from_dict(meta["config"])
    nets = build_networks(cfg)
    load_state_dicts(nets, state_dicts)
    for net in nets.values():
        net.to(device).eval()
    return nets, cfg


# ---------------------------------------------------------------------------------------------------------------
# Resume states.


def state_kimg(path: Path) -> float | None:
    m = _STATE_RE.match(path.name)
    return float(m.group(1)) if m else None


def find_latest_state(run_dir: str | Path) -> Path | None:
    """The newest complete `state-<kimg>/` of a run (one holding the COMPLETE marker), or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    done = [p for p in run_dir.iterdir() if p.is_dir() and state_kimg(p) is not None and (p / STATE_MARKER).exists()]
    return max(done, key=state_kimg) if done else None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state(
    accelerator: Accelerator,
    run_dir: str | Path,
    nimg: int,
    loop: dict,
    rank_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Every rank calls this at the same point. Saves the Accelerate state (objects registered with
    `accelerator.register_for_checkpointing`, every rank's RNG states), `loop` (JSON, rank 0) and this rank's
    `rank_tensors`, into `state-<kimg>.tmp/`; then rank 0 renames it to `state-<kimg>/`, writes the COMPLETE
    marker last, and deletes all but the newest `keep` complete states. Assumes a filesystem shared by all ranks."""
    run_dir = Path(run_dir)
    final = run_dir / f"state-{kimg_tag(nimg)}"
    tmp = run_dir / (final.name + ".tmp")
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in (rank_tensors or {}).items()},
        str(tmp / f"rank{rank}.safetensors"),
    )
    if accelerator.is_main_process:
        _write_json_atomic(tmp / "loop.json", loop)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_json_atomic(final / STATE_MARKER, {"nimg": nimg})
        complete = sorted(
            (p for p in run_dir.iterdir() if p.is_dir() and state_kimg(p) is not None and (p / STATE_MARKER).exists()),
            key=state_kimg,
        )
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_state(accelerator: Accelerator, state_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what `save_state` wrote: loads the Accelerate state in place; returns (loop dict, this rank's
    tensors). Raises ValueError if the state was written by a different number of processes."""
    from safetensors.torch import load_file

    state_dir = Path(state_dir)
    rank_file = state_dir / f"rank{accelerator.process_index}.safetensors"
    n_saved = len(list(state_dir.glob("rank*.safetensors")))
    if n_saved != accelerator.num_processes or not rank_file.exists():
        raise ValueError(
            f"{state_dir} was written by {n_saved} processes but this run has {accelerator.num_processes}; "
            "resume with the same number of processes, or start a new --outdir from its snapshot"
        )
    accelerator.load_state(str(state_dir))
    with open(state_dir / "loop.json") as f:
        loop = json.load(f)
    return loop, load_file(str(rank_file))
