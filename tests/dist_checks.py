"""Test helper (not a test), run under torchrun by tests/test_distributed.py: on 2 gloo ranks, the global-batch
mixing of both trainers against a one-process reference computed on every rank.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_checks.py OUT.json CONFIG.json

Writes (rank 0) OUT.json: per check, the largest relative difference between the ranks' result and the reference;
the gather and AMR checks run twice, with the step's collectives through gloo and through shared memory (`comm`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from amr_fast import classify, comm, globalbatch
from amr_fast.config import ClassifyConfig
from amr_fast.losses import AMRLoss
from amr_fast.models import build_classifier, build_networks
from amr_fast.overrides import from_dict


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def gathered(t: torch.Tensor) -> torch.Tensor:
    return globalbatch.gather_rows(t.detach().contiguous(), dist.get_world_size())


def check_gather_gradient(rank: int, world: int) -> float:
    """d/dx of every rank's loss through gather_rows, averaged as DDP averages gradients = the 1-process gradient
    of the mean loss, row block by row block."""
    g = torch.Generator().manual_seed(0)
    x_all, w_all = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g)
    perm = torch.randperm(8, generator=g)
    ref = x_all.clone().requires_grad_(True)
    (w_all * ref[perm].sin()).sum().backward()  # one process: the loss of the whole batch
    x = x_all[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    h = globalbatch.gather_rows(x, world)[perm].sin()
    (globalbatch.local_rows(w_all * h, rank, world).sum() * world).backward()  # this rank's share of the loss
    return rel(gathered(x.grad / world), ref.grad)  # x.grad: every rank's loss summed, i.e. world x the mean


def check_amr(cfg, rank: int, world: int) -> dict[str, float]:
    """AMRLoss on 2 ranks x 4 rows = on 1 process x 8 rows: the mixes and the averaged gradients."""
    torch.manual_seed(0)
    nets = build_networks(cfg)
    torch.manual_seed(0)
    ref_nets = build_networks(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, cfg.channels, cfg.img_size, cfg.img_size, generator=g) * 2 - 1
    y = torch.arange(8) % cfg.num_classes
    out = {}
    mine = slice(rank * 4, rank * 4 + 4)
    for name, loss, rows in (("ref", AMRLoss(cfg, ref_nets, "cpu"), slice(None)),
                             ("dist", AMRLoss(cfg, nets, "cpu", rank, world), mine)):  # fmt: skip
        loss.begin(x[rows], y[rows], True, globalbatch.draws(0, 5, "amr/0"))
        mixes = torch.cat([t for t in (loss._fwd.x_mix, loss._fwd.x_cmix) if t is not None], 1)
        loss.accumulate_gradients("ae")
        grads = [p.grad for n in ("ae", "mixer") if n in loss.nets for p in loss.nets[n].parameters()]
        out[name] = (mixes.detach(), [torch.zeros(()) if gr is None else gr.clone() for gr in grads])
    mixes, grads = out["dist"]
    for gr in grads:
        dist.all_reduce(gr)
        gr /= world
    flat = lambda gs: torch.cat([gr.flatten() for gr in gs])  # noqa: E731
    return {"amr_mix": rel(gathered(mixes), out["ref"][0]), "amr_grad": rel(flat(grads), flat(out["ref"][1]))}


def check_classify(rank: int, world: int) -> dict[str, float]:
    """mixup_forward (manifold, per-example lam), crops, flips and cutout: each rank's rows of the 1-process step."""
    cfg = ClassifyConfig(data="x", arch="preactresnet18", width=0.0625, num_classes=10, channels=1, img_size=16,
                         mode="manifold", per_example=True).validate()  # fmt: skip
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()  # BatchNorm on its running statistics: the same on every rank
    x_all = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y_all = torch.arange(8) % 10
    rows = slice(rank * 4, rank * 4 + 4)
    res = {}
    for name, (x, y, where) in {"ref": (x_all, y_all, {}), "dist": (x_all[rows], y_all[rows],
                                                                    dict(rank=rank, world=world))}.items():  # fmt: skip
        g = globalbatch.draws(0, 3, "classify")
        x = classify.cutout(classify.random_crop_flip(x, 2, True, g, **where), 4, g, **where)
        logits, y_mix, _ = classify.mixup_forward(model, x, y, cfg, g, **where)
        res[name] = (x, logits.detach(), y_mix)
    return {f"classify_{k}": rel(gathered(res["dist"][i]), res["ref"][i]) for i, k in enumerate(("x", "logits", "y"))}


def main() -> None:
    out, cfg_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    os.environ["AMR_FAST_SHM"] = "0"  # first pass: gloo
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    base = from_dict(json.loads(open(cfg_path).read()))
    result = {**check_classify(rank, world)}
    for path in ("gloo", "shm"):  # the step's collectives through torch.distributed, then through shared memory
        assert comm.setup(rank, world, torch.device("cpu")) == (path == "shm" and comm.supported())
        result[f"{path}/gather_grad"] = check_gather_gradient(rank, world)
        for label, kw in {"class": dict(mixer="class", disc_mix="pixel"), "mixup3": dict(mixer="mixup", k=3, beta=0.5),
                          "bernoulli": dict(mixer="bernoulli", per_example_mask=False)}.items():  # fmt: skip
            cfg = dataclasses.replace(base, **kw)
            result.update({f"{path}/{label}/{k}": v for k, v in check_amr(cfg, rank, world).items()})
        os.environ.pop("AMR_FAST_SHM", None)
    comm.close()
    dist.barrier()
    dist.destroy_process_group()
    # the group's threads must be gone now: one left to the interpreter's exit aborts the process (kernels/ops.py)
    tasks = Path("/proc/self/task")
    threads = [(t / "comm").read_text() for t in tasks.iterdir()] if tasks.exists() else []
    result["gloo_threads_left"] = sum("gloo" in name for name in threads)
    if rank == 0:
        json.dump(result, open(out, "w"))


if __name__ == "__main__":
    main()
