"""Test helper (not a test), run under torchrun by tests/test_distributed.py: `amr_fast.comm`'s shared-memory
collectives on 2 gloo ranks against torch.distributed's, then a rank that dies while the other waits.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/comm_checks.py OUT.json

Rank 0 writes OUT.json: {"mismatches": [...], "segment_files": [...], "error": the message rank 0 got when rank 1
ended in a collective, "waited_s": how long it took to say so}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from amr_fast import comm


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    before = set(Path("/dev/shm").glob("amr-fast-*"))
    assert comm.setup(rank, world, torch.device("cpu")), "the shared-memory path did not come up"
    segment_files = [str(p) for p in set(Path("/dev/shm").glob("amr-fast-*")) - before]  # removed once mapped
    mismatches = []
    for slot in (comm._segment.slot, 64):  # 64 bytes: every collective below goes in many chunks
        comm._segment.slot = slot
        g = torch.Generator().manual_seed(rank)
        for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.int64):
            for shape in ((1,), (3, 5), (7, 2, 3), (1000,)):
                x = (torch.randn(shape, generator=g) * 100).to(dtype)
                want = [torch.empty_like(x) for _ in range(world)]
                dist.all_gather(want, x)
                if not torch.equal(comm.all_gather(x), torch.cat(want)):
                    mismatches.append(f"all_gather {dtype} {shape} slot {slot}")
                mine, theirs = x.clone(), x.clone()
                dist.all_reduce(theirs)
                if comm.all_reduce(mine) is not mine or not torch.equal(mine, theirs):
                    mismatches.append(f"all_reduce {dtype} {shape} slot {slot}")
        strided = torch.arange(12.0).view(3, 4).t()  # not contiguous: gathered as its values
        want = [torch.empty(4, 3) for _ in range(world)]
        dist.all_gather(want, strided.contiguous())
        if not torch.equal(comm.all_gather(strided), torch.cat(want)):
            mismatches.append(f"all_gather of a transposed tensor, slot {slot}")
    dist.barrier()
    if rank == 1:
        os._exit(0)  # dies without a word: rank 0 waits for it in the next collective
    t0, error = time.monotonic(), None
    try:
        comm.all_reduce(torch.ones(4))
    except RuntimeError as e:
        error = str(e)
    result = {"mismatches": mismatches, "segment_files": segment_files, "error": error,
              "waited_s": time.monotonic() - t0}  # fmt: skip
    json.dump(result, open(sys.argv[1], "w"))
    os._exit(0)  # the process group's peer is gone: no teardown


if __name__ == "__main__":
    main()
