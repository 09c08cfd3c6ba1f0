"""The configurations of both trainers: frozen dataclasses, the papers' presets, one parser, actionable errors.

`TrainConfig` holds every knob of `amr-fast train` (field names are shared with amr_fast.train). `PRESETS` has
one entry per row of the AMR paper's tables 1-4 (Beckham et al., NeurIPS 2019), each equal to the public code's
experiment script of that row (`PRESET_ROWS`: the row, the script, its epochs; the table's lambda; total_kimg =
epochs x the public training split), plus small `fashion-mnist-*`, `spiral-*` and `demo` presets for this machine.
`ClassifyConfig` and `CLASSIFY_PRESETS` do the same for `amr-fast classify` (Manifold Mixup, Verma et al., ICML
2019: the paper's CIFAR-10/100 and SVHN settings as the public code runs them, and small Fashion-MNIST ones). One
parser serves both: `resolve(preset, overrides[, presets])` builds a validated config from a preset and
"field=value" strings parsed by the field's type, `from_dict(d[, cls])` reads a config.json back. This module
imports no torch.

Preset names: `<dataset>[-<code dims>][-<subset>]-<method>[-k<k>]`, e.g. `mnist-mixup`, `svhn32-5k-bernoulli`,
`cifar10-1024-mixup-k4`, `dsprites-bernoulli-k3`. Methods: `aegan` (AE+GAN, no mixing), `mixup` (a ~ U(0, 1)
per example, k = 2; Dirichlet(1) for k > 2), `bernoulli` (per-channel masks, p ~ U(0, 1) per batch; k > 2: a
uniform source per (example, channel)), `acai`
(ACAI, D regresses the folded mixing coefficient), `class` (supervised class-conditional mixer), `betavae`;
beyond the papers, `cutmix` (a box of the code's grid from the partner, area ~ U(0, 1); the AMR paper's section
5 proposal) and `spatial-bernoulli` (each code position from one of k sources).
Classifier presets: `<dataset>-<mode>` (PreActResNet18; mode erm, mixup, manifold or cutout) and
`<dataset>-wrn-<mode>` (WRN-28-10; erm, mixup, manifold).

Presets that train on a user's dataset have `data=""`: pass `data=DIR` (a directory made by `amr-fast shard`),
e.g. `amr-fast train --preset fashion-mnist-mixup data=/path/to/fashion-mnist-32`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any

ARCHS = ("amr32", "dsprites64", "mlp")
METHODS = ("amr", "acai", "betavae")
MIXERS = ("none", "mixup", "bernoulli", "class", "cutmix", "spatial_bernoulli")
RECONS = ("l1", "l2", "bce")
DISC_MIXES = ("none", "pixel", "hidden")
KWAY_SOURCES = ("uniform", "dirichlet")  # amr_fast.mixing.KWAY_SOURCES
CLASS_UNSUP_MIXERS = ("bernoulli", "mixup", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
IMPLS = ("auto", "ref", "torch", "triton")  # amr_fast.kernels.IMPLS (not imported: config must stay torch-free)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `amr-fast train` needs. Schedules are in thousands of images (kimg), never epochs."""

    # data
    data: str = ""  # dataset dir made by `amr-fast shard` (holds index.json); "builtin:dsprites-procedural"
    #                 renders a small procedural dSprites set (demo); "builtin:spiral" the 2-D spiral toy
    img_size: int = 32  # must match the index (checked before training); 1 for the spiral toy (points [B, 2])
    channels: int = 1  # image channels; 2 for the spiral toy (the two coordinates of a point)
    subset: int = 0  # train on the first `subset` labelled examples only (0 = all; the paper's SVHN-32 subsets)
    # model
    arch: str = "amr32"  # "amr32" (32x32 ACAI-style), "dsprites64" (Burgess et al.), "mlp" (spiral toy)
    width: int = 64  # base channel width of encoder/decoder (amr32: depth; dsprites64: conv channels; mlp: hidden)
    disc_width: int = 0  # base width of the discriminator; 0 = same as width
    code_channels: int = 2  # amr32 bottleneck L x 4 x 4 (L = 2, 16, 64); dsprites64 / mlp use code_dim
    code_dim: int = 10  # dsprites64 / mlp code size (treated as [B, code_dim] -> mixing over "channels")
    num_classes: int = 10  # for the probe, the class-conditional mixer and the ACGAN head
    mixer_hidden: int = 128  # hidden units of the class-conditional mixer MLP
    # objective
    method: str = "amr"  # "amr" (AE+GAN when mixer == "none"), "acai", "betavae"
    mixer: str = "mixup"  # "none", "mixup", "bernoulli", "class" (supervised class-conditional mixer), "cutmix"
    #                       (boxes of the code grid), "spatial_bernoulli" (per-position masks; amr_fast.mixing)
    k: int = 2  # number of mixed examples (2..8)
    alpha: float = 1.0  # Dirichlet(alpha) concentration for k-way mixup (k = 2 uses U(0, 1), i.e. alpha = 1);
    #                     cutmix: box area ~ Beta(alpha, alpha) (alpha = 1: U(0, 1))
    per_example_mask: bool = False  # Bernoulli p per example instead of per batch (k = 2, or kway_sources=dirichlet)
    kway_sources: str = "uniform"  # k-way Bernoulli (k >= 3): "uniform" source per (example, channel) as the public
    #                                code's gan3fm; "dirichlet": p ~ Dirichlet(1_K) per batch, source ~ p per channel
    class_unsup_mixer: str = "bernoulli"  # mixer=class: the unsupervised mix of eq. 3 that the class terms of eq. 7
    #                                      are added to ("bernoulli", "mixup"; "none" = class terms only)
    recon: str = "l1"  # "l1", "l2" (means over pixels), "bce" (sum over pixels, mean over batch)
    lamb: float = 10.0  # reconstruction weight (the tables' lambda)
    gan_weight: float = 1.0  # weight of the autoencoder's adversarial terms
    beta: float = 0.0  # consistency term |enc(x_mix) - h_mix|_1 weight
    cls_weight: float = 1.0  # supervised mixer: classification terms
    vae_beta: float = 1.0  # beta-VAE: KL weight (KL summed over code dims, mean over batch)
    disc_mix: str = "none"  # issue 6 item 4: "none", "pixel", "hidden" mixup of real/fake inside D
    disc_mix_layer: int = 1  # disc_mix "hidden": each step mixes at a layer drawn uniformly from {pixels, after D
    #                          block 1, ..., after block disc_mix_layer} (the public mugan's vh1 / vh2 = 1 / 2)
    disc_mix_alpha: float = 0.2  # disc_mix: lam ~ Beta(alpha, alpha) per example, folded to min(lam, 1 - lam) <= 0.5
    #                              on the real (the public mugan)
    # optimisation
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.99
    weight_decay: float = 1e-5
    probe_lr: float = 1e-3
    probe_beta1: float = 0.9  # the online probe's Adam (the paper presets: the networks' 0.5 / 0.99 / 1e-5, as the
    probe_beta2: float = 0.999  # public code's cls_opt_args = opt_args)
    probe_weight_decay: float = 0.0
    batch: int = 64  # global batch (all ranks, all accumulation steps)
    batch_gpu: int = 0  # per-device micro-batch; 0 = batch / world_size (accumulation derived from it)
    ae_every: int = 5  # autoencoder updated every ae_every-th iteration; D and probe every iteration
    # schedule (images, not epochs)
    total_kimg: float = 1000
    tick_kimg: float = 4  # status line + stats.jsonl row
    snapshot_kimg: float = 100  # safetensors snapshot + samples PNG
    state_kimg: float = 100  # full Accelerate state (resume)
    probe_kimg: float = 50  # online probe validation accuracy
    # runtime
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "fp32", "bf16", "fp16"
    compile: bool = False
    channels_last: bool = False
    impl: str = "auto"  # mixing kernel impl (amr_fast.kernels)
    max_nonfinite: int = 10  # consecutive non-finite losses before the run stops
    max_skipped: float = 0.01  # stop if more than this fraction of skip_window samples were unreadable (damage)
    skip_window: int = 10_000  # samples: the window max_skipped counts over

    # -----------------------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise ValueError naming the field and the fix; return self."""
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("method", self.method, METHODS)
        _check_choice("mixer", self.mixer, MIXERS)
        _check_choice("recon", self.recon, RECONS)
        _check_choice("disc_mix", self.disc_mix, DISC_MIXES)
        _check_choice("kway_sources", self.kway_sources, KWAY_SOURCES)
        _check_choice("class_unsup_mixer", self.class_unsup_mixer, CLASS_UNSUP_MIXERS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("impl", self.impl, IMPLS)
        for name in ("channels", "width", "code_channels", "code_dim", "mixer_hidden", "batch", "ae_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)}); set {name}=<positive int>")
        for name in ("disc_width", "batch_gpu", "subset", "workers", "seed", "max_nonfinite"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in (
            "lr",
            "probe_lr",
            "alpha",
            "disc_mix_alpha",
            "total_kimg",
            "tick_kimg",
            "snapshot_kimg",
            "state_kimg",
            "probe_kimg",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 (got {value})")
        for name in ("lamb", "gan_weight", "beta", "cls_weight", "vae_beta", "weight_decay", "probe_weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (got {value})")
        for name in ("beta1", "beta2", "probe_beta1", "probe_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1) (got {getattr(self, name)}); Adam's betas, e.g. 0.5/0.99")
        if not 2 <= self.k <= 8:
            raise ValueError(f"k must lie in 2..8 (got {self.k}); the paper mixes k = 2 to 8 examples")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes}); set num_classes=<labels in data>")
        check_skip_limits(self)
        if self.batch_gpu and self.batch % self.batch_gpu:
            raise ValueError(
                f"batch ({self.batch}) must be a multiple of batch_gpu ({self.batch_gpu}); "
                f"set batch_gpu to a divisor of batch or 0"
            )
        # architecture vs input size
        if self.arch == "amr32":
            if self.img_size < 8 or self.img_size & (self.img_size - 1):
                raise ValueError(
                    f"img_size must be a power of two >= 8 for arch=amr32 (got {self.img_size}); "
                    "amr32 halves the image down to a 4x4 bottleneck (32 for the paper)"
                )
        elif self.arch == "dsprites64" and self.img_size != 64:
            raise ValueError(f"img_size must be 64 for arch=dsprites64 (got {self.img_size}); set img_size=64")
        elif self.arch == "mlp" and self.img_size > 8:
            raise ValueError(
                f"img_size={self.img_size} is too large for arch=mlp (a toy MLP on channels x img_size^2 inputs); "
                "use arch=amr32 for images"
            )
        # objective combinations
        if self.method == "acai" and (self.mixer != "mixup" or self.k != 2):
            raise ValueError(
                f"method=acai needs mixer=mixup and k=2 (got mixer={self.mixer}, k={self.k}): D regresses the "
                "folded coefficient min(a, 1 - a) of a two-way mix"
            )
        if self.method == "betavae":
            if self.mixer != "none":
                raise ValueError(f"method=betavae trains no mixing; set mixer=none (got mixer={self.mixer})")
            if self.arch == "amr32":
                raise ValueError("method=betavae needs a vector code; set arch=dsprites64 or arch=mlp")
        if self.disc_mix != "none" and self.method != "amr":
            raise ValueError(f"disc_mix={self.disc_mix} needs method=amr (got method={self.method}); set disc_mix=none")
        if self.disc_mix == "hidden" and self.disc_mix_layer < 1:
            raise ValueError(f"disc_mix_layer must be >= 1 (got {self.disc_mix_layer}): mix after that many D blocks")
        return self


def check_skip_limits(cfg) -> None:
    """Validate the data-damage guard of either trainer (`max_skipped`, `skip_window`; amr_fast.data.loader)."""
    if not (math.isfinite(cfg.max_skipped) and 0 <= cfg.max_skipped <= 1):
        raise ValueError(f"max_skipped must be a fraction in [0, 1] (got {cfg.max_skipped}), e.g. max_skipped=0.05")
    if cfg.skip_window < 1:
        raise ValueError(f"skip_window must be >= 1 samples (got {cfg.skip_window}), e.g. skip_window=10000")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


# ---------------------------------------------------------------------------------------------------------------
# The one parser of both configs: "field=value" overrides and the JSON round trip, typed by the field annotations
# (int, float, bool, str, and tuple[int, ...] / tuple[float, ...] written comma-separated: mix_layers=0,1,2).

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _unknown_field(name: str, cls: type = TrainConfig) -> ValueError:
    known = _field_names(cls)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
    return ValueError(f"unknown config field {name!r}{hint}")


def _expected_type(name: str, cls: type = TrainConfig) -> tuple[type, bool]:
    """(scalar type, whether the field is a tuple of it), read from the annotation, e.g. "tuple[float, ...]"."""
    annotation = str(next(f.type for f in fields(cls) if f.name == name))
    if annotation.startswith("tuple["):
        return _SCALARS[annotation[len("tuple[") :].split(",")[0].strip()], True
    return _SCALARS[annotation], False


def _parse_scalar(kind: type, name: str, text: str, example: Any) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name} expects a bool (true/false/1/0); got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{name} expects {'an int' if kind is int else 'a float'} (e.g. {name}={example}); "
                             f"got {text!r}") from None  # fmt: skip
    return text


