"""The built-in datasets ("builtin:NAME"): generated once into a cache directory, then read like any other.

`resolve_data_root(data, subset)` turns a config's `data` into a dataset directory: a path is taken as it is;
"builtin:dsprites-procedural" and "builtin:spiral" are rendered by `make_shards` into `$AMR_FAST_CACHE` (default
`~/.cache/amr_fast`) by the main process while the others wait (the index is written last, so a half-written
cache entry is regenerated). Separate runs started together (e.g. two seeds) generate a cache entry once: the
first takes a lock beside it, the others wait for it and then find the index.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from amr_fast.data.remote import file_lock, local_path
from amr_fast.data.write import make_shards

# Training-set size when the config's subset is 0 (the full dSprites grid is 737k images, far more than a CPU
# demo sees); None = everything the generator makes.
BUILTIN_TRAIN_SIZE = {
    "dsprites-procedural": 20_000,
    "dsprites-procedural-large": 20_000,
    "dsprites-procedural-xl": 20_000,
    "spiral": None,
}


def cache_dir() -> Path:
    return Path(os.environ.get("AMR_FAST_CACHE", "~/.cache/amr_fast")).expanduser()


def resolve_data_root(
    data: str, subset: int = 0, is_main: bool = True, wait: Callable[[], None] = lambda: None
) -> Path | str:
    """The dataset directory of `data`: a directory (or a URL / `pipe:` command, amr_fast.data.remote), or for
    "builtin:NAME" a set generated once into the cache directory by the main process (`is_main`) while the other
    ranks wait (`wait`, a barrier every rank calls)."""
    if not data:
        raise ValueError("no dataset: pass data=DIR (a directory made by `amr-fast shard`) or use the demo preset")
    if not data.startswith("builtin:"):
        return local_path(data) or data  # a URL / pipe: command stays a string (Path would fold its "//")
    name = data.split(":", 1)[1]
    if name not in BUILTIN_TRAIN_SIZE:
        raise ValueError(f"unknown builtin dataset {name!r}; choose from {', '.join(BUILTIN_TRAIN_SIZE)}")
    subset = subset or BUILTIN_TRAIN_SIZE[name]
    root = cache_dir() / f"{name}-{subset or 'all'}"
    if is_main and not (root / "index.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(root.parent / f".{root.name}.lock"):  # another run may be generating it right now
            if not (root / "index.json").exists():
                make_shards(name, None, root, subset=subset, seed=0)  # index.json is written last
    wait()
    return root
