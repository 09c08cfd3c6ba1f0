"""Training configuration: one frozen dataclass, the paper's presets, and validation with actionable errors.

`TrainConfig` holds every knob of `amr-fast train` (field names are shared with amr_fast.train). `PRESETS` has
one entry per row of the AMR paper's tables 1-4 (Beckham et al., NeurIPS 2019) with the hyperparameters of the
public code's experiment scripts (Adam lr 1e-4, betas (0.5, 0.99), weight decay 1e-5, batch 64, the tables'
lambda), plus small `fashion-mnist-*`, `spiral-*` and `demo` presets for this machine. `resolve(preset,
overrides)` builds a validated config from a preset and "field=value" strings, parsed by the field's type.

Preset names: `<dataset>[-<code dims>][-<subset>]-<method>[-k<k>]`, e.g. `mnist-mixup`, `svhn32-5k-bernoulli`,
`cifar10-1024-mixup-k4`, `dsprites-bernoulli-k3`. Methods: `aegan` (AE+GAN, no mixing), `mixup` (a ~ U(0, 1)
per example, k = 2; Dirichlet(1) for k > 2), `bernoulli` (per-channel masks, p ~ U(0, 1) per batch), `acai`
(ACAI, D regresses the folded mixing coefficient), `class` (supervised class-conditional mixer), `betavae`.

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
MIXERS = ("none", "mixup", "bernoulli", "class")
RECONS = ("l1", "l2", "bce")
DISC_MIXES = ("none", "pixel", "hidden")
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
    mixer: str = "mixup"  # "none", "mixup", "bernoulli", "class" (supervised class-conditional mixer)
    k: int = 2  # number of mixed examples (2..8)
    alpha: float = 1.0  # Dirichlet(alpha) concentration for k-way mixup (k = 2 uses U(0, 1), i.e. alpha = 1)
    per_example_mask: bool = False  # Bernoulli p per example instead of per batch
    recon: str = "l1"  # "l1", "l2" (means over pixels), "bce" (sum over pixels, mean over batch)
    lamb: float = 10.0  # reconstruction weight (the tables' lambda)
    gan_weight: float = 1.0  # weight of the autoencoder's adversarial terms
    beta: float = 0.0  # consistency term |enc(x_mix) - h_mix|_1 weight
    cls_weight: float = 1.0  # supervised mixer: classification terms
    vae_beta: float = 1.0  # beta-VAE: KL weight (KL summed over code dims, mean over batch)
    disc_mix: str = "none"  # issue 6 item 4: "none", "pixel", "hidden" mixup of real/fake inside D
    disc_mix_layer: int = 1  # disc_mix "hidden": mix after this many D blocks (amr32 32x32: 1..4, dsprites64: 1..5)
    # optimisation
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.99
    weight_decay: float = 1e-5
    probe_lr: float = 1e-3
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

    # -----------------------------------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Raise ValueError naming the field and the fix; return self."""
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("method", self.method, METHODS)
        _check_choice("mixer", self.mixer, MIXERS)
        _check_choice("recon", self.recon, RECONS)
        _check_choice("disc_mix", self.disc_mix, DISC_MIXES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("impl", self.impl, IMPLS)
        for name in ("channels", "width", "code_channels", "code_dim", "mixer_hidden", "batch", "ae_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)}); set {name}=<positive int>")
        for name in ("disc_width", "batch_gpu", "subset", "workers", "seed", "max_nonfinite"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("lr", "probe_lr", "alpha", "total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "probe_kimg"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 (got {value})")
        for name in ("lamb", "gan_weight", "beta", "cls_weight", "vae_beta", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (got {value})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1) (got {getattr(self, name)}); Adam's betas, e.g. 0.5/0.99")
        if not 2 <= self.k <= 8:
            raise ValueError(f"k must lie in 2..8 (got {self.k}); the paper mixes k = 2 to 8 examples")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (got {self.num_classes}); set num_classes=<labels in data>")
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


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


# ---------------------------------------------------------------------------------------------------------------
# Overrides, JSON round trip.

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrainConfig)}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _unknown_field(name: str) -> ValueError:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(FIELDS)}"
    return ValueError(f"unknown config field {name!r}{hint}")


def _expected_type(name: str) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[str(FIELDS[name].type)]  # the annotation


def parse_value(name: str, text: str) -> Any:
    """Parse the string `text` as the type of field `name` (int, float, bool or str)."""
    if name not in FIELDS:
        raise _unknown_field(name)
    kind = _expected_type(name)
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name} expects a bool (true/false/1/0); got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(
                f"{name} expects an int (e.g. {name}={getattr(TrainConfig(), name)}); got {text!r}"
            ) from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{name} expects a float (e.g. {name}={getattr(TrainConfig(), name)}); got {text!r}"
            ) from None
    return text