def parse_value(name: str, text: str, cls: type = TrainConfig) -> Any:
    """Parse the string `text` as the type of field `name` of `cls` (a tuple field takes comma-separated items)."""
    if name not in _field_names(cls):
        raise _unknown_field(name, cls)
    kind, is_tuple = _expected_type(name, cls)
    example = getattr(cls(), name)
    if not is_tuple:
        return _parse_scalar(kind, name, text, example)
    example = ",".join(str(v) for v in example)
    return tuple(_parse_scalar(kind, name, v, example) for v in text.strip("()[] ").split(",") if v.strip())


def _coerce(name: str, value: Any, cls: type = TrainConfig) -> Any:
    """Type-check a JSON value for field `name` (ints are accepted for floats, lists for tuples)."""
    kind, is_tuple = _expected_type(name, cls)
    if is_tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} expects a list of {kind.__name__}; got {value!r} ({type(value).__name__})")
        return tuple(_coerce_scalar(name, kind, v) for v in value)
    return _coerce_scalar(name, kind, value)


def _coerce_scalar(name: str, kind: type, value: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} expects type {kind.__name__}; got {value!r} ({type(value).__name__})")
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["lr=1e-3", "k=3"] -> {"lr": "1e-3", "k": "3"}; a malformed item says how to write it."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like field=value, e.g. lr=2e-4 or data=/path/to/shards")
        name, value = item.split("=", 1)
        out[name.strip()] = value
    return out


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


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=False)


