"""Two real processes under gloo (torchrun): each rank streams its rows of the global batches of one process and
the same number of batches (an all_reduce per batch, as DDP does, would hang otherwise), and the evaluation pass
covers the split once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import islice

from amr_fast.data import load_index, make_shards, train_loader
from amr_fast.data.loader import _TrainStream

WORKER = textwrap.dedent(
    """
    import json, sys
    from itertools import islice
    import torch
    import torch.distributed as dist
    from amr_fast.data import eval_loader, train_loader

    root, out, n_batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train = []
    for batch in islice(train_loader(root, 8, rank=rank, world_size=world, workers=1, seed=3), n_batches):
        step = torch.ones(1)
        dist.all_reduce(step)  # one collective per batch, like a DDP backward
        train.append(batch["index"].tolist())
    seen = [i for b in eval_loader(root, "train", 5, rank=rank, world_size=world) for i in b["index"].tolist()]
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "train": train, "eval": seen})
    if rank == 0:
        json.dump(gathered, open(out, "w"))
    dist.destroy_process_group()
    """
)


def test_two_gloo_ranks_take_their_rows_of_the_one_process_batches(idx_dir, tmp_path):
    src, _ = idx_dir
    root = make_shards("mnist", src, tmp_path / "mnist", shard_size=9)
    n = 2 * _TrainStream(load_index(root), "train", 8, None, 3, 1, 0, 100).batches_per_round  # two rounds
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*cmd, str(script), str(root), str(out), str(n)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    one = [b["index"].tolist() for b in islice(train_loader(root, 8, workers=1, seed=3), n)]
    assert [a + b for a, b in zip(ranks[0]["train"], ranks[1]["train"])] == one
    assert sorted(ranks[0]["eval"] + ranks[1]["eval"]) == list(range(50))
