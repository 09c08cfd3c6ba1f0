"""`amr-fast classify`: Manifold Mixup / input mixup / ERM / cutout classifiers (Verma et al., ICML 2019).

One training step (the paper's section 2, eq. 2, with its public code's loss):
  1. draw the mixing layer k uniformly from `mix_layers` (manifold; {0: input, 1: after stage 1, 2: after stage 2}
     by default), k = 0 for input mixup;
  2. draw lam ~ Beta(alpha, alpha) per batch (or per example) and a partner permutation
     (`amr_fast.mixing.sample_beta_weights`, `sample_perm(2, B)`);
  3. run the stages before k on the clean batch, mix the hidden state there, `h_mix = lam h + (1 - lam) h[perm]`
     (`amr_fast.kernels.simplex_mix`), and run the remaining stages on h_mix;
  4. mix the one-hot targets with the same call, `y_mix = lam y + (1 - lam) y[perm]`;
  5. minimise BCE(softmax(logits), y_mix) (the paper's code) or the soft-target cross-entropy (`loss=ce`).
ERM and cutout (DeVries & Taylor 2017) use the same loss on the one-hot targets. Random crops with padding and
flips are done on the device. SGD with Nesterov momentum, the learning rate divided by `lr_gamma` at fixed image
counts. Evaluation: test error and error under white-box FGSM (Goodfellow et al. 2015; one signed-gradient step
of the training loss, as the paper's attack code) at each of `fgsm_eps` (in [0, 1] pixel units; 0.03 ~ 8/255 by
default, pass the value of the table you compare with), written to stats.jsonl.

Run directory (same conventions as `amr-fast train`): config.json, log.txt, stats.jsonl,
snapshot-<kimg>.safetensors (module "classifier"), state-<kimg>/ (Accelerate state; re-running the same command
resumes from the newest complete one). SIGTERM / SIGINT save a state and exit. A non-finite loss or gradient (on any
rank: one all-reduce of a flag per step, the step's only host sync, as `amr-fast train`) skips the optimiser step
and puts back the BatchNorm statistics of that forward pass; `max_nonfinite` such steps in a row stop the run with
an error. Neither a snapshot nor a resume state is ever written with non-finite weights.

stats.jsonl keys: kimg, time (s), img/s, lr, loss/cls, train/error (% vs the first source's label), nonfinite
(skipped steps since the start of the run), data/seen and data/skipped (samples the loaders delivered / skipped
as damaged since the start of the run, all ranks) per tick;
eval/test_error and eval/fgsm_error@<eps> (%, e.g. eval/fgsm_error@0.03) and time/eval (s) on ticks where an
evaluation ran. `amr-fast report RUN...` shows them (`classify_table`).

Commands:
  amr-fast classify --preset fashion-mnist-manifold --data /work/data/fashion-mnist-32 --outdir runs/fm-manifold
  amr-fast classify --preset cifar10-manifold --data DIR --outdir RUN                  # one GPU, bf16
  accelerate launch --multi_gpu --num_processes 8 -m amr_fast.cli classify --preset cifar10-manifold --data DIR
  ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m amr_fast.cli classify ...   # 2 CPUs
On a CPU shared with other jobs, OMP_NUM_THREADS=1 per process is several times faster than torch's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from amr_fast import kernels, mixing
from amr_fast.config import check_skip_limits

# ---------------------------------------------------------------------------------------------------------------
# Configuration and presets.

ARCHS = ("preactresnet18", "preactresnet34", "wrn28_10")
MODES = ("erm", "mixup", "manifold", "cutout")
LOSSES = ("bce", "ce")


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
    # data
    data: str = ""  # dataset dir made by `amr-fast shard` (holds index.json)
    img_size: int = 32  # must match the index (checked before training)
    channels: int = 3
    num_classes: int = 10
    eval_split: str = "test"  # split for the test error and FGSM figures
    # model
    arch: str = "preactresnet18"  # "preactresnet18", "preactresnet34", "wrn28_10"
    width: float = 1.0  # channel multiplier (1 = the paper's network)
    head_bn: bool = False  # PreActResNet: BN-ReLU before the pool (False = the public code: layer4 -> pool -> linear)
    norm_mean: tuple[float, ...] = ()  # per-channel input standardisation (pixel - mean) / std, pixels in [0, 1],
    norm_std: tuple[float, ...] = ()  # inside the network; () = [-1, 1] (the public code's SVHN: 0.5 / 0.5)
    dropout: float = 0.0  # WRN only
    # objective
    mode: str = "manifold"  # "erm", "mixup" (input), "manifold" (hidden states), "cutout"
    alpha: float = 2.0  # lam ~ Beta(alpha, alpha)
    mix_layers: tuple[int, ...] = (0, 1, 2)  # manifold: layer drawn uniformly from these (0 = input)
    per_example: bool = False  # one lam per example instead of one per batch (the paper)
    loss: str = "bce"  # "bce": BCE(softmax, y_mix) as the paper's code; "ce": soft-target cross-entropy
    cutout_size: int = 16  # cutout square side in pixels
    cutout_per_batch: bool = True  # one cutout square for the whole batch (the public code) or one per example
    crop_pad: int = 2  # random crop after padding by this many pixels (0 = off; the public load_data_subset: 2)
    flip: bool = True  # random horizontal flips
    # optimisation
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_steps_kimg: tuple[float, ...] = (25_000, 50_000, 75_000)  # lr *= lr_gamma once nimg passes each
    lr_gamma: float = 0.1
    batch: int = 100  # global batch (all ranks)
    # schedule (images, not epochs)
    total_kimg: float = 100_000
    tick_kimg: float = 50  # status line + stats.jsonl row
    snapshot_kimg: float = 5_000  # safetensors snapshot
    state_kimg: float = 5_000  # full Accelerate state (resume)
    eval_kimg: float = 5_000  # test error + FGSM (always at the end too)
    fgsm_eps: tuple[float, ...] = (0.03,)  # FGSM step sizes in [0, 1] pixel units (0.03 ~ 8/255)
    eval_max: int = 0  # evaluate on at most this many images per rank (0 = the whole split)
    # runtime
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16"
    impl: str = "auto"  # mixing kernel impl (amr_fast.kernels)
    max_nonfinite: int = 10  # non-finite losses/gradients in a row (each step skipped) before the run stops
    max_skipped: float = 0.01  # stop if more than this fraction of skip_window samples were unreadable (damage)
    skip_window: int = 10_000  # samples: the window max_skipped counts over

    def validate(self) -> ClassifyConfig:
        """Raise ValueError naming the field and the fix; returns self."""
        choices = {"arch": ARCHS, "mode": MODES, "loss": LOSSES, "precision": ("auto", "fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; use one of {', '.join(allowed)}")
        if self.impl not in kernels.IMPLS:
            raise ValueError(f"impl={self.impl!r} is unknown; use one of {', '.join(kernels.IMPLS)}")
        if self.mode in ("mixup", "manifold") and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 for mode={self.mode} (the paper: 1 for mixup, 2 for manifold)")
        if self.mode == "manifold" and (not self.mix_layers or min(self.mix_layers) < 0):
            raise ValueError("mix_layers must list layer indices >= 0 (0 = input), e.g. mix_layers=0,1,2")
        positive = ("batch", "total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "eval_kimg", "lr", "width")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.max_nonfinite < 1:
            raise ValueError(f"max_nonfinite must be >= 1 (got {self.max_nonfinite})")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes})")
        check_skip_limits(self)
        if any(e < 0 for e in self.fgsm_eps):
            raise ValueError(f"fgsm_eps must be >= 0 (pixel units in [0, 1]); got {self.fgsm_eps}")
        if (self.norm_mean or self.norm_std) and not len(self.norm_mean) == len(self.norm_std) == self.channels:
            raise ValueError(f"norm_mean and norm_std need {self.channels} values each (one per channel) or none")
        if self.mode == "cutout" and not 0 < self.cutout_size <= self.img_size:
            raise ValueError(f"cutout_size must lie in (0, img_size={self.img_size}]; got {self.cutout_size}")
        return self


def _paper_preset(dataset: str, mode: str, train_kimg: float, num_classes: int, flip: bool) -> ClassifyConfig:
    """The paper's CIFAR/SVHN setting (the public supervised/README.md commands): PreActResNet18, batch 100, 2000
    epochs, lr 0.1 / 10 at 500/1000/1500 epochs, weight decay 1e-4, Nesterov momentum 0.9; mixup alpha = 1,
    manifold alpha = 2; random crops with 2-pixel padding (+ flips on CIFAR); CIFAR inputs standardised per channel."""
    epoch = train_kimg
    norm = NORMALISATION.get(dataset, ((), ()))
    return ClassifyConfig(
        norm_mean=norm[0],
        norm_std=norm[1],
        channels=3,
        num_classes=num_classes,
        arch="preactresnet18",
        mode=mode,
        alpha={"mixup": 1.0, "manifold": 2.0}.get(mode, 1.0),
        flip=flip,
        total_kimg=2000 * epoch,
        lr_steps_kimg=(500 * epoch, 1000 * epoch, 1500 * epoch),
        tick_kimg=epoch,
        snapshot_kimg=50 * epoch,
        state_kimg=10 * epoch,
        eval_kimg=10 * epoch,
    )


# The public code's transforms.Normalize(mean, std) on [0, 1] pixels (SVHN: 0.5 / 0.5, i.e. our [-1, 1]).
NORMALISATION = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}


def _fashion_preset(mode: str) -> ClassifyConfig:
    """Small Fashion-MNIST classifier that finishes on a 2-core CPU: PreActResNet18 at width 1/8 on the 32x32
    shards (`amr-fast shard fashion-mnist --size 32`; pass data=DIR), lr / 10 at 50% and 75% of the budget."""
    total = 40.0
    return ClassifyConfig(
        channels=1,
        num_classes=10,
        arch="preactresnet18",
        width=0.125,
        mode=mode,
        alpha={"mixup": 1.0, "manifold": 2.0}.get(mode, 1.0),
        cutout_size=12,
        batch=64,
        total_kimg=total,
        lr_steps_kimg=(total * 0.5, total * 0.75),
        tick_kimg=4,
        snapshot_kimg=total / 2,
        state_kimg=total / 4,
        eval_kimg=total,
    )


# Images per epoch, in thousands, of the public code (load_data_subset with the README's --labels_per_class):
# CIFAR-10/100 50000 (5000 / 500 per class, valid 0); SVHN 62156 (at most 7325 per class of the 73257 train images).
CLASSIFY_PRESETS: dict[str, ClassifyConfig] = {
    **{f"cifar10-{m}": _paper_preset("cifar10", m, 50.0, 10, True) for m in MODES},
    **{f"cifar100-{m}": _paper_preset("cifar100", m, 50.0, 100, True) for m in MODES},
    **{f"svhn-{m}": _paper_preset("svhn", m, 62.156, 10, False) for m in MODES},
    **{f"fashion-mnist-{m}": _fashion_preset(m) for m in MODES},
}


def _parse_field(field: dataclasses.Field, text: str):
    kind = str(field.type)
    try:
        if kind.startswith("tuple"):
            inner = float if "float" in kind else int
            return tuple(inner(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
        if kind == "bool":
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        return {"int": int, "float": float}.get(kind, str)(text)
    except ValueError:
        raise ValueError(f"{field.name}={text!r} is not a valid {kind}") from None


def resolve_classify(preset: str, overrides: dict[str, str]) -> ClassifyConfig:
    """Start from CLASSIFY_PRESETS[preset], apply "field=value" overrides (parsed by the field's type), validate."""
    if preset not in CLASSIFY_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; `amr-fast classify --list-presets` lists them")
    fields = {f.name: f for f in dataclasses.fields(ClassifyConfig)}
    changes = {}
    for name, text in overrides.items():
        if name not in fields:
            raise ValueError(f"unknown field {name!r}; fields: {', '.join(fields)}")
        changes[name] = _parse_field(fields[name], text)
    return dataclasses.replace(CLASSIFY_PRESETS[preset], **changes).validate()


def config_from_dict(d: dict) -> ClassifyConfig:
    """Inverse of dataclasses.asdict (JSON lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(ClassifyConfig)}
    d = {"head_bn": True, **d}  # configs written before head_bn existed: their PreActResNets had the BN-ReLU head
    return ClassifyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


# ---------------------------------------------------------------------------------------------------------------
# Networks.


def build_classifier(cfg: ClassifyConfig) -> nn.Module:
    """The classifier of cfg.arch for cfg.channels x 32 x 32 inputs (a StagedClassifier)."""
    from amr_fast.models.preact_resnet import preact_resnet18, preact_resnet34
    from amr_fast.models.wrn import wrn28_10

    if cfg.arch == "wrn28_10":
        model = wrn28_10(cfg.channels, cfg.num_classes, cfg.width, cfg.dropout)
    else:
        build = {"preactresnet18": preact_resnet18, "preactresnet34": preact_resnet34}[cfg.arch]
        model = build(cfg.channels, cfg.num_classes, cfg.width, cfg.head_bn)
    if cfg.norm_mean or cfg.norm_std:
        model.set_input_norm(cfg.norm_mean, cfg.norm_std)
    if cfg.mode == "manifold" and max(cfg.mix_layers) >= model.num_mix_layers:
        raise ValueError(
            f"mix_layers={cfg.mix_layers} goes past {cfg.arch}'s {model.num_mix_layers} mixable positions; "
            f"use values in 0..{model.num_mix_layers - 1}"
        )
    return model


# ---------------------------------------------------------------------------------------------------------------
# Augmentation on the device (uint8 -> [-1, 1] has already happened).


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop of the image padded by `pad` black pixels, and a random horizontal flip.
    x [B, C, H, W] in [-1, 1]; offsets and flips are drawn on the CPU generator (no device sync)."""
    B, C, H, W = x.shape
    if pad > 0:
        off = torch.randint(0, 2 * pad + 1, (2, B), generator=generator).to(x.device)  # [2, B] (dy, dx)
        x_pad = F.pad(x, (pad, pad, pad, pad), value=-1.0)  # -1 = black, as padding the raw image with 0
        rows = (off[0, :, None] + torch.arange(H, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
        cols = (off[1, :, None] + torch.arange(W, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = x_pad[b, c, rows, cols]  # [B, C, H, W]
    if flip:
        do_flip = (torch.rand(B, generator=generator) < 0.5).to(x.device)
        x = torch.where(do_flip[:, None, None, None], x.flip(3), x)
    return x


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, per_batch: bool = False) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size x size square around a uniform random centre (clipped at the
    border) set to 0 (the mid-grey of [-1, 1]) in every example; per_batch: one square for the whole batch (the
    Manifold Mixup code applies its Cutout to the batch tensor), else one per example."""
    B, _, H, W = x.shape
    n = 1 if per_batch else B
    centre = torch.stack(
        [torch.randint(0, H, (n,), generator=generator), torch.randint(0, W, (n,), generator=generator)]
    ).expand(2, B)
    centre = centre.to(x.device)  # [2, B]
    lo = centre - size // 2
    ys = torch.arange(H, device=x.device)
    xs = torch.arange(W, device=x.device)
    in_y = (ys[None, :] >= lo[0, :, None]) & (ys[None, :] < lo[0, :, None] + size)  # [B, H]
    in_x = (xs[None, :] >= lo[1, :, None]) & (xs[None, :] < lo[1, :, None] + size)  # [B, W]
    hole = in_y[:, None, :, None] & in_x[:, None, None, :]  # [B, 1, H, W]
    return x.masked_fill(hole, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The mixing step and the loss.


def mixup_forward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ClassifyConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Forward pass of one training step: (logits [B, num_classes], targets [B, num_classes], mixed layer or None).

    erm / cutout: clean forward, one-hot targets. mixup: k = 0. manifold: k ~ U(cfg.mix_layers). Then lam ~
    Beta(alpha, alpha), perm a random partner per example; the hidden state at k and the one-hot targets are both
    mixed by `kernels.simplex_mix(., perm, w)` with w = [lam, 1 - lam]."""
    y_onehot = F.one_hot(y, cfg.num_classes).float()  # [B, num_classes]
    if cfg.mode in ("erm", "cutout"):
        return model(x), y_onehot, None
    B = x.shape[0]
    layers = (0,) if cfg.mode == "mixup" else cfg.mix_layers
    layer = layers[int(torch.randint(len(layers), (1,), generator=generator))]
    perm = mixing.sample_perm(2, B, generator, device=x.device)  # [2, B]: identity, partners
    w = mixing.sample_beta_weights(B, cfg.alpha, generator, per_example=cfg.per_example, device=x.device)  # [B, 2]
    mix = lambda h: kernels.simplex_mix(h, perm, w, impl=cfg.impl)  # h_mix = lam h + (1 - lam) h[perm]
    logits = model(x, mix_layer=layer, mix=mix)
    y_mix = mix(y_onehot)  # [B, num_classes]: lam on y, 1 - lam on y[perm]
    return logits, y_mix, layer


def mixup_loss(logits: torch.Tensor, y_mix: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """ "bce": mean over B x classes of BCE(softmax(logits), y_mix), the paper's code (nn.BCELoss on softmax);
    "ce": soft-target cross-entropy -sum_c y_mix log softmax. Computed in fp32 from log-probabilities."""
    logp = logits.float().log_softmax(dim=1)  # [B, classes]
    if kind == "ce":
        return -(y_mix * logp).sum(dim=1).mean()
    # log(1 - p) = log(-expm1(log p)); the clamp keeps it finite (and its gradient zero) when p rounds to 1.
    log1mp = torch.log((-torch.expm1(logp)).clamp_min(torch.finfo(torch.float32).tiny))
    return -(y_mix * logp + (1 - y_mix) * log1mp).mean()


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: test error and white-box FGSM.


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "bce") -> torch.Tensor:
    """x_adv = clip(x + eps' sign(grad_x L(model(x), y)), -1, 1) with eps' = 2 eps (eps in [0, 1] pixel units,
    our images span [-1, 1]); L is the training loss on the one-hot label, as the paper's attack code."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    target = F.one_hot(y, logits.shape[1]).float()
    (grad,) = torch.autograd.grad(mixup_loss(logits, target, loss), x)
    return (x + 2 * eps * grad.sign()).clamp(-1, 1).detach()


def evaluate(
    model: nn.Module, batches: Iterator[dict], cfg: ClassifyConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-example 0/1 errors on the clean images and under FGSM at each cfg.fgsm_eps, as float tensors
    {"eval/test_error": [n], "eval/fgsm_error@<eps>": [n]} (times 100: the mean is a percentage)."""
    was_training = model.training
    model.eval()
    wrong: dict[str, list[torch.Tensor]] = {"eval/test_error": []}
    wrong.update({f"eval/fgsm_error@{eps:g}": [] for eps in cfg.fgsm_eps})
    seen = 0
    for batch in batches:
        if cfg.eval_max and seen >= cfg.eval_max:
            break
        x = batch["x"].to(device).float() / 127.5 - 1
        y = batch["y"].to(device)
        seen += len(y)
        with torch.no_grad():
            wrong["eval/test_error"].append((model(x).argmax(1) != y).float() * 100)
        for eps in cfg.fgsm_eps:
            x_adv = fgsm(model, x, y, eps, cfg.loss)
            with torch.no_grad():
                wrong[f"eval/fgsm_error@{eps:g}"].append((model(x_adv).argmax(1) != y).float() * 100)
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0, device=device) for k, v in wrong.items()}


# ---------------------------------------------------------------------------------------------------------------
# The training loop.


def lr_at(cfg: ClassifyConfig, nimg: int) -> float:
    """Step schedule in images: lr * lr_gamma ** (number of lr_steps_kimg already passed)."""
    return cfg.lr * cfg.lr_gamma ** sum(nimg >= k * 1000 for k in cfg.lr_steps_kimg)


def _due(nimg_before: int, nimg: int, every_kimg: float) -> bool:
    step = max(1, int(round(every_kimg * 1000)))
    return nimg // step > nimg_before // step


def _install_stop_handlers(stop: dict) -> dict:
    """SIGTERM / SIGINT set stop["flag"] (the loop saves a state and exits); a second signal acts at once.
    Returns the previous handlers (none are installed outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum, frame):
        stop["flag"] = True
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, on_signal)
    return previous


def _sum_over_ranks(flags: torch.Tensor, world: int) -> list[float]:
    """`flags` (float [F]) summed over ranks (one all-reduce when world > 1), on the host: one sync."""
    if world > 1:
        torch.distributed.all_reduce(flags)
    return flags.tolist()


def step_flags(loss: torch.Tensor, params: list[torch.Tensor], stop: bool, world: int) -> tuple[bool, bool, bool]:
    """After the backward pass: (loss non-finite on some rank, gradient non-finite, stop requested on some rank),
    the same answer on every rank, from one all-reduce of three flags and one host sync (as `amr_fast.train`)."""
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    flags = torch.stack(
        [
            ~torch.isfinite(loss.detach()),
            ~torch.isfinite(grad_norm.to(loss.device)),
            torch.tensor(stop, device=loss.device),
        ]
    )
    loss_bad, grad_bad, stop_n = _sum_over_ranks(flags.float(), world)
    return loss_bad > 0, grad_bad > 0, stop_n > 0


def first_nonfinite(model: nn.Module, opt: torch.optim.Optimizer) -> str | None:
    """Name of the first floating tensor of `model`'s state dict or `opt`'s state (momentum) holding a non-finite
    value, else None. One host sync."""
    named = [(f"classifier.{k}", t) for k, t in model.state_dict().items()]
    named += [(f"optimizer.{k}", t) for s in opt.state.values() for k, t in s.items() if isinstance(t, torch.Tensor)]
    named = [(k, t.detach()) for k, t in named if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return next((k for (k, _), ok in zip(named, finite) if not ok), None)


def train_classifier(cfg: ClassifyConfig, outdir: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Train (or resume) the classifier of `cfg` in `outdir`; returns the run directory."""
    from accelerate import Accelerator

    from amr_fast import checkpoint, data, stats

    cfg.validate()
    if not cfg.data:
        raise ValueError("no dataset: pass --data DIR (a dir made by `amr-fast shard`, holding index.json)")
    index = data.load_index(cfg.data)
    data.check_index(index, cfg.img_size, cfg.channels, cfg.num_classes)
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "fp32") if cfg.precision == "auto" else cfg.precision
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")
    world = accelerator.num_processes
    if world != int(os.environ.get("WORLD_SIZE", 1)):
        raise ValueError(
            f"Accelerate runs {world} process(es) but WORLD_SIZE={os.environ.get('WORLD_SIZE')}; on CPU launch with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` (--cpu runs one process)"
        )
    if cfg.batch % world:
        raise ValueError(f"batch={cfg.batch} must be a multiple of the number of processes ({world})")
    rank, device = accelerator.process_index, accelerator.device
    run = Path(outdir)
    config_json = json.dumps(dataclasses.asdict(cfg), indent=2)
    old = run / "config.json"
    guard = {"max_skipped": cfg.max_skipped, "skip_window": cfg.skip_window}  # may change on resume
    if old.exists() and dataclasses.replace(config_from_dict(json.loads(old.read_text())), **guard) != cfg:
        raise ValueError(f"{run} holds a run with another config; use a new --outdir (or the same settings)")
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        old.write_text(config_json + "\n")
    accelerator.wait_for_everyone()

    def say(msg: str) -> None:
        if accelerator.is_main_process:
            (log or print)(msg)
            with open(run / "log.txt", "a") as f:
                f.write(msg + "\n")

    torch.manual_seed(cfg.seed)  # the same initial weights for every rank and every rerun of a seed
    model = build_classifier(cfg).to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    model, opt = accelerator.prepare(model, opt)
    # One CPU generator per rank for every draw (crops, flips, cutout, layer, lam, perm): no device syncs, and its
    # state is saved with the resume state so a resumed run draws exactly what the uninterrupted one would have.
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank)
    loop = {"nimg": 0, "nonfinite": 0, "nonfinite_total": 0}  # skipped steps: in a row, since the start
    state = checkpoint.find_latest_state(run)
    if state is not None:
        saved, tensors = checkpoint.load_state(accelerator, state)
        loop.update(saved)
        generator.set_state(tensors["generator"])
        say(f"resuming from {state} at {loop['nimg'] / 1000:g} kimg")
    nimg = int(loop["nimg"])

    def save_resume_state() -> None:
        """checkpoint.save_state, refused on every rank together if any weight or momentum is non-finite."""
        bad = first_nonfinite(accelerator.unwrap_model(model), opt)
        if _sum_over_ranks(torch.tensor([float(bad is not None)], device=device), world)[0]:
            raise ValueError(
                f"refusing to write a resume state at {nimg / 1000:g} kimg: {bad or 'a tensor on another rank'} is "
                f"non-finite (the run diverged); lower lr or use precision=fp32, and resume from an earlier state"
            )
        checkpoint.save_state(accelerator, run, nimg, loop, {"generator": generator.get_state()})

    batch_gpu = cfg.batch // world
    data_stats, data_base = {}, {k: loop.get(k, 0) for k in ("data/seen", "data/skipped")}  # the loader's counts
    batches = data.train_loader(
        cfg.data,
        batch_gpu,
        rank=rank,
        world_size=world,
        seed=cfg.seed,
        workers=cfg.workers,
        start_batch=nimg // cfg.batch,
        stats=data_stats,
        max_skipped=cfg.max_skipped,
        window=cfg.skip_window,
    )
    stats.reset()
    collector = stats.Collector(
        run / "stats.jsonl",
        device,
        rank,
        world,
        log=say,
        status_keys=["kimg", "loss/cls", "train/error", "eval/test_error", "lr", "img/s", "nonfinite", "data/skipped"],
    )
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{cfg.arch} width {cfg.width:g} ({n_params / 1e6:.2f} M params), mode {cfg.mode}, {world} process(es)")
    t_start, t_tick, nimg_tick = time.time(), time.time(), nimg
    model.train()
    params = list(model.parameters())
    # BatchNorm statistics move in the forward pass: kept from before each step, put back when the step is skipped.
    bn_stats = [b for b in model.buffers() if b.is_floating_point()]
    bn_stats_before = [b.clone() for b in bn_stats]
    row: dict = {}
    stop = {"flag": False}
    handlers = _install_stop_handlers(stop)
    stopped = False
    try:
        while nimg < cfg.total_kimg * 1000:
            batch = next(batches)
            x = batch["x"].to(device, non_blocking=True).float() / 127.5 - 1  # [B, C, H, W] in [-1, 1]
            y = batch["y"].to(device, non_blocking=True)
            x = random_crop_flip(x, cfg.crop_pad, cfg.flip, generator)
            if cfg.mode == "cutout":
                x = cutout(x, cfg.cutout_size, generator, per_batch=cfg.cutout_per_batch)
            lr = lr_at(cfg, nimg)
            for group in opt.param_groups:
                group["lr"] = lr
            if bn_stats:
                torch._foreach_copy_(bn_stats_before, bn_stats)
            with accelerator.autocast():
                logits, y_mix, _ = mixup_forward(model, x, y, cfg, generator)
            loss = mixup_loss(logits, y_mix, cfg.loss)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            loss_bad, grad_bad, stop_any = step_flags(loss, params, stop["flag"], world)
            if not (loss_bad or grad_bad):
                opt.step()
                loop["nonfinite"] = 0
                stats.report("loss/cls", loss)
                stats.report("train/error", (logits.detach().argmax(1) != y).float() * 100)
            else:  # skipped: weights, momentum and BatchNorm statistics stay as they were before the step
                if bn_stats:
                    torch._foreach_copy_(bn_stats, bn_stats_before)
                loop["nonfinite"] += 1
                loop["nonfinite_total"] += 1
                if loop["nonfinite"] >= cfg.max_nonfinite:
                    raise ValueError(
                        f"{loop['nonfinite']} non-finite {'losses' if loss_bad else 'gradients'} in a row at "
                        f"{nimg / 1000:g} kimg (max_nonfinite={cfg.max_nonfinite}); the run diverged: lower lr or use "
                        f"precision=fp32 in a new --outdir; the states and snapshots already in {run} are finite"
                    )
            nimg_before, nimg = nimg, nimg + cfg.batch
            loop["nimg"] = nimg
            done = nimg >= cfg.total_kimg * 1000
            if done or _due(nimg_before, nimg, cfg.eval_kimg):
                t_eval = time.time()
                net = accelerator.unwrap_model(model)
                test = data.eval_loader(cfg.data, cfg.eval_split, batch_gpu, rank=rank, world_size=world, workers=0)
                for name, values in evaluate(net, test, cfg, device).items():
                    stats.report(name, values)
                stats.report("time/eval", time.time() - t_eval)
            if done or _due(nimg_before, nimg, cfg.tick_kimg):
                now = time.time()
                loop.update(data.stream_counts(data_stats, data_base, device, world))  # samples read / skipped
                row = collector.tick(
                    {
                        "kimg": nimg / 1000,
                        "time": round(now - t_start, 2),
                        "img/s": (nimg - nimg_tick) / max(now - t_tick, 1e-9),
                        "lr": lr,
                        "nonfinite": loop["nonfinite_total"],
                        "data/seen": loop["data/seen"],
                        "data/skipped": loop["data/skipped"],
                    }
                )
                t_tick, nimg_tick = time.time(), nimg
                if isinstance(row.get("eval/test_error"), (int, float)):  # the public code reports the best epoch
                    loop["best_test_error"] = min(row["eval/test_error"], loop.get("best_test_error") or 100.0)
            if done or _due(nimg_before, nimg, cfg.snapshot_kimg):
                if accelerator.is_main_process:
                    path = run / f"snapshot-{checkpoint.kimg_tag(nimg)}.safetensors"
                    net = accelerator.unwrap_model(model)
                    checkpoint.save_snapshot(path, {"classifier": net}, dataclasses.asdict(cfg), nimg / 1000)
            saved = done or _due(nimg_before, nimg, cfg.state_kimg)
            if saved:
                save_resume_state()
            # A signal stops after this step on every rank together (its flag rides on the step's all-reduce).
            if stop_any and not done:
                if not saved:
                    save_resume_state()
                say(f"stopped by a signal at {nimg / 1000:g} kimg; state saved; re-run the same command to resume")
                stopped = True
                break
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stopped:
        return run
    figures = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("eval/"))
    if loop.get("best_test_error") is not None:
        figures += f"; best eval/test_error over the evaluations {loop['best_test_error']:.2f}"
    say(f"done: {nimg / 1000:g} kimg in {run}" + (f"; {figures}" if figures else " (nothing left to train)"))
    return run


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ClassifyConfig]:
    """A classifier snapshot (snapshot-<kimg>.safetensors of `amr-fast classify`) -> (model in eval mode, cfg)."""
    from amr_fast import checkpoint

    states, meta = checkpoint.load_snapshot(path)
    cfg = config_from_dict(meta["config"])
    model = build_classifier(cfg)
    checkpoint.load_state_dicts({"classifier": model}, states)
    return model.to(device).eval(), cfg