def from_dict(d: dict, cls: type = TrainConfig) -> Any:
    """Inverse of `dataclasses.asdict` / `to_json` for `cls` (TrainConfig or ClassifyConfig): unknown keys and
    wrong types are errors naming the field; JSON lists become tuples."""
    if cls is ClassifyConfig:  # configs written before a field existed, as they ran: the BN-ReLU head, FGSM in
        #                          pixel units with every evaluation
        d = {"head_bn": True, "fgsm_units": "pixel", "fgsm_kimg": d.get("eval_kimg", 5_000), **d}
    for name in d:
        if name not in _field_names(cls):
            raise _unknown_field(name, cls)
    return cls(**{name: _coerce(name, value, cls) for name, value in d.items()}).validate()


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

    @property
    def total_kimg(self) -> float:
        return self.epochs * self.epoch_images / 1000


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
_PAPER: list[tuple[str, int, str, str, int, list[tuple[str, int, float, int]]]] = [
    ("mnist", 1, "MNIST", "mnist", 50_000,
     [("aegan", 2, 5, 2000), ("mixup", 2, 10, 2000), ("bernoulli", 2, 10, 2000), ("mixup", 3, 20, 2000),
      ("acai", 2, 2, 2000)]),
    ("kmnist", 1, "KMNIST", "kmnist", 50_000,
     [("aegan", 2, 10, 5000), ("mixup", 2, 10, 6000), ("bernoulli", 2, 10, 6000), ("mixup", 3, 10, 6000),
      ("acai", 2, 10, 6000)]),
    ("svhn32", 1, "SVHN", "svhn32", 65_931,
     [("aegan", 2, 5, 4500), ("mixup", 2, 10, 6000), ("bernoulli", 2, 10, 4500), ("mixup", 3, 10, 6000),
      ("acai", 2, 2, 6000)]),
    ("svhn32-1k", 2, "SVHN(1k)", "svhn32_1k", 1_000,
     [("aegan", 2, 10, 6000), ("mixup", 2, 10, 6000), ("bernoulli", 2, 20, 6000), ("mixup", 3, 10, 6000),
      ("acai", 2, 10, 6000)]),
    ("svhn32-5k", 2, "SVHN(5k)", "svhn32_5k", 5_000,
     [("aegan", 2, 10, 6000), ("mixup", 2, 20, 6000), ("bernoulli", 2, 20, 6000), ("mixup", 3, 10, 7000),
      ("acai", 2, 10, 7000)]),
    ("svhn32-10k", 2, "SVHN(10k)", "svhn32_10k", 10_000,
     [("aegan", 2, 10, 6000), ("mixup", 2, 10, 6000), ("bernoulli", 2, 10, 6000), ("mixup", 3, 10, 6000),
      ("acai", 2, 2, 6000)]),
    ("svhn32-20k", 2, "SVHN(20k)", "svhn32_20k", 20_000,
     [("aegan", 2, 20, 4000), ("mixup", 2, 10, 4000), ("bernoulli", 2, 10, 4000), ("mixup", 3, 10, 4000),
      ("acai", 2, 5, 4000)]),
    ("svhn256", 3, "SVHN (256)", "svhn256", 65_931,
     [("aegan", 2, 5, 6000), ("mixup", 2, 5, 6000), ("bernoulli", 2, 10, 4500), ("mixup", 3, 5, 4500),
      ("mixup", 4, 5, 4500), ("mixup", 6, 5, 6000), ("mixup", 8, 5, 4500), ("acai", 2, 2, 4500)]),
    ("cifar10-256", 3, "CIFAR10 (256)", "cifar10", 40_000,
     [("aegan", 2, 50, 3000), ("mixup", 2, 50, 3000), ("bernoulli", 2, 50, 3000), ("mixup", 3, 50, 3000),
      ("mixup", 4, 50, 3000), ("mixup", 6, 50, 3000), ("mixup", 8, 50, 3000), ("acai", 2, 20, 3000)]),
    ("cifar10-1024", 3, "CIFAR10 (1024)", "cifar10_1024", 40_000,
     [("aegan", 2, 50, 8000), ("mixup", 2, 50, 8000), ("bernoulli", 2, 50, 8000), ("mixup", 3, 50, 8000),
      ("mixup", 4, 50, 8000), ("mixup", 6, 50, 8000), ("mixup", 8, 50, 8000), ("acai", 2, 20, 8000)]),
    ("dsprites", 4, "dSprites", "dsprite", 737_280,
     [("betavae", 2, 1, 500), ("aegan", 2, 1, 500), ("mixup", 2, 1, 500), ("bernoulli", 2, 1, 500),
      ("mixup", 3, 1, 1000), ("bernoulli", 3, 1, 500)]),
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


def _build_presets() -> tuple[dict[str, TrainConfig], dict[str, PresetRow]]:
    p: dict[str, TrainConfig] = {}
    rows: dict[str, PresetRow] = {}
    # The public code's 32x32 model: depth 16 for the autoencoder and D ("arch_acai_kyle*.py"); the probe shares
    # the networks' optimiser (cls_opt_args = opt_args: Adam lr 1e-4, betas (0.5, 0.99), weight decay 1e-5).
    amr32 = TrainConfig(arch="amr32", img_size=32, width=16, code_channels=2, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                        weight_decay=1e-5, probe_lr=1e-4, probe_beta1=0.5, probe_beta2=0.99, probe_weight_decay=1e-5,
                        ae_every=5, recon="l1", tick_kimg=10, snapshot_kimg=1000, state_kimg=1000,
                        probe_kimg=100, channels_last=True)  # fmt: skip
    # Table 4: dSprites, Burgess et al. autoencoder, 10-dim code, BCE-sum reconstruction, D width 32 (--ndf=32; the
    # AE+GAN script passes none: task_launcher's default 64), no weight decay. beta-VAE: exps/dsprite/bvae_beta100.sh,
    # beta 100 with the public code's KL *mean* over the 10 code dims, i.e. vae_beta = 10 with our KL summed over
    # dims; Adam beta1 0.9 as its script, and no D. Both families run channels-last (NHWC): with malloc keeping freed
    # blocks (amr_fast.precision.keep_freed_memory) and our NHWC InstanceNorm, NHWC steps ran 1.06-1.19x (fp32)
    # and 1.14-1.19x (bf16) the NCHW ones on the idle 2-core CPU (`amr-fast bench train`, 2026-12-01 17:50 UTC).
    dsprites = TrainConfig(arch="dsprites64", img_size=64, channels=1, width=32, disc_width=32, code_dim=10,
                           num_classes=3, recon="bce", lamb=1.0, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                           weight_decay=0.0, probe_lr=1e-4, probe_beta1=0.5, probe_beta2=0.99, ae_every=5,
                           tick_kimg=10, snapshot_kimg=1000, state_kimg=1000, probe_kimg=100,
                           channels_last=True)  # fmt: skip
    bases = {
        "mnist": replace(amr32, channels=1),
        "kmnist": replace(amr32, channels=1),
        "svhn32": replace(amr32, channels=3),
        "svhn256": replace(amr32, channels=3, code_channels=16),
        "cifar10-256": replace(amr32, channels=3, code_channels=16),
        "cifar10-1024": replace(amr32, channels=3, code_channels=64),
        "dsprites": dsprites,
    }
    method_extra = {
        ("dsprites", "aegan"): dict(disc_width=64),
        ("dsprites", "betavae"): dict(vae_beta=10.0, beta1=0.9, probe_beta1=0.9, ae_every=1),
    }
    for prefix, table, dataset, folder, epoch_images, table_rows in _PAPER:
        base = bases.get(prefix) or replace(bases["svhn32"], subset=int(prefix.split("-")[1][:-1]) * 1000)
        for method, k, lamb, epochs in table_rows:
            name = f"{prefix}-{method}" + (f"-k{k}" if k > 2 else "")
            extra = method_extra.get((prefix, method), {})
            row = PresetRow(
                row=f"table {table}, {dataset}: {_ROW_NAMES[method]}" + (f" k={k}" if method in _METHODS_K else ""),
                script=_script(folder, method, k, lamb),
                epochs=epochs,
                epoch_images=epoch_images,
            )
            p[name] = replace(base, k=k, lamb=float(lamb), total_kimg=row.total_kimg, **_METHODS[method], **extra)
            rows[name] = row
    for name, lamb, script, epochs, epoch_images, why in _EXTRA:
        parts = name.split("-")  # <prefix>-<method>[-k<k>]
        k = int(parts.pop()[1:]) if parts[-1].startswith("k") else 2
        method, prefix = parts.pop(), "-".join(parts)
        row = PresetRow(row=f"not in the tables ({why})", script=script, epochs=epochs, epoch_images=epoch_images)
        p[name] = replace(bases[prefix], k=k, lamb=float(lamb), total_kimg=row.total_kimg, **_METHODS[method])
        rows[name] = row
    # This machine: Fashion-MNIST resized to 32x32 (`amr-fast shard`), 32-dim code; pass data=DIR. A short budget,
    # so the probe learns faster than the paper's (lr 1e-3, Adam's default betas, no weight decay).
    fmnist = replace(amr32, channels=1, lamb=10.0, probe_lr=1e-3, probe_beta1=0.9, probe_beta2=0.999,
                     probe_weight_decay=0.0, total_kimg=600, tick_kimg=4, snapshot_kimg=100, state_kimg=50,
                     probe_kimg=20)  # fmt: skip
    for method, k in (
        ("aegan", 2),
        ("mixup", 2),
        ("bernoulli", 2),
        ("mixup", 3),
        ("class", 2),
        ("cutmix", 2),
        ("cutmix", 3),
        ("spatial-bernoulli", 2),
    ):  # the last three: beyond the papers
        p[f"fashion-mnist-{method}" + (f"-k{k}" if k > 2 else "")] = replace(fmnist, k=k, **_METHODS[method])
    # The 2-D spiral toy (the AMR supplement): points [B, 2] (channels=2, img_size=1), MLP autoencoder, 2-dim code;
    # "consistency" adds beta |enc(x_mix) - h_mix|_1.
    spiral = TrainConfig(data="builtin:spiral", arch="mlp", img_size=1, channels=2, width=128, code_dim=2,
                         num_classes=2, recon="l2", lamb=10.0, batch=64, weight_decay=0.0, ae_every=1,
                         total_kimg=200, tick_kimg=4, snapshot_kimg=50, state_kimg=50, probe_kimg=20)  # fmt: skip
    p["spiral-aegan"] = replace(spiral, **_METHODS["aegan"])
    p["spiral-mixup"] = replace(spiral, **_METHODS["mixup"])
    p["spiral-mixup-consistency"] = replace(p["spiral-mixup"], beta=1.0)
    # The README's demo (`make demo`): AMR with k = 3 Bernoulli mixing on procedural dSprites, about five minutes
    # on a 2-core CPU. It keeps the maths of table 4's best AMR row (`dsprites-bern-k3`: the Burgess et al.
    # autoencoder with a 10-dim code, BCE summed over pixels, the spectrally normalised D, the same AE / D losses,
    # Bernoulli mixing of the code over k = 3 examples) and changes what a five-minute budget needs; each change was
    # tried on this machine (runs of 128 and 256 kimg, one thread each, two side by side):
    # - data: the same 737,280-point factor grid drawn 1.9x larger ("dsprites-procedural-xl", 20,000 training
    #   images; a scale-0.5 square is 15 px, scale 1 31 px, centres within the middle third). At the published
    #   size the autoencoder drew squares, ellipses and hearts as one round blob; at 1.5x ("-large") squares were
    #   still rounded after 256 kimg (FactorVAE 0.47-0.59); at 1.9x they come out square, rotated, from ~128 kimg
    #   (FactorVAE 0.73-0.75).
    # - mixer: Bernoulli k = 3 (the paper's best dSprites row) rather than mixup k = 3: smoother interpolations,
    #   better recon (0.028 vs 0.036 L1 at 128 kimg on "-large") and FactorVAE (0.54 vs 0.50).
    # - schedule: the autoencoder is updated every iteration (ae_every 1; the paper: every 5th), Adam lr 2e-3
    #   (1e-4), batch 32 (64): the paper's schedule, made for 500 epochs, leaves the encoder near its
    #   initialisation after a few hundred updates.
    # - width 16 for the autoencoder and D (32): 2-3x cheaper per image and as fast to learn per image here.
    # - lamb 0.2 (1): the adversarial terms weigh 5x more against the summed BCE. With lamb 1, D wins easily and
    #   the decoder ignores it: the middle of an interpolation fades to a blank image (as the pixel blend does);
    #   with 0.2 the decoded mixes are sprites that move and change between the sources.
    # - probe_lr 1e-3 (1e-4): the online probe follows the changing code.
    # - budget 256 kimg (8,000 iterations; the paper: 500 epochs of the full grid): ~1,100 img/s on this CPU in bf16.
    # The online (linear) probe on shape stays ~0.48 (chance 0.33) whatever we tried: the code holds the shape
    # (an MLP probe on the final code reads it at ~0.99) but not linearly; the run's summary prints both.
    p["demo"] = replace(dsprites, data="builtin:dsprites-procedural-xl", mixer="bernoulli", k=3, width=16,
                        disc_width=16, lamb=0.2, lr=2e-3, batch=32, ae_every=1, probe_lr=1e-3, total_kimg=256,
                        tick_kimg=8, snapshot_kimg=64, state_kimg=32, probe_kimg=16)  # fmt: skip
    return {name: cfg.validate() for name, cfg in p.items()}, rows


PRESETS, PRESET_ROWS = _build_presets()
PRESETS: dict[str, TrainConfig]  # name -> config
PRESET_ROWS: dict[str, PresetRow]  # paper presets (and the extensions) -> their table row, script and budget


def probe_adam_args(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the online probe's torch.optim.Adam (the public code: the networks' own settings)."""
    return dict(lr=cfg.probe_lr, betas=(cfg.probe_beta1, cfg.probe_beta2), weight_decay=cfg.probe_weight_decay)


def preset_line(name: str) -> str:
    """One line of `amr-fast train --list-presets`: name, table row, lambda, budget in kimg and in epochs."""
    cfg, row = PRESETS[name], PRESET_ROWS.get(name)
    what = f"{cfg.arch}, {cfg.method}, mixer={cfg.mixer}, k={cfg.k}"
    if row is None:
        where = "builtin data" if cfg.data else "pass data=DIR"
        return f"{name:<24} {'this machine: ' + what:<52} lambda {cfg.lamb:<4g} {cfg.total_kimg:>9g} kimg ({where})"
    return (
        f"{name:<24} {row.row:<52} lambda {cfg.lamb:<4g} {cfg.total_kimg:>9g} kimg = {row.epochs} epochs x "
        f"{row.epoch_images:,} ({row.script})"
    )


# ---------------------------------------------------------------------------------------------------------------
# The Manifold Mixup classifier (`amr-fast classify`) and its presets.

CLASSIFY_ARCHS = ("preactresnet18", "preactresnet34", "wrn28_10")
MODES = ("erm", "mixup", "manifold", "cutout")
LOSSES = ("bce", "ce")
FGSM_UNITS = ("normalised", "pixel")
# The public scripts' schedule of each network (vikasverma1077/manifold_mixup supervised/README.md, every dataset):
# (epochs, lr / 10 at these epochs).
PUBLIC_SCHEDULES = {
    "preactresnet18": (2000, (500, 1000, 1500)),
    "preactresnet34": (2000, (500, 1000, 1500)),
    "wrn28_10": (400, (200, 300)),
}


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything `amr-fast classify` needs (Verma et al., ICML 2019). Schedules in kimg, never epochs."""

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
    state_kimg: float = 5_000  # full training state (resume)
    eval_kimg: float = 5_000  # test error (always at the end too)
    fgsm_kimg: float = 5_000  # FGSM errors, with a test error (always at the end too)
    fgsm_eps: tuple[float, ...] = (0.03,)  # FGSM step sizes, in fgsm_units
    fgsm_units: str = "normalised"  # "normalised": eps on the standardised input (pixel - mean) / std, no clipping
    #                                 (the public attacks.py); "pixel": eps in [0, 1] pixels, clamped to the image
    eval_batch: int = 500  # images per evaluation batch on each process (no effect on the figures; lower on OOM)
    eval_max: int = 0  # evaluate on at most this many images per rank (0 = the whole split)
    # runtime
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # "auto" (as launched, else bf16 on CUDA and native-bf16 CPUs: amr_fast.precision), "fp32",
    #                           "bf16", "fp16"
    impl: str = "auto"  # mixing kernel impl (amr_fast.kernels)
    max_nonfinite: int = 10  # non-finite losses/gradients in a row (each step skipped) before the run stops
    max_skipped: float = 0.01  # stop if more than this fraction of skip_window samples were unreadable (damage)
    skip_window: int = 10_000  # samples: the window max_skipped counts over

    def validate(self) -> ClassifyConfig:
        """Raise ValueError naming the field and the fix; returns self."""
        choices = {"arch": CLASSIFY_ARCHS, "mode": MODES, "loss": LOSSES, "precision": PRECISIONS, "impl": IMPLS,
                   "fgsm_units": FGSM_UNITS}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; use one of {', '.join(allowed)}")
        if self.mode in ("mixup", "manifold") and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 for mode={self.mode} (the paper: 1 for mixup, 2 for manifold)")
        if self.mode == "manifold" and (not self.mix_layers or min(self.mix_layers) < 0):
            raise ValueError("mix_layers must list layer indices >= 0 (0 = input), e.g. mix_layers=0,1,2")
        positive = ("batch", "total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "eval_kimg", "fgsm_kimg",
                    "eval_batch", "lr", "width")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.max_nonfinite < 1:
            raise ValueError(f"max_nonfinite must be >= 1 (got {self.max_nonfinite})")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes})")
        check_skip_limits(self)
        if any(e < 0 for e in self.fgsm_eps):
            raise ValueError(f"fgsm_eps must be >= 0 (in fgsm_units={self.fgsm_units}); got {self.fgsm_eps}")
        if (self.norm_mean or self.norm_std) and not len(self.norm_mean) == len(self.norm_std) == self.channels:
            raise ValueError(f"norm_mean and norm_std need {self.channels} values each (one per channel) or none")
        if self.mode == "cutout" and not 0 < self.cutout_size <= self.img_size:
            raise ValueError(f"cutout_size must lie in (0, img_size={self.img_size}]; got {self.cutout_size}")
        return self


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


