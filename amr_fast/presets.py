"""Every preset of both trainers, one literal name each (`grep -rn svhn32-5k-mixup amr_fast` finds its row).

`PRESETS` (`amr-fast train --preset`): one entry per row of the AMR paper's tables 1-4 (Beckham et al., NeurIPS
2019), each equal to the public code's experiment script of that row (`PRESET_ROWS`: the row, the script, its
epochs; the table's lambda; total_kimg = epochs x the public training split), plus small `fashion-mnist-*`,
`spiral-*` and `demo` presets for this machine. `CLASSIFY_PRESETS` (`amr-fast classify --preset`): the Manifold
Mixup paper's CIFAR-10/100 and SVHN settings as the public code runs them (Verma et al., ICML 2019), and small
Fashion-MNIST ones. `resolve(preset, overrides[, presets])` builds a validated config from a preset and
"field=value" strings (amr_fast.overrides). This module imports no torch.

Preset names: `<dataset>[-<code dims>][-<subset>]-<method>[-k<k>]`, e.g. `mnist-mixup`, `svhn32-5k-bernoulli`,
`cifar10-1024-mixup-k4`, `dsprites-bernoulli-k3`. Methods: `aegan` (AE+GAN, no mixing), `mixup` (a ~ U(0, 1)
per example, k = 2; Dirichlet(1) for k > 2), `bernoulli` (per-channel masks, p ~ U(0, 1) per batch; k > 2: a
uniform source per (example, channel)), `acai` (ACAI, D regresses the folded mixing coefficient), `class`
(supervised class-conditional mixer), `betavae`; beyond the papers, `cutmix` (a box of the code's grid from the
partner, area ~ U(0, 1); the AMR paper's section 5 proposal) and `spatial-bernoulli` (each code position from one
of k sources). Classifier presets: `<dataset>-<mode>` (PreActResNet18; mode erm, mixup, manifold or cutout) and
`<dataset>-wrn-<mode>` (WRN-28-10; erm, mixup, manifold).

Presets that train on a user's dataset have `data=""`: pass `data=DIR` (a directory made by `amr-fast shard`),
e.g. `amr-fast train --preset fashion-mnist-mixup data=/path/to/fashion-mnist-32`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any

from amr_fast.config import ClassifyConfig, TrainConfig
from amr_fast.overrides import parse_value

# ---------------------------------------------------------------------------------------------------------------
# Presets: one per row of the AMR paper's tables (Beckham et al., NeurIPS 2019), each equal to the public code's
# experiment script of that row (christopher-beckham/amr exps/<folder>/<script>.sh; exps/README.md maps folders to
# tables: 1 = mnist, kmnist, svhn32 (32-dim code); 2 = svhn32_{1k,5k,10k,20k}; 3 = svhn256, cifar10 (256-dim),
# cifar10_1024; 4 = dsprite). Script names: baseline = AE+GAN, mixup = mixup k=2, mixupfm2 = Bernoulli k=2, ganXf =
# mixup k=X, ganXfm = Bernoulli k=X, acaif3 = ACAI, bvae = beta-VAE. Every script: Adam lr 1e-4, betas (0.5, 0.99),
# batch 64, the autoencoder updated every 5th iteration; the 32x32 scripts add weight decay 1e-5 (also on the probe).
# lambda: the value the table prints in parentheses for that row, and the script of that lambda (a folder holds a
# sweep); table 4 prints none: every exps/dsprite script uses lambda 1.
# total_kimg = the script's epochs x the training split the public code really trains on (task_launcher.py):
# MNIST / KMNIST 50,000 (60k minus a 10k validation split), SVHN 65,931 (90% of the 73,257 train images),
# CIFAR-10 40,000, the SVHN subsets their size, dSprites all 737,280 images.


@dataclass(frozen=True)
class PresetRow:
    """Where a paper preset comes from: its table row, the public script it equals, and its budget in epochs."""

    row: str  # e.g. "table 1, MNIST: AMR mixup k=2" (or "not in the tables: ...")
    script: str  # the public code's script, e.g. "exps/mnist/mixup_lamb10.sh"
    epochs: int  # the script's --epochs
    epoch_images: int  # images per epoch of the split the public code trains on
    note: str = ""  # where the preset had to infer what the public code does not contain

    @property
    def total_kimg(self) -> float:
        return self.epochs * self.epoch_images / 1000

    @property
    def schedule(self) -> dict[str, Any]:
        """The public loop's schedule: its budget, its epochs (a partial last batch each), the AE counter
        restarting every epoch (swapgan.py's `iter`) and the online probe scored once per epoch (its valid loop)."""
        return dict(total_kimg=self.total_kimg, epoch_images=self.epoch_images, ae_schedule="per-epoch",
                    probe_kimg=self.epoch_images / 1000)  # fmt: skip


_METHODS: dict[str, dict[str, Any]] = {
    "aegan": dict(method="amr", mixer="none"),
    "mixup": dict(method="amr", mixer="mixup"),
    "bernoulli": dict(method="amr", mixer="bernoulli"),
    "acai": dict(method="acai", mixer="mixup"),
    "class": dict(method="amr", mixer="class"),
    "betavae": dict(method="betavae", mixer="none"),
    "cutmix": dict(method="amr", mixer="cutmix"),
    "spatial-bernoulli": dict(method="amr", mixer="spatial_bernoulli"),
}
_ROW_NAMES = {"aegan": "AE+GAN", "mixup": "AMR mixup", "bernoulli": "AMR Bern", "acai": "ACAI", "betavae": "beta-VAE"}
_METHODS_K = ("mixup", "bernoulli", "acai")  # rows of the tables that print k
_SCRIPT_NAMES = {"aegan": "baseline", "mixup": "mixup", "bernoulli": "mixupfm2", "acai": "acaif3"}

# Paper rows: (preset prefix, table, dataset in the table, public folder, images per epoch) -> rows of
# (method, k, lambda, epochs). The lambda is the table's; the epochs are those of that lambda's script.
# (exps/kmnist/acaif3_lamb2.sh holds --lamb=10 and acaif3_lamb10.sh --lamb=2: we name the script by its content.)
# Paper rows: (preset prefix, table, dataset in the table, public folder, images per epoch) -> rows of
# (preset name, lambda, epochs); the name says the method and k (`<prefix>-<method>[-k<k>]`, `_method_and_k`). The
# lambda is the table's; the epochs are those of that lambda's script. (exps/kmnist/acaif3_lamb2.sh holds
# --lamb=10 and acaif3_lamb10.sh --lamb=2: we name the script by its content.)
_PAPER: list[tuple[str, int, str, str, int, list[tuple[str, float, int]]]] = [
    ("mnist", 1, "MNIST", "mnist", 50_000, [
        ("mnist-aegan", 5, 2000), ("mnist-mixup", 10, 2000), ("mnist-bernoulli", 10, 2000),
        ("mnist-mixup-k3", 20, 2000), ("mnist-acai", 2, 2000)]),
    ("kmnist", 1, "KMNIST", "kmnist", 50_000, [
        ("kmnist-aegan", 10, 5000), ("kmnist-mixup", 10, 6000), ("kmnist-bernoulli", 10, 6000),
        ("kmnist-mixup-k3", 10, 6000), ("kmnist-acai", 10, 6000)]),
    ("svhn32", 1, "SVHN", "svhn32", 65_931, [
        ("svhn32-aegan", 5, 4500), ("svhn32-mixup", 10, 6000), ("svhn32-bernoulli", 10, 4500),
        ("svhn32-mixup-k3", 10, 6000), ("svhn32-acai", 2, 6000)]),
    ("svhn32-1k", 2, "SVHN(1k)", "svhn32_1k", 1_000, [
        ("svhn32-1k-aegan", 10, 6000), ("svhn32-1k-mixup", 10, 6000), ("svhn32-1k-bernoulli", 20, 6000),
        ("svhn32-1k-mixup-k3", 10, 6000), ("svhn32-1k-acai", 10, 6000)]),
    ("svhn32-5k", 2, "SVHN(5k)", "svhn32_5k", 5_000, [
        ("svhn32-5k-aegan", 10, 6000), ("svhn32-5k-mixup", 20, 6000), ("svhn32-5k-bernoulli", 20, 6000),
        ("svhn32-5k-mixup-k3", 10, 7000), ("svhn32-5k-acai", 10, 7000)]),
    ("svhn32-10k", 2, "SVHN(10k)", "svhn32_10k", 10_000, [
        ("svhn32-10k-aegan", 10, 6000), ("svhn32-10k-mixup", 10, 6000), ("svhn32-10k-bernoulli", 10, 6000),
        ("svhn32-10k-mixup-k3", 10, 6000), ("svhn32-10k-acai", 2, 6000)]),
    ("svhn32-20k", 2, "SVHN(20k)", "svhn32_20k", 20_000, [
        ("svhn32-20k-aegan", 20, 4000), ("svhn32-20k-mixup", 10, 4000), ("svhn32-20k-bernoulli", 10, 4000),
        ("svhn32-20k-mixup-k3", 10, 4000), ("svhn32-20k-acai", 5, 4000)]),
    ("svhn256", 3, "SVHN (256)", "svhn256", 65_931, [
        ("svhn256-aegan", 5, 6000), ("svhn256-mixup", 5, 6000), ("svhn256-bernoulli", 10, 4500),
        ("svhn256-mixup-k3", 5, 4500), ("svhn256-mixup-k4", 5, 4500), ("svhn256-mixup-k6", 5, 6000),
        ("svhn256-mixup-k8", 5, 4500), ("svhn256-acai", 2, 4500)]),
    ("cifar10-256", 3, "CIFAR10 (256)", "cifar10", 40_000, [
        ("cifar10-256-aegan", 50, 3000), ("cifar10-256-mixup", 50, 3000), ("cifar10-256-bernoulli", 50, 3000),
        ("cifar10-256-mixup-k3", 50, 3000), ("cifar10-256-mixup-k4", 50, 3000), ("cifar10-256-mixup-k6", 50, 3000),
        ("cifar10-256-mixup-k8", 50, 3000), ("cifar10-256-acai", 20, 3000)]),
    ("cifar10-1024", 3, "CIFAR10 (1024)", "cifar10_1024", 40_000, [
        ("cifar10-1024-aegan", 50, 8000), ("cifar10-1024-mixup", 50, 8000), ("cifar10-1024-bernoulli", 50, 8000),
        ("cifar10-1024-mixup-k3", 50, 8000), ("cifar10-1024-mixup-k4", 50, 8000),
        ("cifar10-1024-mixup-k6", 50, 8000), ("cifar10-1024-mixup-k8", 50, 8000), ("cifar10-1024-acai", 20, 8000)]),
    ("dsprites", 4, "dSprites", "dsprite", 737_280, [
        ("dsprites-betavae", 1, 500), ("dsprites-aegan", 1, 500), ("dsprites-mixup", 1, 500),
        ("dsprites-bernoulli", 1, 500), ("dsprites-mixup-k3", 1, 1000), ("dsprites-bernoulli-k3", 1, 500)]),
]  # fmt: skip
# Presets that are no row of the tables, kept as extensions: (name, lambda, script whose lambda and epochs they
# take, epochs, images per epoch, why).
_EXTRA: list[tuple[str, float, str, int, int, str]] = [
    ("mnist-bernoulli-k3", 10, "exps/mnist/mixupfm2_lamb10.sh", 2000, 50_000, "table 1 has no Bern k=3 row"),
    ("kmnist-bernoulli-k3", 10, "exps/kmnist/mixupfm2_lamb10.sh", 6000, 50_000, "table 1 has no Bern k=3 row"),
    ("svhn32-bernoulli-k3", 10, "exps/svhn32/mixupfm2_lamb10.sh", 4500, 65_931, "table 1 has no Bern k=3 row"),
    ("svhn32-mixup-k4", 10, "exps/svhn32/gan4f_lamb10.sh", 6000, 65_931, "table 1 has no mixup k=4 row"),
    ("dsprites-cutmix", 1, "exps/dsprite/mixupfm2_lamb1.sh", 500, 737_280,
     "beyond the papers: CutMix of the code, their section 5 proposal; a box of dSprites' vector code is a run of "
     "code units; the Bernoulli k=2 script's lambda and epochs"),
]  # fmt: skip


# Rows whose network the public code does not hold: their scripts name a file that is not in it.
_INFERRED = {
    "cifar10-1024": "network inferred: the scripts name architectures/arch_acai_kyle_1024.py, which the public code "
    "lacks; ours is arch_acai_kyle_256.py with a 64 x 4 x 4 bottleneck (1,024 dims, the probe's n_in) and D's last "
    "conv to 64 maps, as that file's pattern",
}


def _script(folder: str, method: str, k: int, lamb: float) -> str:
    if folder == "dsprite":
        name = {"betavae": "bvae_beta100", "aegan": "baseline_lamb1"}.get(method)
        if name is None:
            kind = "mixup" if method == "mixup" else "mixupfm2"
            name = f"{kind}_lamb1" if k == 2 else f"gan{k}f{'m' if method == 'bernoulli' else ''}_lamb1"
        return f"exps/dsprite/{name}.sh"
    if folder == "kmnist" and method == "acai":  # its file names swap lambda 2 and 10
        return "exps/kmnist/acaif3_lamb2.sh"
    name = _SCRIPT_NAMES[method] if k == 2 else f"gan{k}f"
    return f"exps/{folder}/{name}_lamb{lamb:g}.sh"


def _method_and_k(name: str, prefix: str) -> tuple[str, int]:
    """("mixup", 3) from "svhn256-mixup-k3" and its prefix "svhn256"."""
    rest = name[len(prefix) + 1 :].split("-")
    k = int(rest.pop()[1:]) if rest[-1].startswith("k") and rest[-1][1:].isdigit() else 2
    return "-".join(rest), k


# The public code's 32x32 model: depth 16 for the autoencoder and D ("arch_acai_kyle*.py"); the probe shares the
# networks' optimiser (cls_opt_args = opt_args: Adam lr 1e-4, betas (0.5, 0.99), weight decay 1e-5). Channels-last
# (NHWC) for both conv families: the faster memory format of the CPU step (README, "Training speed").
_AMR32 = TrainConfig(arch="amr32", img_size=32, width=16, code_channels=2, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                     weight_decay=1e-5, probe_lr=1e-4, probe_beta1=0.5, probe_beta2=0.99, probe_weight_decay=1e-5,
                     ae_every=5, recon="l1", tick_kimg=10, snapshot_kimg=1000, state_kimg=1000, probe_kimg=100,
                     channels_last=True)  # fmt: skip
# Table 4: dSprites, Burgess et al. autoencoder, 10-dim code, BCE-sum reconstruction, D width 32 (--ndf=32; the
# AE+GAN script passes none: task_launcher's default 64), no weight decay. beta-VAE: exps/dsprite/bvae_beta100.sh,
# beta 100 with the public code's KL *mean* over the 10 code dims, i.e. vae_beta = 10 with our KL summed over dims;
# Adam beta1 0.9 as its script, and no D.
_DSPRITES = TrainConfig(arch="dsprites64", img_size=64, channels=1, width=32, disc_width=32, code_dim=10,
                        num_classes=3, recon="bce", lamb=1.0, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                        weight_decay=0.0, probe_lr=1e-4, probe_beta1=0.5, probe_beta2=0.99, ae_every=5, tick_kimg=10,
                        snapshot_kimg=1000, state_kimg=1000, probe_kimg=100, channels_last=True)  # fmt: skip
_BASES = {
    "mnist": replace(_AMR32, channels=1),
    "kmnist": replace(_AMR32, channels=1),
    "svhn32": replace(_AMR32, channels=3),
    "svhn32-1k": replace(_AMR32, channels=3, subset=1_000),
    "svhn32-5k": replace(_AMR32, channels=3, subset=5_000),
    "svhn32-10k": replace(_AMR32, channels=3, subset=10_000),
    "svhn32-20k": replace(_AMR32, channels=3, subset=20_000),
    "svhn256": replace(_AMR32, channels=3, code_channels=16),
    "cifar10-256": replace(_AMR32, channels=3, code_channels=16),
    "cifar10-1024": replace(_AMR32, channels=3, code_channels=64),
    "dsprites": _DSPRITES,
}
_METHOD_EXTRA = {
    "dsprites-aegan": dict(disc_width=64),
    "dsprites-betavae": dict(vae_beta=10.0, beta1=0.9, probe_beta1=0.9, ae_every=1),
}


def _paper_presets() -> tuple[dict[str, TrainConfig], dict[str, PresetRow]]:
    """The presets of `_PAPER` (the tables' rows) and `_EXTRA` (the extensions), with their rows."""
    p: dict[str, TrainConfig] = {}
    rows: dict[str, PresetRow] = {}
    for prefix, table, dataset, folder, epoch_images, table_rows in _PAPER:
        for name, lamb, epochs in table_rows:
            method, k = _method_and_k(name, prefix)
            row = PresetRow(
                row=f"table {table}, {dataset}: {_ROW_NAMES[method]}" + (f" k={k}" if method in _METHODS_K else ""),
                script=_script(folder, method, k, lamb),
                epochs=epochs,
                epoch_images=epoch_images,
                note=_INFERRED.get(prefix, ""),
            )
            p[name] = replace(_BASES[prefix], k=k, lamb=float(lamb), **row.schedule, **_METHODS[method],
                              **_METHOD_EXTRA.get(name, {}))  # fmt: skip
            rows[name] = row
    for name, lamb, script, epochs, epoch_images, why in _EXTRA:
        prefix = next(b for b in _BASES if name.startswith(b + "-") and _method_and_k(name, b)[0] in _METHODS)
        method, k = _method_and_k(name, prefix)
        row = PresetRow(row=f"not in the tables ({why})", script=script, epochs=epochs, epoch_images=epoch_images)
        p[name] = replace(_BASES[prefix], k=k, lamb=float(lamb), **row.schedule, **_METHODS[method])
        rows[name] = row
    return p, rows


def _machine_presets() -> dict[str, TrainConfig]:
    """The presets for this machine: Fashion-MNIST, the 2-D spiral toy, the README's demo."""
    p: dict[str, TrainConfig] = {}
    # Fashion-MNIST resized to 32x32 (`amr-fast shard`), 32-dim code; pass data=DIR. A short budget, so the probe
    # learns faster than the paper's (lr 1e-3, Adam's default betas, no weight decay). The last three presets are
    # beyond the papers.
    fmnist = replace(_AMR32, channels=1, lamb=10.0, probe_lr=1e-3, probe_beta1=0.9, probe_beta2=0.999,
                     probe_weight_decay=0.0, total_kimg=600, tick_kimg=4, snapshot_kimg=100, state_kimg=50,
                     probe_kimg=20)  # fmt: skip
    for name in ("fashion-mnist-aegan", "fashion-mnist-mixup", "fashion-mnist-bernoulli", "fashion-mnist-mixup-k3",
                 "fashion-mnist-class", "fashion-mnist-cutmix", "fashion-mnist-cutmix-k3",
                 "fashion-mnist-spatial-bernoulli"):  # fmt: skip
        method, k = _method_and_k(name, "fashion-mnist")
        p[name] = replace(fmnist, k=k, **_METHODS[method])
    # The 2-D spiral toy (the AMR supplement, figure 12): points [B, 2] (channels=2, img_size=1), MLP autoencoder,
    # 2-dim code; "consistency" adds beta |enc(x_mix) - h_mix|_1. Budget: the supplement's 100 epochs of the 10,000
    # training points (it names no network, optimiser or lambda for the toy; no public code has it).
    spiral = TrainConfig(data="builtin:spiral", arch="mlp", img_size=1, channels=2, width=128, code_dim=2,
                         num_classes=2, recon="l2", lamb=10.0, batch=64, weight_decay=0.0, ae_every=1,
                         total_kimg=1000, tick_kimg=50, snapshot_kimg=250, state_kimg=250, probe_kimg=20)  # fmt: skip
    p["spiral-aegan"] = replace(spiral, **_METHODS["aegan"])
    p["spiral-mixup"] = replace(spiral, **_METHODS["mixup"])
    p["spiral-mixup-consistency"] = replace(p["spiral-mixup"], beta=1.0)
    # The README's demo (`make demo`): table 4's best AMR row (`dsprites-bernoulli-k3`: the Burgess et al.
    # autoencoder, 10-dim code, BCE summed over pixels, the spectrally normalised D, Bernoulli mixing over k = 3)
    # with what a five-minute budget on a 2-core CPU needs (the trials behind each: docs/demo-preset.md):
    # - data: the same factor grid with sprites drawn 1.9x larger ("dsprites-procedural-xl"): at the published
    #   size the autoencoder draws every shape as one round blob within this budget;
    # - the autoencoder updated every iteration (ae_every 1), Adam lr 2e-3, batch 32: the paper's schedule, made
    #   for 500 epochs, leaves the encoder near its initialisation after a few hundred updates;
    # - width 16 for the autoencoder and D: cheaper per image and as fast to learn per image;
    # - lamb 0.2: against the summed BCE, lamb 1 lets D win and the decoder ignore it (blank mid-mixes);
    # - probe_lr 1e-3: the online probe follows the changing code;
    # - 256 kimg, and FactorVAE on 200 votes of 100 images (`amr-fast eval` runs the published counts).
    p["demo"] = replace(_DSPRITES, data="builtin:dsprites-procedural-xl", mixer="bernoulli", k=3, width=16,
                        disc_width=16, lamb=0.2, lr=2e-3, batch=32, ae_every=1, probe_lr=1e-3, total_kimg=256,
                        tick_kimg=8, snapshot_kimg=64, state_kimg=32, probe_kimg=16, factorvae_votes=200,
                        factorvae_vote_batch=100)  # fmt: skip
    return p


def _build_presets() -> tuple[dict[str, TrainConfig], dict[str, PresetRow]]:
    p, rows = _paper_presets()
    p.update(_machine_presets())
    return {name: cfg.validate() for name, cfg in p.items()}, rows


PRESETS, PRESET_ROWS = _build_presets()
PRESETS: dict[str, TrainConfig]  # name -> config
PRESET_ROWS: dict[str, PresetRow]  # paper presets (and the extensions) -> their table row, script and budget


def preset_line(name: str) -> str:
    """One line of `amr-fast train --list-presets`: name, table row, lambda, budget in kimg and in epochs."""
    cfg, row = PRESETS[name], PRESET_ROWS.get(name)
    what = f"{cfg.arch}, {cfg.method}, mixer={cfg.mixer}, k={cfg.k}"
    if row is None:
        where = "builtin data" if cfg.data else "pass data=DIR"
        return f"{name:<24} {'this machine: ' + what:<52} lambda {cfg.lamb:<4g} {cfg.total_kimg:>9g} kimg ({where})"
    return (
        f"{name:<24} {row.row:<52} lambda {cfg.lamb:<4g} {cfg.total_kimg:>9g} kimg = {row.epochs} epochs x "
        f"{row.epoch_images:,} ({row.script})" + (f" [{row.note}]" if row.note else "")
    )


# ---------------------------------------------------------------------------------------------------------------
# The Manifold Mixup classifier's presets (`amr-fast classify`).

# The public scripts' schedule of each network (vikasverma1077/manifold_mixup supervised/README.md, every dataset):
# (epochs, lr / 10 at these epochs).
PUBLIC_SCHEDULES = {
    "preactresnet18": (2000, (500, 1000, 1500)),
    "preactresnet34": (2000, (500, 1000, 1500)),
    "wrn28_10": (400, (200, 300)),
}


def _paper_preset(dataset: str, arch: str, mode: str, epoch: float, num_classes: int, flip: bool) -> ClassifyConfig:
    """The paper's CIFAR/SVHN setting (the public supervised/README.md commands): batch 100, the network's public
    schedule (`PUBLIC_SCHEDULES`: PreActResNet 2000 epochs, lr / 10 at 500/1000/1500; WRN-28-10 400 epochs, lr / 10
    at 200/300), lr 0.1, weight decay 1e-4, Nesterov momentum 0.9; mixup alpha = 1, manifold alpha = 2; random crops
    with 2-pixel padding (+ flips on CIFAR); CIFAR inputs standardised per channel. Test error every epoch (the
    public main.py validates after each), FGSM (eps on the standardised input, as the public attack) every 10
    epochs; `epoch` = images per epoch in thousands."""
    epochs, drops = PUBLIC_SCHEDULES[arch]
    norm = NORMALISATION.get(dataset, ((), ()))
    return ClassifyConfig(
        norm_mean=norm[0],
        norm_std=norm[1],
        channels=3,
        num_classes=num_classes,
        arch=arch,
        mode=mode,
        alpha={"mixup": 1.0, "manifold": 2.0}.get(mode, 1.0),
        flip=flip,
        total_kimg=epochs * epoch,
        lr_steps_kimg=tuple(d * epoch for d in drops),
        tick_kimg=epoch,
        snapshot_kimg=50 * epoch,
        state_kimg=10 * epoch,
        eval_kimg=epoch,
        fgsm_kimg=10 * epoch,
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
        fgsm_kimg=total,
        fgsm_units="pixel",  # the units of the README's Fashion-MNIST table
    )


# The paper's presets: name -> (dataset, mode), the names `<dataset>-<mode>` (PreActResNet18) and
# `<dataset>-wrn-<mode>` (WRN-28-10): every command of the public README (no WRN-28-10 cutout command).
# Datasets: (images per epoch in thousands, classes, flips); the public code's images per epoch (load_data_subset
# with the README's --labels_per_class): CIFAR-10/100 50000 (5000 / 500 per class, valid 0); SVHN 62156 (at most
# 7325 per class of the 73257 train images).
_PAPER_DATASETS = {"cifar10": (50.0, 10, True), "cifar100": (50.0, 100, True), "svhn": (62.156, 10, False)}
CLASSIFY_PAPER_PRESETS: dict[str, tuple[str, str]] = {
    "cifar10-erm": ("cifar10", "erm"),
    "cifar10-mixup": ("cifar10", "mixup"),
    "cifar10-manifold": ("cifar10", "manifold"),
    "cifar10-cutout": ("cifar10", "cutout"),
    "cifar10-wrn-erm": ("cifar10", "erm"),
    "cifar10-wrn-mixup": ("cifar10", "mixup"),
    "cifar10-wrn-manifold": ("cifar10", "manifold"),
    "cifar100-erm": ("cifar100", "erm"),
    "cifar100-mixup": ("cifar100", "mixup"),
    "cifar100-manifold": ("cifar100", "manifold"),
    "cifar100-cutout": ("cifar100", "cutout"),
    "cifar100-wrn-erm": ("cifar100", "erm"),
    "cifar100-wrn-mixup": ("cifar100", "mixup"),
    "cifar100-wrn-manifold": ("cifar100", "manifold"),
    "svhn-erm": ("svhn", "erm"),
    "svhn-mixup": ("svhn", "mixup"),
    "svhn-manifold": ("svhn", "manifold"),
    "svhn-cutout": ("svhn", "cutout"),
    "svhn-wrn-erm": ("svhn", "erm"),
    "svhn-wrn-mixup": ("svhn", "mixup"),
    "svhn-wrn-manifold": ("svhn", "manifold"),
}
CLASSIFY_PRESETS: dict[str, ClassifyConfig] = {
    **{name: _paper_preset(d, "wrn28_10" if "-wrn-" in name else "preactresnet18", m, *_PAPER_DATASETS[d])
       for name, (d, m) in CLASSIFY_PAPER_PRESETS.items()},
    **{name: _fashion_preset(name.rsplit("-", 1)[1])
       for name in ("fashion-mnist-erm", "fashion-mnist-mixup", "fashion-mnist-manifold", "fashion-mnist-cutout")},
}  # fmt: skip


def check_classify_arch_override(preset: str, changes: dict[str, Any]) -> None:
    """Refuse `arch=` on a paper preset whose public schedule is another network's (a WRN on a PreActResNet preset
    would train 2000 epochs) unless total_kimg and lr_steps_kimg are set too; names the preset to use."""
    if preset not in CLASSIFY_PAPER_PRESETS or "arch" not in changes:
        return
    if {"total_kimg", "lr_steps_kimg"} <= changes.keys():
        return
    old, new = CLASSIFY_PRESETS[preset].arch, changes["arch"]
    schedule = PUBLIC_SCHEDULES.get(new)
    if schedule is None or schedule == PUBLIC_SCHEDULES[old]:
        return  # an unknown arch is validate()'s error
    both = "set both total_kimg and lr_steps_kimg"
    same = [  # the paper preset of this dataset and mode whose network trains on new's public schedule
        name
        for name, where in CLASSIFY_PAPER_PRESETS.items()
        if where == CLASSIFY_PAPER_PRESETS[preset] and PUBLIC_SCHEDULES[CLASSIFY_PRESETS[name].arch] == schedule
    ]
    if same:
        arch = "" if CLASSIFY_PRESETS[same[0]].arch == new else f" arch={new}"
        use = f"use --preset {same[0]}{arch}, or {both}"
    else:
        use = both

    def said(arch: str) -> str:
        epochs, drops = PUBLIC_SCHEDULES[arch]
        return f"{epochs} epochs, lr / 10 at {'/'.join(map(str, drops))}"

    raise ValueError(
        f"arch={new} on preset {preset} would keep the {old} schedule ({said(old)}); the public scripts train {new} "
        f"{said(new)}: {use}"
    )


def resolve(preset: str, overrides: dict[str, str] | None = None, presets: dict | None = None) -> Any:
    """Start from presets[preset] (PRESETS, or CLASSIFY_PRESETS for the classifier), apply "field=value" overrides
    parsed by the field's type, validate."""
    presets = PRESETS if presets is None else presets
    if preset not in presets:
        close = difflib.get_close_matches(preset, presets, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        command = "classify" if presets is CLASSIFY_PRESETS else "train"
        raise ValueError(
            f"unknown preset {preset!r}{hint}; choose from: {', '.join(presets)} (`amr-fast {command} --list-presets`)"
        )
    cfg = presets[preset]
    changes = {name: parse_value(name, value, type(cfg)) for name, value in (overrides or {}).items()}
    if presets is CLASSIFY_PRESETS:
        check_classify_arch_override(preset, changes)
    return replace(cfg, **changes).validate()
