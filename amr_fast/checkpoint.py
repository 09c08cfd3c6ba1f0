"""Snapshots, resume states, snapshot lookup and atomic file writes (docs/design.md, "The run directory").

- A *snapshot* (`snapshot-<kimg>.safetensors`) is pure safetensors: every tensor of every module under
  `"<module>.<name>"`, plus metadata strings `format`, `amr_fast_version`, `config` (JSON) and `kimg`. It loads
  without the run directory and without pickle (`load_networks` for `amr-fast train`'s, `load_classifier` in
  amr_fast.classify for the classifier's). Writes are atomic (tmp file + os.replace) and refuse non-finite
  tensors, so a diverged run never leaves a NaN snapshot. `latest_snapshot(run_dir)` finds the newest.
- A *state* (`state-<kimg>/`) is the full training state, and loading it never unpickles anything: the
  networks' tensors (`model.safetensors`), the optimisers' tensors (`optim.safetensors`) with the rest of their
  state dicts (`optim.json`), the loop's own state (`loop.json`), and per rank its RNG states and extra tensors,
  if any (`rank<r>.safetensors`, `rank<r>.json`; a state resumes on any number of processes). It is written into
  `state-<kimg>.tmp/`, renamed, and only then marked complete by the file `COMPLETE`; `find_latest_state`
  ignores anything without the marker, so a crash mid-write never leaves a newest state that fails to load.
  Files a state does not name (a planted `*.pkl`) are never opened.
- `write_text_atomic` / `read_json`: every JSON file of a run is replaced atomically, and a parse error names
  the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import amr_fast
from amr_fast.models import build_networks
from amr_fast.overrides import from_dict

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
    _save_file(tensors, tmp, metadata)
    os.replace(tmp, path)


def load_snapshot(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(state dicts per module, metadata) of a snapshot file, or of a run directory's newest snapshot. Metadata
    `config` and extras are parsed from JSON, `kimg` is a float."""
    path = Path(path)
    if path.is_dir():
        path = latest_snapshot(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory or a snapshot-<kimg>.safetensors")
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


def load_networks(
    path: str | Path, device: torch.device | str = "cpu", snapshot: tuple[dict, dict] | None = None
) -> tuple[dict[str, torch.nn.Module], Any]:
    """Rebuild the networks of an `amr-fast train` snapshot from its own config and load its weights: (networks,
    TrainConfig). `snapshot`: what `load_snapshot(path)` returned, if the caller has read it already."""
    state_dicts, meta = snapshot or load_snapshot(path)
    if "mode" in meta["config"]:
        raise ValueError(
            f"{path} is a classifier snapshot of `amr-fast classify`, not an autoencoder: pass a snapshot written by "
            "`amr-fast train` (load classifiers with amr_fast.classify.load_classifier)"
        )
    cfg = from_dict(meta["config"])
    nets = build_networks(cfg)
    load_state_dicts(nets, state_dicts)
    for net in nets.values():
        net.to(device).eval()
    return nets, cfg


def latest_snapshot(run_dir: str | Path) -> Path:
    """The newest `snapshot-<kimg>.safetensors` of a run directory (names sort by kimg)."""
    snaps = sorted(Path(run_dir).glob("snapshot-*.safetensors"))
    if not snaps:
        raise FileNotFoundError(f"{run_dir} has no snapshot-*.safetensors yet; train longer (snapshot_kimg)")
    return snaps[-1]


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


def _file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # read once, at import: setting the umask is not thread-safe


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file with the mode of every other file of a run (it creates its files 0o600)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, FILE_MODE)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a synced tmp file and a rename: readers see the old or the new file, never
    a truncated one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; a file that does not parse is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): a truncated or edited file; restore or delete it") from err


# What a state holds besides the networks: per-rank RNG states (python and numpy as JSON, torch as tensors).


def _rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    return tensors, {"python": [version, list(internal), gauss], "numpy": [kind, pos, has_gauss, cached]}


def _set_rng_states(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])


