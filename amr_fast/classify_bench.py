"""`amr-fast bench classify`: training images/s of the Manifold Mixup classifier, ERM vs input mixup vs manifold
mixup, in one process, alternating rounds.

The step is the one `amr-fast classify` runs (`amr_fast.classify`): random crop + flip on the device, the forward
pass of `mixup_forward` (erm: clean; mixup: the input mixed; manifold: the hidden state mixed at a layer drawn
from `mix_layers`, Verma et al. ICML 2019), `mixup_loss`, backward, SGD step. Models: PreActResNet18 at the
Fashion-MNIST presets' width (1/8, 1 channel) and at full width (the paper's CIFAR-10 network, 3 channels), batch
64, 32x32 synthetic inputs. Reported: img/s (wall and per CPU-second of this process; on a shared machine the
second is the steadier figure) and each mode's time per image over ERM's — manifold mixup costs one mixing op on
one hidden state and on the labels, so it should cost at most a few percent over ERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import torch

from amr_fast.classify import CLASSIFY_PRESETS, build_classifier, mixup_forward, mixup_loss, random_crop_flip
from amr_fast.precision import keep_freed_memory
from amr_fast.train_bench import _precisions, autocast_factory

MODES = ("erm", "mixup", "manifold")
MODELS = {"preactresnet18-w0.125": ("fashion-mnist", {}), "preactresnet18-w1": ("cifar10", {})}


def _step_fn(cfg, precision: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_classifier(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    autocast = autocast_factory(precision)

    def step(batch: dict) -> None:
        x = batch["x"].float() / 127.5 - 1
        x = random_crop_flip(x, cfg.crop_pad, cfg.flip, g)
        with autocast():
            logits, y_mix, _ = mixup_forward(model, x, batch["y"], cfg, g)
        loss = mixup_loss(logits, y_mix, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_modes(base, iters: int, rounds: int, precision: str = "fp32", batch: int = 64) -> dict:
    """`rounds` alternating rounds of `iters` steps for each mode on `base` (a ClassifyConfig)."""
    g = torch.Generator().manual_seed(0)
    # Different batches, as in training: SGD on one repeated batch drives ERM's weights towards denormal floats,
    # whose CPU arithmetic is several times slower, and the bench would time that instead of the step.
    pool = [
        {"x": torch.randint(0, 256, (batch, base.channels, 32, 32), generator=g, dtype=torch.uint8),
         "y": torch.randint(0, base.num_classes, (batch,), generator=g)}
        for _ in range(8)
    ]  # fmt: skip
    steps = {m: _step_fn(dataclasses.replace(base, mode=m), precision) for m in MODES}
    for step in steps.values():
        step(pool[0])  # warm-up
    wall = {m: 0.0 for m in MODES}
    cpu = {m: 0.0 for m in MODES}
    for r in range(rounds):
        for m, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(iters):
                step(pool[(r * iters + i) % len(pool)])
            wall[m] += time.perf_counter() - t0
            cpu[m] += time.process_time() - c0
    images = rounds * iters * batch
    out = {
        m: {"img_per_s": images / wall[m], "img_per_cpu_s": images / cpu[m], "vs_erm": cpu[m] / cpu["erm"]}
        for m in MODES
    }
    keys = ("arch", "width", "channels", "mix_layers")
    out["config"] = {k: getattr(base, k) for k in keys} | {"batch": batch, "precision": precision}
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--iters", type=int, default=4, help="steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating erm / mixup / manifold rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--precisions", default="auto", help="fp32,bf16 or auto (fp32, plus bf16 on native-bf16 CPUs)")


def main(args: argparse.Namespace) -> int:
    keep_freed_memory()  # as the trainers do on a CPU (amr_fast.run.Run)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "host": platform.node(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {}}  # fmt: skip
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        dataset, extra = MODELS[name]
        base = dataclasses.replace(CLASSIFY_PRESETS[f"{dataset}-manifold"], **extra)
        for precision in _precisions(args.precisions):
            r = results["models"][f"{name} {precision}"] = bench_modes(base, args.iters, args.rounds, precision)
            for m in MODES:
                p = r[m]
                print(
                    f"{name:<22} {precision:<5} {m:<9} {p['img_per_s']:7.1f} img/s {p['img_per_cpu_s']:7.1f} "
                    f"img/cpu-s  {p['vs_erm']:.3f}x ERM's time per image",
                    flush=True,
                )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0