def _coerce(name: str, value: Any) -> Any:
    """Type-check a JSON value for field `name` (ints are accepted for floats)."""
    kind = _expected_type(name)
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


def resolve(preset: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """Start from PRESETS[preset], apply "field=value" overrides parsed by the field's type, validate."""
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown preset {preset!r}{hint}; choose from: {', '.join(PRESETS)} (`amr-fast train --list-presets`)"
        )
    cfg = PRESETS[preset]
    changes = {name: parse_value(name, value) for name, value in (overrides or {}).items()}
    return replace(cfg, **changes).validate()


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=False)


def from_dict(d: dict) -> TrainConfig:
    """Inverse of `dataclasses.asdict` / `to_json`: unknown keys and wrong types are errors naming the field."""
    for name in d:
        if name not in FIELDS:
            raise _unknown_field(name)
    return TrainConfig(**{name: _coerce(name, value) for name, value in d.items()}).validate()


# ---------------------------------------------------------------------------------------------------------------
# Presets. Sources: the public AMR code's exps/*/*.sh (Adam 1e-4, betas 0.5/0.99, weight decay 1e-5, batch 64,
# ae updated every 5th iteration; exps/README.md maps its folders to the tables) and the paper's tables: 1 (32-dim
# codes: MNIST, KMNIST, SVHN-32), 2 (SVHN-32 trained on 1k/5k/10k/20k examples), 3 (SVHN-256, CIFAR-10-256,
# CIFAR-10-1024, k = 2..8), 4 (dSprites). Script names there: baseline = AE+GAN, mixup = mixup k=2, mixupfm2 =
# Bernoulli k=2, ganXf = mixup k=X, ganXfm = Bernoulli k=X, acaif3 = ACAI. Where a folder holds a lambda sweep
# we took the value shared by most of its scripts (listed below); the paper reports the best of its sweep.

_METHODS: dict[str, dict[str, Any]] = {
    "aegan": dict(method="amr", mixer="none"),
    "mixup": dict(method="amr", mixer="mixup"),
    "bernoulli": dict(method="amr", mixer="bernoulli"),
    "acai": dict(method="acai", mixer="mixup"),
    "class": dict(method="amr", mixer="class"),
    "betavae": dict(method="betavae", mixer="none"),
}


def _rows(prefix: str, base: TrainConfig, rows: list[tuple[str, int, dict[str, Any]]]) -> dict[str, TrainConfig]:
    """rows: (method, k, extra fields) -> {"<prefix>-<method>[-k<k>]": config}."""
    out = {}
    for method, k, extra in rows:
        name = f"{prefix}-{method}" + (f"-k{k}" if k > 2 else "")
        out[name] = replace(base, k=k, **_METHODS[method], **extra)
    return out