def _optimizer_parts(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state dict as (tensors "<name>/<param index>/<key>", everything else as JSON values)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, dict] = {}
    for idx, entries in sd["state"].items():
        state[str(idx)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{idx}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                state[str(idx)][key] = value
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def _load_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {int(idx): dict(entries) for idx, entries in meta["state"].items()}
    for key, t in tensors.items():
        owner, idx, entry = key.split("/", 2)
        if owner == name:
            state.setdefault(int(idx), {})[entry] = t
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise ValueError(f"optimiser {name} of the state has {len(meta['param_groups'])} parameter groups, this run "
                         f"{len(opt.param_groups)}: the state belongs to another configuration")  # fmt: skip
    groups = [  # JSON made the tuples (Adam's betas) lists: give them back their type
        {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
        for saved, current in zip(meta["param_groups"], opt.param_groups)
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    _save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, path)


def save_state(
    accelerator: Any,
    run_dir: str | Path,
    nimg: int,
    loop: dict,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rank_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Every rank calls this at the same point (`accelerator`: an accelerate.Accelerator, for its rank, world size
    and barrier). Rank 0 writes the modules, the optimisers and `loop` (JSON); every rank its RNG states and
    `rank_tensors`; all into `state-<kimg>.tmp/`. Then rank 0 renames it to `state-<kimg>/`, writes the COMPLETE
    marker last, and deletes all but the newest `keep` complete states. Assumes a filesystem shared by all ranks;
    the modules and optimisers must be the same on every rank (they are: gradients are averaged)."""
    run_dir = Path(run_dir)
    final = run_dir / f"state-{kimg_tag(nimg)}"
    tmp = run_dir / (final.name + ".tmp")
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng_tensors, rng_meta = _rng_states()
    _save_tensors({**(rank_tensors or {}), **rng_tensors}, tmp / f"rank{rank}.safetensors")
    _write_json_atomic(tmp / f"rank{rank}.json", rng_meta)
    if accelerator.is_main_process:
        weights = {f"{m}.{k}": t for m, module in modules.items() for k, t in module.state_dict().items()}
        _save_tensors(weights, tmp / "model.safetensors")
        parts = {name: _optimizer_parts(name, opt) for name, opt in optimizers.items()}
        _save_tensors({k: t for tensors, _ in parts.values() for k, t in tensors.items()}, tmp / "optim.safetensors")
        _write_json_atomic(tmp / "optim.json", {name: meta for name, (_, meta) in parts.items()})
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


def load_state(
    accelerator: Any,
    state_dir: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what `save_state` wrote: the modules, optimisers and this rank's RNG states in place; returns
    (loop dict, this rank's extra tensors). Reads safetensors and JSON only. Elastic: a state written by N
    processes loads on any number (the modules and optimisers are replicated, the training draws and the data
    order are functions of the step, not of per-rank state); a rank the state has no file for keeps its RNG
    states and gets no extra tensors. Raises ValueError for other modules or a state of an older amr_fast."""
    state_dir = Path(state_dir)
    if not (state_dir / "model.safetensors").is_file():
        raise ValueError(
            f"{state_dir} is not a state this amr_fast reads (no model.safetensors: an older, pickled Accelerate "
            "state, which is never loaded); start a new --outdir, or delete the state to train from scratch"
        )
    rank_file = state_dir / f"rank{accelerator.process_index}.safetensors"  # absent: written by fewer processes
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(state_dir / "model.safetensors")).items():
        mname, _, name = key.partition(".")
        weights.setdefault(mname, {})[name] = t
    load_state_dicts(modules, weights)
    optim_tensors, optim_meta = load_file(str(state_dir / "optim.safetensors")), read_json(state_dir / "optim.json")
    for name, opt in optimizers.items():
        _load_optimizer(name, opt, optim_tensors, optim_meta[name])
    tensors = load_file(str(rank_file)) if rank_file.is_file() else {}
    if tensors:
        _set_rng_states(tensors, read_json(state_dir / f"rank{accelerator.process_index}.json"))
    return read_json(state_dir / "loop.json"), {k: v for k, v in tensors.items() if not k.startswith("rng/")}
