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
counts. Evaluation: test error every `eval_kimg` (the paper presets: every epoch, as the public main.py) and error
under white-box FGSM (Goodfellow et al. 2015; one signed-gradient step of the training loss, as the paper's attack
code) at each of `fgsm_eps` every `fgsm_kimg`, both at the end too, in batches of `eval_batch`, predictions under
the run's autocast and the attack's gradient in fp32, written to stats.jsonl. `fgsm_units=normalised` (the paper
presets) steps eps on the standardised input (pixel - mean) / std without clipping, as the public attack; `pixel`
steps eps in [0, 1] pixels and clamps.

The harness (`amr_fast.run`: run directory, resume, signals, the tick with its snapshot and state, non-finite
steps, fp16 loss scaling) is shared with `amr-fast train`; this file holds the classifier, its step, evaluation and
outputs (`_outputs`). A skipped step also puts back the BatchNorm statistics of its forward pass; no snapshot or
resume state is ever written with non-finite weights.

stats.jsonl keys, besides the harness's (`Run.tick`): lr, loss/cls, train/error (% vs the first source's label)
every tick; eval/test_error and time/eval (s) on ticks where an evaluation ran, eval/fgsm_error@<eps> (%, e.g.
eval/fgsm_error@0.03) on those where FGSM ran. `amr-fast report RUN...` shows them.

Commands:
  amr-fast classify --preset fashion-mnist-manifold --data data/fashion-mnist-32 --outdir runs/fm-manifold
  amr-fast classify --preset cifar10-manifold --data DIR --outdir RUN                  # one GPU, bf16
  accelerate launch --multi_gpu --num_processes 8 -m amr_fast.cli classify --preset cifar10-manifold --data DIR
  amr-fast classify --preset fashion-mnist-manifold ...                 # a CPU: one process per core (procs=N)
Partners, lam, crops and cutout are drawn over the global batch (`amr_fast.globalbatch`); BatchNorm statistics
are per process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from amr_fast import checkpoint, data, globalbatch, kernels, mixing, progress, stats
from amr_fast import run as run_lib
from amr_fast.config import ClassifyConfig
from amr_fast.models import build_classifier
from amr_fast.overrides import from_dict
from amr_fast.presets import CLASSIFY_PRESETS
from amr_fast.run import (
    LoopState,
    Run,
    config_from_args,
    configure_run_parser,
    cpu_processes,
    due,
    exit_status,
    start_processes,
    sum_over_ranks,
)

STATUS_KEYS = ("kimg", "loss/cls", "train/error", "eval/test_error", "lr", "img/s", "nonfinite", "data/skipped")


@dataclasses.dataclass
class ClassifyState(LoopState):
    """The classifier loop's state: LoopState and the best test error over the evaluations so far."""

    best_test_error: float | None = None  # the figure the Manifold Mixup code reports (the best epoch)


# ---------------------------------------------------------------------------------------------------------------
# Augmentation on the device (uint8 -> [-1, 1] has already happened).


