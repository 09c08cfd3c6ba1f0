"""The configurations of both trainers: frozen dataclasses whose every field is a knob, and their validation.

`TrainConfig` holds every knob of `amr-fast train` (field names are shared with amr_fast.train), `ClassifyConfig`
every knob of `amr-fast classify`. `validate()` raises a ValueError naming the field and the fix; both configs
check through the same helpers (`_choices`, `_at_least`, `_numbers`). Their presets are in `amr_fast.presets`,
the typed `field=value` parser and the JSON round trip in `amr_fast.overrides`. This module imports no torch: it
holds the one definition of the choices the torch modules check too (`IMPLS`, `KWAY_SOURCES`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

ARCHS = ("amr32", "dsprites64", "mlp")
METHODS = ("amr", "acai", "betavae")
MIXERS = ("none", "mixup", "bernoulli", "class", "cutmix", "spatial_bernoulli")
RECONS = ("l1", "l2", "bce")
DISC_MIXES = ("none", "pixel", "hidden")
KWAY_SOURCES = ("uniform", "dirichlet")  # how k-way Bernoulli (k >= 3) picks the source of each channel (mixing)
CLASS_UNSUP_MIXERS = ("bernoulli", "mixup", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AE_SCHEDULES = ("global", "per-epoch")
IMPLS = ("auto", "ref", "torch", "triton")  # the mixing ops' implementations (amr_fast.kernels)
CLASSIFY_ARCHS = ("preactresnet18", "preactresnet34", "wrn28_10")
MODES = ("erm", "mixup", "manifold", "cutout")
LOSSES = ("bce", "ce")
FGSM_UNITS = ("normalised", "pixel")


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
    disc_mix: str = "none"  # mixup of real and fake inside D: "none", "pixel", "hidden"
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
    ae_schedule: str = "global"  # "global": iterations counted over the run; "per-epoch": the counter restarts
    #                               every epoch of epoch_images (the public loop's; the paper presets)
    epoch_images: int = 0  # > 0: epochs of this many images as the public loader: ceil(epoch_images / batch)
    #                        batches an epoch, the last one partial (0: no epochs, every batch full)
    # schedule (images, not epochs)
    total_kimg: float = 1000
    tick_kimg: float = 4  # status line + stats.jsonl row
    snapshot_kimg: float = 100  # safetensors snapshot + samples PNG
    state_kimg: float = 100  # full Accelerate state (resume)
    probe_kimg: float = 50  # online probe validation accuracy
    factorvae_votes: int = 0  # dSprites run summary: FactorVAE votes under both protocols (0 = the published counts:
    factorvae_vote_batch: int = 0  # kim-mnih 800 + 800 of 100 images, amr-public 800 of 800); images per vote
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

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the field and the fix; return self."""
        _choices(self, arch=ARCHS, method=METHODS, mixer=MIXERS, recon=RECONS, disc_mix=DISC_MIXES,
                 kway_sources=KWAY_SOURCES, class_unsup_mixer=CLASS_UNSUP_MIXERS, precision=PRECISIONS, impl=IMPLS,
                 ae_schedule=AE_SCHEDULES)  # fmt: skip
        _at_least(self, 1, "channels", "width", "code_channels", "code_dim", "mixer_hidden", "batch", "ae_every")
        _at_least(self, 0, "disc_width", "batch_gpu", "subset", "workers", "seed", "max_nonfinite",
                  "factorvae_votes", "factorvae_vote_batch", "epoch_images")  # fmt: skip
        _at_least(self, 2, "num_classes")
        _numbers(self, "> 0", "lr", "probe_lr", "alpha", "disc_mix_alpha", "total_kimg", "tick_kimg", "snapshot_kimg",
                 "state_kimg", "probe_kimg")  # fmt: skip
        _numbers(self, ">= 0", "lamb", "gan_weight", "beta", "cls_weight", "vae_beta", "weight_decay",
                 "probe_weight_decay")  # fmt: skip
        for name in ("beta1", "beta2", "probe_beta1", "probe_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1) (got {getattr(self, name)}); Adam's betas, e.g. 0.5/0.99")
        if not 2 <= self.k <= 8:
            raise ValueError(f"k must lie in 2..8 (got {self.k}); the paper mixes k = 2 to 8 examples")
        check_skip_limits(self)
        if self.ae_schedule == "per-epoch" and not self.epoch_images:
            raise ValueError("ae_schedule=per-epoch needs epochs: set epoch_images=<images per epoch> (or "
                             "ae_schedule=global)")  # fmt: skip
        if self.batch_gpu and self.batch % self.batch_gpu:
            raise ValueError(
                f"batch ({self.batch}) must be a multiple of batch_gpu ({self.batch_gpu}); "
                f"set batch_gpu to a divisor of batch or 0"
            )
        self._check_arch()
        self._check_objective()
        return self

    def _check_arch(self) -> None:
        """The architecture against the input size."""
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

    def _check_objective(self) -> None:
        """The method against the mixer and the discriminator's mixing."""
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


