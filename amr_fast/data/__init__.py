"""amr_fast.data: WebDataset shards for every dataset of AMR / Manifold Mixup, and the streaming reader.

Write once (`make_shards`, or `amr-fast shard SOURCE --src PATH --out DIR`), then stream: `train_loader` (infinite,
per rank, equal batch counts, resumable) and `eval_loader` (one exact pass). `load_index` / `check_index` read and
validate a dataset's `index.json` against the model config before training; `resolve_data_root` finds (or
generates into the cache) a config's dataset, `to_unit` turns stored uint8 images into model inputs in [-1, 1].
A dataset may live in a local directory, behind an http(s):// URL or a `pipe:COMMAND {}` (`amr_fast.data.remote`).
Layout: docs/design.md, "Layout".
"""

from amr_fast.data.builtin import resolve_data_root
from amr_fast.data.images import to_unit
from amr_fast.data.index import check_index, load_index
from amr_fast.data.loader import eval_loader, stream_counts, train_loader
from amr_fast.data.write import make_shards

__all__ = [
    "check_index",
    "eval_loader",
    "load_index",
    "make_shards",
    "resolve_data_root",
    "stream_counts",
    "to_unit",
    "train_loader",
]
