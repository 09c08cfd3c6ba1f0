"""`amr-fast bench classify`: training images/s of the Manifold Mixup classifier, ERM vs input mixup vs manifold
mixup, in one process, alternating rounds.

The step is the one `amr-fast classify` runs (`amr_fast.classify`): random crop + flip on the device, the forward
pass of `mixup_forward` (erm: clean; mixup: the input mixed; manifold: the hidden state mixed at a layer drawn
from `mix_layers`, Verma et al. ICML 2019), `mixup_loss`, backward, SGD step. Models: PreActResNet18 at the
Fashion-MNIST presets' width (1/8, 1 channel) and at full width (the paper's CIFAR-10 network, 3 channels), batch
64, 32x32 synthetic inputs. Reported: img/s (wall and per CPU-second of this process; on a shared machine the
second is the steadier figure) and each mode's time per image over ERM's — manifold mixup costs one mixing op on
one hidden state and on the labels, so it should cost at most a few percent over ERM.

`--eval` times instead what the paper presets' evaluation cadence costs (`bench_eval`): the training step against
the evaluation the trainer runs (`amr_fast.classify.evaluate` in eval mode, predictions under autocast, batches
of `eval_batch`): the clean test error (no grad; every epoch) and the clean pass plus FGSM (one backward; every 10
epochs), as a fraction of an epoch's training time for CIFAR's 10,000 test and 50,000 training images. `--device`
runs either on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from amr_fast.bench.common import names, precisions, setup, write_json
from amr_fast.classify import build_classifier, evaluate, make_sgd, mixup_forward, mixup_loss, random_crop_flip
from amr_fast.precision import autocast
from amr_fast.presets import CLASSIFY_PRESETS

MODES = ("erm", "mixup", "manifold")
MODELS = {
    "preactresnet18-w0.125": ("fashion-mnist", {}),
    "preactresnet18-w1": ("cifar10", {}),
    "wrn28_10-w1": ("cifar10-wrn", {}),
}
DEFAULT_MODELS = ("preactresnet18-w0.125", "preactresnet18-w1")
TEST_IMAGES, EPOCH_IMAGES = 10_000, 50_000  # CIFAR: one evaluation, one epoch of training


def _step_fn(cfg, precision: str, seed: int = 0, device: str = "cpu"):
    """(one training step on a uint8 batch, the model)."""
    torch.manual_seed(seed)
    model = build_classifier(cfg).to(device)
    model.train()
    opt = make_sgd(model, cfg, torch.device(device))  # the trainer's optimiser
    g = torch.Generator().manual_seed(seed)
    amp = autocast(precision, torch.device(device).type)

    def step(batch: dict) -> None:
        x = batch["x"].to(device).float() / 127.5 - 1
        x = random_crop_flip(x, cfg.crop_pad, cfg.flip, g)
        with amp():
            logits, y_mix, _ = mixup_forward(model, x, batch["y"].to(device), cfg, g)
        loss = mixup_loss(logits, y_mix, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, model


def _batches(cfg, n: int, batch: int) -> list[dict]:
    """`n` synthetic uint8 batches (different ones: see bench_modes)."""
    g = torch.Generator().manual_seed(0)
    return [
        {"x": torch.randint(0, 256, (batch, cfg.channels, 32, 32), generator=g, dtype=torch.uint8),
         "y": torch.randint(0, cfg.num_classes, (batch,), generator=g)}
        for _ in range(n)
    ]  # fmt: skip


def _seconds(fn, device: str) -> float:
    """Wall seconds of fn(), the device's queued work included."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_modes(base, iters: int, rounds: int, precision: str = "fp32", batch: int = 64) -> dict:
    """`rounds` alternating rounds of `iters` steps for each mode on `base` (a ClassifyConfig)."""
    # Different batches, as in training: SGD on one repeated batch drives ERM's weights towards denormal floats,
    # whose CPU arithmetic is several times slower, and the bench would time that instead of the step.
    pool = _batches(base, 8, batch)
    steps = {m: _step_fn(dataclasses.replace(base, mode=m), precision)[0] for m in MODES}
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