def probe_adam_args(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the online probe's torch.optim.Adam (the public code: the networks' own settings)."""
    return dict(lr=cfg.probe_lr, betas=(cfg.probe_beta1, cfg.probe_beta2), weight_decay=cfg.probe_weight_decay)


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
    eval_max: int = 0  # evaluate on at most this many images in all, split over the processes (0 = the whole split)
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
        """Raise ValueError naming the field and the fix; return self."""
        _choices(self, arch=CLASSIFY_ARCHS, mode=MODES, loss=LOSSES, precision=PRECISIONS, impl=IMPLS,
                 fgsm_units=FGSM_UNITS)  # fmt: skip
        _at_least(self, 1, "batch", "eval_batch", "max_nonfinite")
        _at_least(self, 0, "eval_max", "crop_pad", "seed", "workers")
        _at_least(self, 2, "num_classes")
        _numbers(self, "> 0", "total_kimg", "tick_kimg", "snapshot_kimg", "state_kimg", "eval_kimg", "fgsm_kimg", "lr",
                 "width")  # fmt: skip
        _numbers(self, ">= 0", "momentum", "weight_decay", "lr_gamma", "dropout")
        if self.mode in ("mixup", "manifold") and self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 for mode={self.mode} (the paper: 1 for mixup, 2 for manifold)")
        if self.mode == "manifold" and (not self.mix_layers or min(self.mix_layers) < 0):
            raise ValueError("mix_layers must list layer indices >= 0 (0 = input), e.g. mix_layers=0,1,2")
        check_skip_limits(self)
        if any(e < 0 for e in self.fgsm_eps):
            raise ValueError(f"fgsm_eps must be >= 0 (in fgsm_units={self.fgsm_units}); got {self.fgsm_eps}")
        if (self.norm_mean or self.norm_std) and not len(self.norm_mean) == len(self.norm_std) == self.channels:
            raise ValueError(f"norm_mean and norm_std need {self.channels} values each (one per channel) or none")
        if self.mode == "cutout" and not 0 < self.cutout_size <= self.img_size:
            raise ValueError(f"cutout_size must lie in (0, img_size={self.img_size}]; got {self.cutout_size}")
        return self


# ---------------------------------------------------------------------------------------------------------------
# The checks both configs share: each raises a ValueError naming the field, its value and what it takes.


def _choices(cfg: Any, **allowed: tuple[str, ...]) -> None:
    for name, choices in allowed.items():
        value = getattr(cfg, name)
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


def _at_least(cfg: Any, bound: int, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < bound:
            raise ValueError(f"{name} must be >= {bound} (got {getattr(cfg, name)}); set {name}=<int >= {bound}>")


def _numbers(cfg: Any, rule: str, *names: str) -> None:
    """Finite numbers `rule` ("> 0" or ">= 0")."""
    for name in names:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and (value > 0 if rule == "> 0" else value >= 0)):
            raise ValueError(f"{name} must be a finite number {rule} (got {value})")


def check_skip_limits(cfg: Any) -> None:
    """Validate the data-damage guard of either trainer (`max_skipped`, `skip_window`; amr_fast.data.loader)."""
    if not (math.isfinite(cfg.max_skipped) and 0 <= cfg.max_skipped <= 1):
        raise ValueError(f"max_skipped must be a fraction in [0, 1] (got {cfg.max_skipped}), e.g. max_skipped=0.05")
    if cfg.skip_window < 1:
        raise ValueError(f"skip_window must be >= 1 samples (got {cfg.skip_window}), e.g. skip_window=10000")