# ---------------------------------------------------------------------------------------------------------------
# Results table (shown by `amr-fast report` for classifier runs).

MODE_ORDER = {m: i for i, m in enumerate(("erm", "cutout", "mixup", "manifold"))}


def _mode_label(cfg: dict) -> str:
    mode = cfg.get("mode", "?")
    if mode == "mixup":
        return f"input mixup (alpha={cfg.get('alpha'):g})"
    if mode == "manifold":
        layers = ",".join(str(k) for k in cfg.get("mix_layers", ()))
        return f"Manifold Mixup (alpha={cfg.get('alpha'):g}, layers {layers})"
    if mode == "cutout":
        return f"cutout ({cfg.get('cutout_size')} px)"
    return "ERM (no mixup)"


def classify_table(runs: list) -> str:
    """Markdown table of classifier runs (`amr_fast.eval.report.Run` objects of `amr-fast classify` run dirs):
    rows = mode, columns = dataset x (test error, FGSM error at each eps), cells = mean ± std over seeds of the
    last evaluation of each run (%), followed by one line saying what the cells are."""
    from amr_fast.eval.report import _fmt

    def last(run, key: str) -> float | None:  # "best:<key>": the lowest over the run's evaluations
        vals = [
            r[key.removeprefix("best:")] for r in run.rows if isinstance(r.get(key.removeprefix("best:")), (int, float))
        ]
        return (min(vals) if key.startswith("best:") else vals[-1]) if vals else None

    def kimg(run) -> str:
        return f"{run.rows[-1]['kimg']:g}" if run.rows else "0"

    groups: dict[tuple, list] = {}
    for run in runs:
        arch = f"{run.cfg.get('arch')} width {run.cfg.get('width', 1):g}"
        key = (MODE_ORDER.get(run.cfg.get("mode"), 9), _mode_label(run.cfg), arch, kimg(run))
        groups.setdefault(key, []).append(run)
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    fgsm_keys = sorted({k for r in runs for row in r.rows for k in row if "fgsm_error" in k})
    metrics = ["eval/test_error", "best:eval/test_error"] + fgsm_keys
    names = {"eval/test_error": "test error", "best:eval/test_error": "best test error"}
    names |= {m: f"FGSM eps={m.split('@')[1]} error" for m in fgsm_keys}
    columns = [(ds, m) for ds in datasets for m in metrics]
    n_all = max(len(g) for g in groups.values())
    head = ["mode", "arch", "kimg"] + [f"{ds} {names[m]}" for ds, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for (_, label, arch, k), group in sorted(groups.items()):
        cells = []
        for ds, m in columns:
            vals = [v for r in group if r.dataset == ds and (v := last(r, m)) is not None]
            cells.append(_fmt(vals, scale=1.0, digits=2, n_all=n_all))
        lines.append("| " + " | ".join([label, str(arch), k] + cells) + " |")
    note = (
        f"\nCells: classification error (%) on the test split, clean and under white-box FGSM (eps in [0, 1] pixel "
        f"units), at the end of training; best test error: the lowest over the run's evaluations (the figure the "
        f"Manifold Mixup code reports); mean ± std over seeds (n = {n_all}; [n] when fewer).\n"
    )
    return "\n".join(lines) + "\n" + note


# ---------------------------------------------------------------------------------------------------------------
# CLI.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="fashion-mnist-manifold", help="starting configuration (--list-presets)")
    parser.add_argument("--outdir", default=None, help="run directory (default runs/<preset>); re-run to resume")
    parser.add_argument(
        "--data",
        default=None,
        help="dataset made by `amr-fast shard`: a directory, an http(s):// directory URL or 'pipe:CMD {}' ({} = each "
        "file's name, e.g. 'pipe:aws s3 cp s3://bucket/fm32/{} -'); same as data=...",
    )
    fields = ", ".join(f.name for f in dataclasses.fields(ClassifyConfig))
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="field=value",
        help=f"config overrides, e.g. width=0.25 mix_layers=0,1,2 (tuples comma-separated); fields: {fields}",
    )
    parser.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config JSON and exit")


def main(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, cfg in CLASSIFY_PRESETS.items():
            print(f"{name:<26} {cfg.arch} width {cfg.width:g}, {cfg.mode}, {cfg.total_kimg:g} kimg")
        return 0
    from amr_fast.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.data is not None:
        overrides["data"] = args.data
    cfg = resolve_classify(args.preset, overrides)
    if int(os.environ.get("RANK", 0)) == 0:  # one copy under accelerate launch / torchrun
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
    if args.dry_run:
        return 0
    train_classifier(cfg, args.outdir or f"runs/{args.preset}")
    return 0