def random_crop_flip(
    x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """Per-example random crop of the image padded by `pad` black pixels, and a random horizontal flip.
    x [B, C, H, W] in [-1, 1], this rank's rows of a global batch of world x B; offsets and flips are drawn for
    the global batch on the CPU generator (no device sync), each rank keeps its rows."""
    B, C, H, W = x.shape
    mine = lambda t: globalbatch.local_rows(t, rank, world)  # noqa: E731
    if pad > 0:
        off = torch.randint(0, 2 * pad + 1, (2, B * world), generator=generator)  # [2, G] (dy, dx)
        off = mine(off.t()).t().to(x.device)  # [2, B]: this rank's columns
        x_pad = F.pad(x, (pad, pad, pad, pad), value=-1.0)  # -1 = black, as padding the raw image with 0
        rows = (off[0, :, None] + torch.arange(H, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
        cols = (off[1, :, None] + torch.arange(W, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = x_pad[b, c, rows, cols]  # [B, C, H, W]
    if flip:
        do_flip = mine(torch.rand(B * world, generator=generator) < 0.5).to(x.device)
        x = torch.where(do_flip[:, None, None, None], x.flip(3), x)
    return x


def cutout(
    x: torch.Tensor, size: int, generator: torch.Generator, per_batch: bool = False, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a size x size square around a uniform random centre (clipped at the
    border) set to 0 (the mid-grey of [-1, 1]) in every example; per_batch: one square for the whole (global)
    batch (the Manifold Mixup code applies its Cutout to the batch tensor), else one per example, drawn for the
    global batch of world x B (each rank keeps its rows)."""
    B, _, H, W = x.shape
    n = 1 if per_batch else B * world
    centre = torch.stack(
        [torch.randint(0, H, (n,), generator=generator), torch.randint(0, W, (n,), generator=generator)], dim=1
    )
    centre = (centre if per_batch else globalbatch.local_rows(centre, rank, world)).t().expand(2, B)
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
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ClassifyConfig,
    generator: torch.Generator,
    rank: int = 0,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Forward pass of one training step: (logits [B, num_classes], targets [B, num_classes], mixed layer or None).

    erm / cutout: clean forward, one-hot targets. mixup: k = 0. manifold: k ~ U(cfg.mix_layers). Then lam ~
    Beta(alpha, alpha), perm a random partner per example; the hidden state at k and the one-hot targets are both
    mixed by `kernels.simplex_mix(., perm, w)` with w = [lam, 1 - lam]. On `world` processes x and y are this
    rank's rows of the global batch: partners and lam are drawn over the global batch (the same generator on every
    rank), the hidden state is all-gathered (differentiably) and each rank keeps its rows of the mix."""
    y_onehot = F.one_hot(y, cfg.num_classes).float()  # [B, num_classes]
    if cfg.mode in ("erm", "cutout"):
        return model(x), y_onehot, None
    G = x.shape[0] * world  # the global batch: every draw is over its rows
    layers = (0,) if cfg.mode == "mixup" else cfg.mix_layers
    layer = layers[int(torch.randint(len(layers), (1,), generator=generator))]
    perm = mixing.sample_perm(2, G, generator, device=x.device)  # [2, G]: identity, partners
    w = mixing.sample_beta_weights(G, cfg.alpha, generator, per_example=cfg.per_example, device=x.device)  # [G, 2]

    def mix(h: torch.Tensor) -> torch.Tensor:  # this rank's rows of h_mix = lam h + (1 - lam) h[perm]
        h_all = globalbatch.gather_rows(h, world)
        return globalbatch.local_rows(kernels.simplex_mix(h_all, perm, w, impl=cfg.impl), rank, world)

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


def fgsm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "bce", units: str = "normalised"
) -> torch.Tensor:
    """One signed-gradient step of L, the training loss on the one-hot label, as the paper's attack code; x and
    x_adv [B, C, H, W] in [-1, 1] units.
    units="normalised" (the public attack): eps on the network's standardised input z = (pixel - mean) / std,
    z_adv = z + eps sign(grad_z L), no clipping; here x_adv = x + eps model.input_unit() sign(grad_x L) (the same
    sign: z is x scaled by a positive factor per channel). "pixel": eps in [0, 1] pixel units,
    x_adv = clip(x + 2 eps sign(grad_x L), -1, 1)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    target = F.one_hot(y, logits.shape[1]).float()
    (grad,) = torch.autograd.grad(mixup_loss(logits, target, loss), x)
    if units == "pixel":
        return (x + 2 * eps * grad.sign()).clamp(-1, 1).detach()
    return (x + eps * model.input_unit() * grad.sign()).detach()


def evaluate(
    model: nn.Module,
    batches: Iterator[dict],
    cfg: ClassifyConfig,
    device: torch.device,
    attack: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Per-example 0/1 errors on the clean images and (if `attack`) under FGSM at each cfg.fgsm_eps, as float
    tensors {"eval/test_error": [n], "eval/fgsm_error@<eps>": [n]} (times 100: the mean is a percentage). The
    predictions run without gradients under `autocast` (cheap: the clean test error runs every epoch); the attack's
    gradient in fp32, as the public attack (a gradient's sign may flip or vanish in fp16 / bf16)."""
    was_training = model.training
    model.eval()
    eps_list = cfg.fgsm_eps if attack else ()
    wrong: dict[str, list[torch.Tensor]] = {"eval/test_error": []}
    wrong.update({f"eval/fgsm_error@{eps:g}": [] for eps in eps_list})
    seen = 0
    for batch in batches:
        take = cfg.eval_max - seen if cfg.eval_max else len(batch["y"])  # eval_max: at most that many images
        if take <= 0:
            break
        x = data.to_unit(batch["x"][:take], device)
        y = batch["y"][:take].to(device)
        seen += len(y)
        with torch.no_grad(), autocast():
            wrong["eval/test_error"].append((model(x).argmax(1) != y).float() * 100)
        for eps in eps_list:
            x_adv = fgsm(model, x, y, eps, cfg.loss, cfg.fgsm_units)
            with torch.no_grad(), autocast():
                wrong[f"eval/fgsm_error@{eps:g}"].append((model(x_adv).argmax(1) != y).float() * 100)
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0, device=device) for k, v in wrong.items()}


# ---------------------------------------------------------------------------------------------------------------
# The training loop.


def lr_at(cfg: ClassifyConfig, nimg: int) -> float:
    """Step schedule in images: lr * lr_gamma ** (number of lr_steps_kimg already passed)."""
    return cfg.lr * cfg.lr_gamma ** sum(nimg >= k * 1000 for k in cfg.lr_steps_kimg)


class Step:
    """One SGD step on one batch: augment, mix (`mixup_forward`), loss, backward, then the optimiser step unless a
    loss or gradient is non-finite on some rank; a skipped step puts back the BatchNorm statistics its forward
    pass moved. Every draw of step n comes from `globalbatch.draws(seed, n, "classify")`, a CPU generator (no
    device syncs) that every rank holds identically, over the global batch: a resumed run, on any number of
    processes, draws what the uninterrupted one would have."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, cfg: ClassifyConfig, run: Run) -> None:
        self.model, self.opt, self.cfg, self.run = model, opt, cfg, run
        self.params = list(model.parameters())
        self.bn_stats = [b for b in model.buffers() if b.is_floating_point()]
        self.bn_stats_before = [b.clone() for b in self.bn_stats]
        self.defer = run.defers([opt])

    def __call__(self, batch: dict, lr: float, step: int = 0) -> tuple[str | torch.Tensor, bool]:
        """Step `step` on this rank's rows of a global batch. Returns (status of `amr_fast.run.step_status`, or with
        `run.defer_skips` the 0/1 device flag of `run.skip_on_device`; stop requested on some rank)."""
        cfg, run = self.cfg, self.run
        g, where = globalbatch.draws(cfg.seed, step, "classify"), dict(rank=run.rank, world=run.world)
        x = data.to_unit(batch["x"], run.device)  # [B, C, H, W] in [-1, 1]
        y = batch["y"].to(run.device, non_blocking=True)
        x = random_crop_flip(x, cfg.crop_pad, cfg.flip, g, **where)
        if cfg.mode == "cutout":
            x = cutout(x, cfg.cutout_size, g, per_batch=cfg.cutout_per_batch, **where)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.bn_stats:
            torch._foreach_copy_(self.bn_stats_before, self.bn_stats)
        with run.accelerator.autocast():
            logits, y_mix, _ = mixup_forward(self.model, x, y, cfg, g, **where)
        loss = mixup_loss(logits, y_mix, cfg.loss)
        self.opt.zero_grad(set_to_none=True)
        (loss * run.state.loss_scale).backward()  # DDP averages the gradients over ranks
        reduce = lambda f: sum_over_ranks(f, run.world)  # noqa: E731
        status, stop = run_lib.apply_step(
            [self.opt], self.params, [loss], run.stop_requested, reduce, run.state.loss_scale, self.defer
        )
        if isinstance(status, torch.Tensor):  # skipped on the device: put the statistics back where it says so
            for cur, before in zip(self.bn_stats, self.bn_stats_before):
                cur.copy_(torch.where(status > 0, before, cur))
        elif status != "ok" and self.bn_stats:  # skipped: weights, momentum and BatchNorm statistics stay as they were
            torch._foreach_copy_(self.bn_stats, self.bn_stats_before)
        errors = (logits.detach().argmax(1) != y).float() * 100
        run_lib.report_step(status, [("loss/cls", loss), ("train/error", errors)])
        return status, stop


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


def train_classifier(
    cfg: ClassifyConfig,
    outdir: str | Path,
    log: Callable[[str], None] | None = print,
    tensorboard: bool = False,
    preset: str | None = None,
) -> Path:
    """Train (or resume) the classifier of `cfg` in `outdir`; returns the run directory. preset: the name the
    first line of the log gives the config."""
    cfg = cfg.validate()
    root = data.resolve_data_root(cfg.data)
    data.check_index(data.load_index(root), cfg.img_size, cfg.channels, cfg.num_classes)
    run = Run(cfg, outdir, ClassifyState(), log, STATUS_KEYS, tensorboard, preset)
    if cfg.batch % run.world:
        raise ValueError(f"batch={cfg.batch} must be a multiple of the number of processes ({run.world})")
    s = run.state
    torch.manual_seed(cfg.seed)  # the same initial weights for every rank and every rerun of a seed
    net = build_classifier(cfg).to(run.device)
    opt = make_sgd(net, cfg, run.device)
    model = run.accelerator.prepare(net)  # DDP on several processes (BatchNorm statistics: per rank)
    run.resume({"classifier": net}, {"opt": opt})
    batches = data.train_loader(root, cfg.batch, rank=run.rank, world_size=run.world, seed=cfg.seed,
                                workers=cfg.workers, start_batch=s.nimg // cfg.batch, **run.loader_args())  # fmt: skip
    step, out = Step(model, opt, cfg, run), _outputs(run, net, opt, root)
    n_params = sum(p.numel() for p in net.parameters())
    run.say(f"{cfg.arch} width {cfg.width:g} ({n_params / 1e6:.2f} M params), mode {cfg.mode}")
    model.train()
    # SIGTERM / SIGINT: finish the step, save a state, return (the flag rides on the step's all-reduce); the loader's
    # threads are joined when the loop ends, never at interpreter exit
    with run, contextlib.closing(batches):
        while not run.finished:
            lr = lr_at(cfg, s.nimg)
            status, stop = step(next(batches), lr, s.nimg // cfg.batch)
            run.count_step(status)
            prev, s.nimg = s.nimg, s.nimg + cfg.batch
            if run.after_step(prev, stop, out, {"lr": lr}):
                break
    if not run.stopped:
        run.say(done_line(run, run.last_row))
    return run.outdir


def make_sgd(net: nn.Module, cfg: ClassifyConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with the config's momentum and weight decay; fused on CUDA (one kernel a step, skipped on the device)."""
    fused = run_lib.fused_optimizers(device) or None
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay, fused=fused)  # fmt: skip
    if fused and cfg.momentum:  # zero momentum buffers: a first step skipped on the device leaves no garbage
        for p in net.parameters():  # (fused SGD's own first step fills empty buffers); buf = 0 * m + g is exact
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


def _outputs(run: Run, net: nn.Module, opt: torch.optim.Optimizer, root: Path) -> run_lib.Outputs:
    """The classifier's evaluation (test error every eval_kimg, FGSM every fgsm_kimg, both at the end; reported for
    the tick's row), its snapshot, and its resume state, refused on every rank together if any weight or momentum
    is non-finite."""
    cfg, s = run.cfg, run.state

    def evaluate(prev: int) -> dict:
        attack = run.finished or due(prev, s.nimg, cfg.fgsm_kimg)
        if attack or due(prev, s.nimg, cfg.eval_kimg):
            _evaluate(net, root, cfg, run, attack)
        return {}

    def snapshot() -> None:
        path = run.outdir / f"snapshot-{checkpoint.kimg_tag(s.nimg)}.safetensors"
        with progress.phase(f"writing {path.name}"):
            checkpoint.save_snapshot(path, {"classifier": net}, dataclasses.asdict(cfg), s.nimg / 1000)

    def save_state() -> Path:
        bad = first_nonfinite(net, opt)
        if sum_over_ranks(torch.tensor([float(bad is not None)], device=run.device), run.world).tolist()[0]:
            raise ValueError(
                f"refusing to write a resume state at {s.nimg / 1000:g} kimg: {bad or 'a tensor on another rank'} is "
                f"non-finite (the run diverged); lower lr or use precision=fp32, and resume from an earlier state"
            )
        return run.save_state({"classifier": net}, {"opt": opt}, {})

    def on_tick(row: dict) -> None:  # the public code reports the best epoch
        if isinstance(row.get("eval/test_error"), (int, float)):
            s.best_test_error = min(row["eval/test_error"], s.best_test_error or 100.0)

    return run_lib.Outputs(evaluate, snapshot, save_state, on_tick)


def done_line(run: Run, row: dict) -> str:
    """The last line of a run: where it is and its final figures (the last row's; none on a re-run of a finished
    run) and the best test error over its evaluations."""
    s = run.state
    evals = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith("eval/"))
    parts = [f"done: {s.nimg / 1000:g} kimg in {run.outdir}", "nothing left to train" if not row else "", evals]
    if s.best_test_error is not None:
        parts.append(f"best eval/test_error over the evaluations {s.best_test_error:.2f}")
    return "; ".join(p for p in parts if p)