# The paper's datasets: (name, images per epoch in thousands, classes, flips). Images per epoch of the public code
# (load_data_subset with the README's --labels_per_class): CIFAR-10/100 50000 (5000 / 500 per class, valid 0); SVHN
# 62156 (at most 7325 per class of the 73257 train images).
_PAPER_DATASETS = [("cifar10", 50.0, 10, True), ("cifar100", 50.0, 100, True), ("svhn", 62.156, 10, False)]
# The networks of the public README's commands and their modes (no WRN-28-10 cutout command).
_PAPER_ARCH_MODES = (("preactresnet18", MODES), ("wrn28_10", ("erm", "mixup", "manifold")))
_PAPER_ROWS = [
    (dataset, arch, mode, epoch, classes, flip)
    for dataset, epoch, classes, flip in _PAPER_DATASETS
    for arch, modes in _PAPER_ARCH_MODES
    for mode in modes
]


def paper_preset_name(dataset: str, arch: str, mode: str) -> str:
    """`<dataset>-<mode>` (PreActResNet18) or `<dataset>-wrn-<mode>` (WRN-28-10)."""
    return f"{dataset}-{'wrn-' if arch == 'wrn28_10' else ''}{mode}"


# The paper's presets: name -> (dataset, mode).
CLASSIFY_PAPER_PRESETS = {paper_preset_name(d, a, m): (d, m) for d, a, m, *_ in _PAPER_ROWS}
CLASSIFY_PRESETS: dict[str, ClassifyConfig] = {
    **{paper_preset_name(d, a, m): _paper_preset(d, a, m, *rest) for d, a, m, *rest in _PAPER_ROWS},
    **{f"fashion-mnist-{m}": _fashion_preset(m) for m in MODES},
}


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
