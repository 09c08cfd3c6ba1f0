"""Test helper (not a test): run `amr_fast.train.training_loop` (or with --classify `amr_fast.classify.
train_classifier`) from a JSON config in its own process, so tests can kill it, signal it, or launch it under
torchrun. Used by tests/test_train.py and tests/test_classify.py.

    python tests/train_driver.py CONFIG.json OUTDIR [--classify] [--sleep S] [--fixed-batches] [--dump-weights DIR]

--classify       the config is a ClassifyConfig: train the classifier (only --sleep applies)
--sleep S        pause S seconds after every iteration (gives a test time to signal a run mid-training)
--fixed-batches  replace the shard stream by deterministic global batches: iteration n's global batch is drawn
                 from a generator seeded by n and each rank gets its rows (`rank_rows`), as the shard stream does
--dump-weights   after training, every rank writes its modules to DIR/rank<r>.safetensors, and the gradients the
                 optimisers saw (after the cross-rank average) to DIR/grads<r>.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def fixed_train_loader(root, batch_size, *, rank=0, world_size=1, micro=0, seed=0, start_batch=0, **_):
    from amr_fast.data import load_index
    from amr_fast.data.loader import rank_rows

    index = load_index(root)
    c, s = index["channels"], index["image_size"]
    rows = rank_rows(batch_size, world_size, rank, micro)
    n = start_batch
    while True:
        g = torch.Generator().manual_seed(10_000 + n)
        x = torch.randint(0, 256, (batch_size, c, s, s), generator=g, dtype=torch.uint8)
        y = torch.randint(0, index["num_classes"], (batch_size,), generator=g)
        yield {"x": x, "y": y} if rows is None else {"x": x[rows], "y": y[rows]}
        n += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("outdir")
    parser.add_argument("--classify", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fixed-batches", action="store_true")
    parser.add_argument("--dump-weights", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.classify:
        classify_main(args)
        return

    import amr_fast.data
    import amr_fast.models
    from amr_fast import train
    from amr_fast.overrides import from_dict

    if args.sleep:
        step = train.train_iteration

        def slow(*a, **kw):
            out = step(*a, **kw)
            time.sleep(args.sleep)
            return out

        train.train_iteration = slow
    if args.fixed_batches:
        amr_fast.data.train_loader = fixed_train_loader
    built = {}
    build = amr_fast.models.build_networks

    def capture(cfg):
        built.update(build(cfg))
        return built

    amr_fast.models.build_networks = capture
    grads: dict[str, torch.Tensor] = {}
    reduce = train._reduce_gradients

    def record(params, flags, world_size):
        out = reduce(params, flags, world_size)
        step = len({k.split("/")[0] for k in grads})
        for i, p in enumerate(params):
            grads[f"{step}/{i}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        return out

    train._reduce_gradients = record
    cfg = from_dict(json.loads(open(args.config).read()))
    summary = train.training_loop(cfg, args.outdir, log=print)
    if args.dump_weights:
        from safetensors.torch import save_file

        rank = int(os.environ.get("RANK", "0"))
        tensors = {
            f"{m}.{k}": v.detach().cpu().contiguous() for m, net in built.items() for k, v in net.state_dict().items()
        }
        save_file(tensors, os.path.join(args.dump_weights, f"rank{rank}.safetensors"))
        save_file(grads, os.path.join(args.dump_weights, f"grads{rank}.safetensors"))
    print("SUMMARY " + json.dumps(summary))


def classify_main(args: argparse.Namespace) -> None:
    from amr_fast import classify
    from amr_fast.config import ClassifyConfig
    from amr_fast.overrides import from_dict

    if args.sleep:
        step = classify.Step.__call__

        def slow(self, *a, **kw):
            out = step(self, *a, **kw)
            time.sleep(args.sleep)
            return out

        classify.Step.__call__ = slow
    cfg = from_dict(json.loads(open(args.config).read()), ClassifyConfig)
    classify.train_classifier(cfg, args.outdir, log=print)
    print("SUMMARY " + json.dumps({"done": True}))


if __name__ == "__main__":
    main()
