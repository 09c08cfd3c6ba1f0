"""`amr-fast bench train`: training images/s of our step next to the public AMR code's schedule, same networks.

Measures the 32x32 AMR model with mixup k = 2 (the Fashion-MNIST preset: 32x32x1, 32-dim code, batch 64,
autoencoder updated every 5th iteration) and the 64x64 dSprites model, on synthetic uint8 batches (the data
loader is not measured: `amr-fast bench data` does that), in one process, side by side:

- **ours**: `amr_fast.train.train_iteration`, exactly the step the trainer runs: one encoder/decoder pass per
  iteration, with autograd only on the iterations that update the autoencoder; x_rec and x_mix decoded in one
  batched call; D on real/rec/mix in one batched call; mixing with `amr_fast.kernels` (impl "auto").
- **reference**: the public code's schedule (`SwapGAN.train_on_instance`, Beckham et al. 2019) written out here:
  EVERY iteration runs the encoder and both decoder passes with autograd and D on x_rec and x_mix for the
  autoencoder's loss (its backward only every 5th iteration), then recomputes D on x, x_rec and x_mix for D's own
  loss; mixing through `amr_fast.mixing` (the plain-torch spec, impl "ref"). Same networks, same losses
  (`amr_fast.losses.recon_loss` / `gan_loss`), same optimisers.

Iterations are timed in whole cycles of `ae_every` (so both paths do the same number of autoencoder updates),
alternating ours / reference rounds so machine noise hits both. Reported: images per wall-clock second and per
CPU-second of this process (on a shared machine the second is the steadier figure), the speed-ups,
and the encoder / decoder / discriminator calls per iteration (a batched call counts once; its batch size is in
the JSON). The public code itself reaches about 160 img/s for the 32x32 model on this 2-core CPU (issue 4).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import time

import torch
from torch.nn import functional as F

from amr_fast import mixing
from amr_fast.config import PRESETS, TrainConfig, probe_adam_args
from amr_fast.losses import AMRLoss, gan_loss, recon_loss
from amr_fast.models import build_networks
from amr_fast.train import Parts, train_iteration

MODELS = {
    "amr32-mixup": ("fashion-mnist-mixup", {}),
    "dsprites64-mixup": ("dsprites-mixup", {}),
}


def _optimisers(cfg: TrainConfig, nets: dict) -> tuple[torch.optim.Optimizer, ...]:
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return (
        torch.optim.Adam(nets["ae"].parameters(), **adam),
        torch.optim.Adam(nets["disc"].parameters(), **adam),
        torch.optim.Adam(nets["probe"].parameters(), **probe_adam_args(cfg)),
    )


def _batch(cfg: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (cfg.batch, cfg.channels, cfg.img_size, cfg.img_size), generator=g, dtype=torch.uint8)
    return {"x": x, "y": torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)}


# ---------------------------------------------------------------------------------------------------------------
# The public code's schedule, k = 2 mixup (models/swapgan.py train_on_instance + models/twogan.py mix).


class ReferenceStep:
    """One iteration of the public AMR code's schedule on our networks (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, nets: dict, generator: torch.Generator) -> None:
        if cfg.mixer != "mixup" or cfg.k != 2 or cfg.method != "amr":
            raise ValueError("the reference schedule is written for method=amr, mixer=mixup, k=2")
        self.cfg, self.g = cfg, generator
        self.ae, self.disc, self.probe = nets["ae"], nets["disc"], nets["probe"]
        self.opt_ae, self.opt_disc, self.opt_probe = _optimisers(cfg, nets)
        self.passes = {"enc": 0, "dec": 0, "disc": 0}
        self.it = 0

    def _dec(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.passes["dec"] += 1
        return self.ae.decode_with_logits(h)

    def _disc(self, x: torch.Tensor) -> torch.Tensor:
        self.passes["disc"] += 1
        return self.disc(x)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        x = batch["x"].float() / 127.5 - 1
        y = batch["y"]
        for opt in (self.opt_ae, self.opt_disc, self.opt_probe):
            opt.zero_grad()
        # Autoencoder's loss, built every iteration (with autograd), stepped every ae_every-th.
        self.passes["enc"] += 1
        h = self.ae.encode(x)
        x_rec, logits = self._dec(h)
        recon = recon_loss(cfg.recon, x_rec, logits, x)
        g_rec = gan_loss(self._disc(x_rec), 1.0)
        perm = mixing.sample_perm(2, x.shape[0], self.g)
        w = mixing.sample_uniform_weights(x.shape[0], self.g)
        h_mix = mixing.simplex_mix(h, perm, w)
        x_mix, _ = self._dec(h_mix)
        g_mix = gan_loss(self._disc(x_mix), 1.0)
        gen_loss = cfg.lamb * recon + g_rec + g_mix
        if self.it % cfg.ae_every == 0:
            gen_loss.backward()
            self.opt_ae.step()
        # Discriminator: recomputed on x, x_rec and x_mix.
        self.opt_disc.zero_grad()
        d_loss = gan_loss(self._disc(x), 1.0) + gan_loss(self._disc(x_rec.detach()), 0.0)
        d_loss = d_loss + gan_loss(self._disc(x_mix.detach()), 0.0)
        d_loss.backward()
        self.opt_disc.step()
        # Probe on the detached code.
        F.cross_entropy(self.probe(h.detach().flatten(1)), y).backward()
        self.opt_probe.step()
        self.it += 1


# ---------------------------------------------------------------------------------------------------------------


def _ours(cfg: TrainConfig, seed: int):
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    if cfg.channels_last:
        for net in nets.values():
            net.to(memory_format=torch.channels_last)
    loss = AMRLoss(cfg, nets, "cpu")
    if cfg.compile:
        nets["ae"].encode = torch.compile(nets["ae"].encode)
        nets["ae"].decode_with_logits = torch.compile(nets["ae"].decode_with_logits)
        nets["disc"].run = torch.compile(nets["disc"].run)
    parts = Parts(
        nets["ae"], nets["disc"], nets["probe"], [nets["ae"]], *_optimisers(cfg, nets), loss,
        torch.Generator().manual_seed(seed), torch.device("cpu"), 1, cfg.channels_last, contextlib.nullcontext,
    )  # fmt: skip
    state = {"it": 0}

    def step(batch):
        train_iteration(parts, [batch], state["it"] % cfg.ae_every == 0)
        state["it"] += 1

    return step, loss.passes


def _reference(cfg: TrainConfig, seed: int):
    torch.manual_seed(seed)
    ref = ReferenceStep(cfg, build_networks(cfg), torch.Generator().manual_seed(seed))
    return ref, ref.passes


def bench_model(
    cfg: TrainConfig, cycles: int, rounds: int, warmup_cycles: int = 1, variants: dict[str, dict] | None = None
) -> dict:
    """Time ours (cfg, and cfg with each of `variants`' field changes) and the reference on `cfg` (batch cfg.batch):
    `rounds` alternating rounds of `cycles` x ae_every iterations per path."""
    batches = [_batch(cfg, i) for i in range(cfg.ae_every)]
    paths = {"ours": _ours(cfg, 0)}
    for name, changes in (variants or {}).items():
        paths[name] = _ours(dataclasses.replace(cfg, **changes), 0)
    paths["reference"] = _reference(cfg, 0)
    n_iter = cycles * cfg.ae_every
    seconds = {name: 0.0 for name in paths}
    cpu_seconds = {name: 0.0 for name in paths}
    per_iter = {}
    for name, (step, passes) in paths.items():  # warm-up (allocator, first-call costs), then count passes
        for i in range(warmup_cycles * cfg.ae_every):
            step(batches[i % len(batches)])
        before = dict(passes)
        for i in range(cfg.ae_every):
            step(batches[i])
        per_iter[name] = {k: (passes[k] - before[k]) / cfg.ae_every for k in passes}
    for _ in range(rounds):
        for name, (step, _) in paths.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n_iter):
                step(batches[i % len(batches)])
            seconds[name] += time.perf_counter() - t0
            cpu_seconds[name] += time.process_time() - c0
    images = rounds * n_iter * cfg.batch
    out = {
        name: {
            "img_per_s": images / seconds[name],
            "img_per_cpu_s": images / cpu_seconds[name],
            "ms_per_iter": 1000 * seconds[name] / (rounds * n_iter),
            "cpu_ms_per_iter": 1000 * cpu_seconds[name] / (rounds * n_iter),
            "calls_per_iter": per_iter[name],
        }
        for name in paths
    }
    for name in paths:
        if name != "reference":
            out[name]["speedup"] = out[name]["img_per_s"] / out["reference"]["img_per_s"]
            out[name]["speedup_cpu_time"] = out[name]["img_per_cpu_s"] / out["reference"]["img_per_cpu_s"]
            out[name]["changes"] = (variants or {}).get(name, {})
    out["iterations"] = rounds * n_iter
    out["batch"] = cfg.batch
    out["ae_every"] = cfg.ae_every
    keys = ("arch", "img_size", "channels", "width", "code_channels", "code_dim", "mixer", "k", "recon")
    out["config"] = {k: getattr(cfg, k) for k in keys + ("channels_last", "compile")}
    out["batched_call_sizes"] = "ours: enc B, dec 2B (rec+mix), D 3B (real+rec+mix) and 2B (ae phase); ref: all B"
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--cycles", type=int, default=2, help="ae_every-iteration cycles per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ours/reference rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument(
        "--variants",
        default="channels_last",
        help="comma-separated extra runs of ours with one config field set true: channels_last, compile ('' = none)",
    )


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
               "device": "cpu", "models": {}}  # fmt: skip
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        preset, extra = MODELS[name]
        cfg = dataclasses.replace(PRESETS[preset], impl="auto", **extra).validate()
        variants = {f"ours+{v.strip()}": {v.strip(): True} for v in args.variants.split(",") if v.strip()}
        for changes in variants.values():
            if set(changes) - {"channels_last", "compile"}:
                raise ValueError(f"--variants takes channels_last and/or compile; got {args.variants!r}")
        results["models"][name] = r = bench_model(cfg, args.cycles, args.rounds, variants=variants)
        print(_table_rows(name, r), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")
    return 0


def _table_rows(name: str, r: dict) -> str:
    lines = []
    for path, p in r.items():
        if not isinstance(p, dict) or "img_per_s" not in p:
            continue
        calls = p["calls_per_iter"]
        speed = f"  {p['speedup']:.2f}x wall {p['speedup_cpu_time']:.2f}x cpu" if "speedup" in p else ""
        lines.append(
            f"{name:<17} {path:<20} {p['img_per_s']:7.1f} img/s {p['img_per_cpu_s']:7.1f} img/cpu-s  "
            f"enc {calls['enc']:.1f} dec {calls['dec']:.1f} disc {calls['disc']:.1f} calls/iter{speed}"
        )
    return "\n".join(lines)