def bench_eval(base, precision: str, device: str = "cpu", iters: int = 4, eval_iters: int = 2) -> dict:
    """img/s of `iters` training steps of `base` (batch base.batch, its mode) and of `eval_iters` batches of
    base.eval_batch through `evaluate` without and with FGSM (base.fgsm_eps), after one untimed call of each;
    per_epoch_test / per_epoch_fgsm: an evaluation's time over an epoch's training time for CIFAR's 10,000 test /
    50,000 training images (FGSM: divided by the 10 epochs between attacks of the paper presets)."""
    step, model = _step_fn(base, precision, device=device)
    train, test = _batches(base, 4, base.batch), _batches(base, 2, base.eval_batch)
    amp = autocast(precision, torch.device(device).type)

    def run_eval(attack: bool, n: int) -> None:
        evaluate(model, iter([test[i % len(test)] for i in range(n)]), base, torch.device(device), attack, amp)

    def run_train(n: int) -> None:
        for i in range(n):
            step(train[i % len(train)])

    run_train(1)  # warm-up (cuDNN autotuning, the allocator)
    run_eval(False, 1)
    run_eval(True, 1)
    rate = {
        "train_img_per_s": iters * base.batch / _seconds(lambda: run_train(iters), device),
        "test_img_per_s": eval_iters * base.eval_batch / _seconds(lambda: run_eval(False, eval_iters), device),
        "test_fgsm_img_per_s": eval_iters * base.eval_batch / _seconds(lambda: run_eval(True, eval_iters), device),
    }
    epoch_s = EPOCH_IMAGES / rate["train_img_per_s"]
    rate["per_epoch_test"] = TEST_IMAGES / rate["test_img_per_s"] / epoch_s
    rate["per_epoch_fgsm"] = TEST_IMAGES / rate["test_fgsm_img_per_s"] / epoch_s / 10
    keys = ("arch", "width", "mode", "batch", "eval_batch", "fgsm_eps", "fgsm_units")
    return rate | {"config": {k: getattr(base, k) for k in keys} | {"precision": precision, "device": device}}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated subset of {', '.join(MODELS)}"
    )
    parser.add_argument("--iters", type=int, default=4, help="steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating erm / mixup / manifold rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--precisions", default="auto", help="fp32,bf16 or auto (fp32, plus bf16 on native-bf16 CPUs)")
    parser.add_argument("--eval", action="store_true", help="time the evaluation cadence instead (bench_eval)")
    parser.add_argument("--device", default="cpu", help="--eval only: cpu or cuda")


def main(args: argparse.Namespace) -> int:
    results = setup(args) | {"models": {}}
    for name in names(args.models, MODELS):
        dataset, extra = MODELS[name]
        base = dataclasses.replace(CLASSIFY_PRESETS[f"{dataset}-manifold"], **extra)
        for precision in precisions(args.precisions):
            if args.eval:
                r = results["models"][f"{name} {precision}"] = bench_eval(base, precision, args.device, args.iters)
                print(
                    f"{name:<22} {precision:<5} train {r['train_img_per_s']:8.1f} img/s, test error "
                    f"{r['test_img_per_s']:8.1f} img/s ({100 * r['per_epoch_test']:.1f} % of an epoch), + FGSM "
                    f"{r['test_fgsm_img_per_s']:8.1f} img/s ({100 * r['per_epoch_fgsm']:.1f} % of an epoch at 1 in 10)",
                    flush=True,
                )
                continue
            r = results["models"][f"{name} {precision}"] = bench_modes(base, args.iters, args.rounds, precision)
            for m in MODES:
                p = r[m]
                print(
                    f"{name:<22} {precision:<5} {m:<9} {p['img_per_s']:7.1f} img/s {p['img_per_cpu_s']:7.1f} "
                    f"img/cpu-s  {p['vs_erm']:.3f}x ERM's time per image",
                    flush=True,
                )
    write_json(args.out, results)
    return 0