def _build_presets() -> dict[str, TrainConfig]:
    p: dict[str, TrainConfig] = {}
    # The public code's 32x32 model: depth 16 for the autoencoder and D ("arch_acai_kyle*.py"), 2000 epochs of
    # 60k images = 120000 kimg for MNIST / KMNIST (SVHN: 73k images).
    # The probe shares the public code's optimiser settings (cls_opt_args = opt_args: Adam lr 1e-4).
    amr32 = TrainConfig(arch="amr32", img_size=32, width=16, code_channels=2, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                        weight_decay=1e-5, probe_lr=1e-4, ae_every=5, recon="l1", tick_kimg=10, snapshot_kimg=1000,
                        state_kimg=1000, probe_kimg=100)  # fmt: skip
    table1 = [("aegan", 2, {}), ("acai", 2, {}), ("mixup", 2, {}), ("bernoulli", 2, {}),
              ("mixup", 3, {}), ("bernoulli", 3, {})]  # fmt: skip
    # Table 1: lambda 10 (exps/{mnist,kmnist,svhn32}/*_lamb10.sh; svhn32 also has gan4f = mixup k=4).
    p.update(_rows("mnist", replace(amr32, channels=1, lamb=10.0, total_kimg=120_000), table1))
    p.update(_rows("kmnist", replace(amr32, channels=1, lamb=10.0, total_kimg=120_000), table1))
    svhn32 = replace(amr32, channels=3, lamb=10.0, total_kimg=146_000)
    p.update(_rows("svhn32", svhn32, table1 + [("mixup", 4, {})]))
    # Table 2: SVHN-32 with 1k / 5k / 10k / 20k labelled training examples (same model and lambda).
    for n in (1, 5, 10, 20):
        rows = [("aegan", 2, {}), ("acai", 2, {}), ("mixup", 2, {}), ("bernoulli", 2, {})]
        p.update(_rows(f"svhn32-{n}k", replace(svhn32, subset=n * 1000), rows))
    # Table 3: 256- and 1024-dim codes, k-way mixup; lambda 5 (SVHN-256) and 50 (CIFAR-10), ACAI lambda 2 / 10
    # (exps/svhn256/acaif3_lamb2.sh; exps/cifar10*/acaif3_lamb{5,10,20,50}.sh: 10). CIFAR-10: 3000 epochs (256-dim)
    # and 8000 epochs (1024-dim) of 50k images.
    table3 = [("aegan", 2, {}), ("mixup", 2, {}), ("bernoulli", 2, {})] + [("mixup", k, {}) for k in (3, 4, 6, 8)]
    p.update(_rows("svhn256", replace(svhn32, code_channels=16, lamb=5.0), table3))
    p["svhn256-acai"] = replace(svhn32, code_channels=16, lamb=2.0, **_METHODS["acai"])
    for dims, L, kimg in ((256, 16, 150_000), (1024, 64, 400_000)):
        cifar = replace(amr32, channels=3, code_channels=L, lamb=50.0, total_kimg=kimg)
        p.update(_rows(f"cifar10-{dims}", cifar, table3))
        p[f"cifar10-{dims}-acai"] = replace(cifar, lamb=10.0, **_METHODS["acai"])
    # Table 4: dSprites, Burgess et al. autoencoder, 10-dim code, BCE-sum reconstruction, lambda 1, D width 32
    # (exps/dsprite/*.sh); 500 epochs of 737k images. beta-VAE: beta 100 with the public code's KL *mean* over the
    # 10 code dims, i.e. vae_beta = 10 with our KL summed over dims; Adam beta1 0.9 as its script. channels_last: this
    # model has no norms, and its NHWC convolutions run 1.3-1.4x faster on CPU in fp32 and bf16 (`bench train`).
    dsprites = TrainConfig(arch="dsprites64", img_size=64, channels=1, width=32, disc_width=32, code_dim=10,
                           num_classes=3, recon="bce", lamb=1.0, batch=64, lr=1e-4, beta1=0.5, beta2=0.99,
                           weight_decay=0.0, probe_lr=1e-4, ae_every=5, total_kimg=368_640, tick_kimg=10,
                           snapshot_kimg=1000, state_kimg=1000, probe_kimg=100,
                           channels_last=True)  # fmt: skip
    table4 = [("aegan", 2, {}), ("mixup", 2, {}), ("mixup", 3, {}), ("bernoulli", 2, {}), ("bernoulli", 3, {}),
              ("betavae", 2, dict(vae_beta=10.0, beta1=0.9, ae_every=1))]  # fmt: skip
    p.update(_rows("dsprites", dsprites, table4))
    # This machine: Fashion-MNIST resized to 32x32 (`amr-fast shard`), 32-dim code; pass data=DIR.
    fmnist = replace(amr32, channels=1, lamb=10.0, probe_lr=1e-3, total_kimg=600, tick_kimg=4, snapshot_kimg=100,
                     state_kimg=50, probe_kimg=20)  # fmt: skip
    p.update(_rows("fashion-mnist", fmnist, [("aegan", 2, {}), ("mixup", 2, {}), ("bernoulli", 2, {}),
                                             ("mixup", 3, {}), ("class", 2, {})]))  # fmt: skip
    # The 2-D spiral toy (the AMR supplement): points [B, 2] (channels=2, img_size=1), MLP autoencoder, 2-dim code;
    # "consistency" adds beta |enc(x_mix) - h_mix|_1.
    spiral = TrainConfig(data="builtin:spiral", arch="mlp", img_size=1, channels=2, width=128, code_dim=2,
                         num_classes=2, recon="l2", lamb=10.0, batch=64, weight_decay=0.0, ae_every=1,
                         total_kimg=200, tick_kimg=4, snapshot_kimg=50, state_kimg=50, probe_kimg=20)  # fmt: skip
    p.update(_rows("spiral", spiral, [("aegan", 2, {}), ("mixup", 2, {})]))
    p["spiral-mixup-consistency"] = replace(p["spiral-mixup"], beta=1.0)
    # The README's demo: procedural dSprites, AMR with k = 3 Bernoulli mixing, a few minutes on a 2-core CPU.
    p["demo"] = replace(dsprites, data="builtin:dsprites-procedural", mixer="bernoulli", k=3, probe_lr=1e-3,
                        total_kimg=40, tick_kimg=4, snapshot_kimg=20, state_kimg=20, probe_kimg=20, ae_every=1,
                        lr=2e-4)  # fmt: skip
    return {name: cfg.validate() for name, cfg in p.items()}


PRESETS: dict[str, TrainConfig] = _build_presets()

__all__ = ["TrainConfig", "PRESETS", "resolve", "parse_overrides", "parse_value", "to_json", "from_dict"]