def _evaluate(net: nn.Module, root: Path, cfg: ClassifyConfig, run: Run, attack: bool) -> None:
    """Test error (and, if `attack`, FGSM errors) on this rank's share of cfg.eval_split, in batches of
    cfg.eval_batch, predictions under the run's autocast (bf16 on GPUs), reported for the next tick's row."""
    t_eval = time.time()
    test = data.eval_loader(root, cfg.eval_split, cfg.eval_batch, rank=run.rank, world_size=run.world, workers=0)
    total = data.load_index(root)["splits"][cfg.eval_split]["num_samples"]
    what = "test error" + ("".join(f" + FGSM {eps:g}" for eps in cfg.fgsm_eps) if attack else "")
    share = eval_share(cfg.eval_max, run.rank, run.world)
    if share is not None:  # eval_max images in all, whatever the number of processes
        total, test = min(total, cfg.eval_max), (test if share else iter(()))
        cfg = dataclasses.replace(cfg, eval_max=share)  # an empty share reads nothing
    # rank 0's bar counts the images of every process (they read equal shares, in step)
    test = progress.counted(test, total, f"{what} on {cfg.eval_split}", run.is_main, share=run.world)
    for name, values in evaluate(net, test, cfg, run.device, attack, run.accelerator.autocast).items():
        stats.report(name, values)
    stats.report("time/eval", time.time() - t_eval)


def eval_share(eval_max: int, rank: int, world: int) -> int | None:
    """This rank's part of `eval_max` images in all (None: no limit): eval_max // world, one more on the first
    eval_max % world ranks."""
    return eval_max // world + (rank < eval_max % world) if eval_max else None


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ClassifyConfig]:
    """A classifier snapshot (snapshot-<kimg>.safetensors of `amr-fast classify`) -> (model in eval mode, cfg)."""
    states, meta = checkpoint.load_snapshot(path)
    if "mode" not in meta["config"]:
        raise ValueError(f"{path} is an autoencoder snapshot of `amr-fast train`, not a classifier of `amr-fast "
                         "classify`; load it with amr_fast.checkpoint.load_networks")  # fmt: skip
    cfg = from_dict(meta["config"], ClassifyConfig)
    model = build_classifier(cfg)
    checkpoint.load_state_dicts({"classifier": model}, states)
    return model.to(device).eval(), cfg


# ---------------------------------------------------------------------------------------------------------------
# CLI.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    configure_run_parser(parser, "fashion-mnist-manifold", "width=0.25 mix_layers=0,1,2", ClassifyConfig)


def main(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, cfg in CLASSIFY_PRESETS.items():
            print(
                f"{name:<26} {cfg.arch} width {cfg.width:g}, {cfg.mode}, {cfg.total_kimg:g} kimg, lr / 10 at "
                f"{'/'.join(f'{k:g}' for k in cfg.lr_steps_kimg)} kimg, FGSM eps in {cfg.fgsm_units}"
            )
        return 0
    cfg = config_from_args(args, CLASSIFY_PRESETS)
    if cfg is not None:
        n = cpu_processes(args.procs)
        if n > 1:  # a CPU: one single-threaded data-parallel process per core, through torch's launcher
            return start_processes(n, sys.argv[1:])
        train_classifier(cfg, args.outdir or f"runs/{args.preset}", tensorboard=args.tensorboard, preset=args.preset)
    return exit_status()
