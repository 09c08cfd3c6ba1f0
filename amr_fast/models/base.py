"""The two module shapes every AMR architecture shares: an autoencoder and a block-structured discriminator.

AMR (Beckham et al., NeurIPS 2019): `h = enc(x)`, `x_rec = dec(h)`, a discriminator D on images.
Architectures (`amr32.py`, `dsprites.py`, `mlp.py`) only build the layers; the methods live here once:

- `AutoEncoder.encode(x) -> h` ([B, C, *S]); `decode(h) -> x_rec` in [-1, 1] (tanh); `decode_with_logits(h)
  -> (x_rec, logits)` where `sigmoid(logits) = (x_rec + 1) / 2`, for BCE reconstruction with logits (safe under
  autocast); `forward(x) -> (h, x_rec)`. A VAE (`vae = True`) also has `encode_stats(x) -> (mu, logvar)`, and
  `encode` returns the mean `mu` (the deterministic code used for mixing and the probe).
- `Discriminator` is a list of `blocks`, then a `head` to one logit per example and, for the supervised
  class-conditional mixer, an ACGAN `aux` head to class logits (Odena et al. 2017) on the pooled output of the last
  block. `forward(x) -> logits [B]`; `forward_aux(x) -> (logits [B], aux logits [B, num_classes])`; `run(f, start,
  stop)` runs a slice of the blocks and `outputs(f)` the heads, so that a loss can mix real and fake hidden
  states after block `l` (Manifold Mixup's GAN experiments, Verma et al. ICML 2019) without a second network.
"""

from __future__ import annotations

import torch
from torch import nn


class AutoEncoder(nn.Module):
    encoder: nn.Module
    decoder: nn.Module  # outputs pre-activations z; decode = tanh(z)
    vae: bool = False
    code_shape: tuple[int, ...]  # shape of h without the batch dim

    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE only: (mu, logvar), each [B, *code_shape]."""
        if not self.vae:
            raise ValueError("encode_stats is for VAEs; this autoencoder is deterministic (use encode)")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> h [B, *code_shape]
        if self.vae:
            return self.encode_stats(x)[0]
        return self.encoder(x)

    def decode_with_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_rec in [-1, 1], Bernoulli logits of (x_rec + 1) / 2): tanh(z) = 2 sigmoid(2 z) - 1."""
        z = self.decoder(h)
        return torch.tanh(z), 2 * z

    def decode(self, h: torch.Tensor) -> torch.Tensor:  # h [B, *code_shape] -> x_rec [B, C, H, W] in [-1, 1]
        return torch.tanh(self.decoder(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode(x)
        return h, self.decode(h)


class Discriminator(nn.Module):
    blocks: nn.ModuleList
    head: nn.Module  # last features -> [B, ...] logit map, averaged to one logit per example
    aux: nn.Module | None  # ACGAN head: pooled last features -> class logits (None without the class mixer)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run(self, f: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Features after blocks[start:stop] (start = 0: f is the image)."""
        for block in self.blocks[start:stop]:
            f = block(f)
        return f

    def outputs(self, f: torch.Tensor, aux: bool = False):
        """Heads on the last block's output: logits [B] (and aux class logits [B, num_classes] if aux)."""
        logits = self.head(f).flatten(1).mean(dim=1)  # [B]: the public code averages D's output map
        if not aux:
            return logits
        if self.aux is None:
            raise ValueError("this discriminator has no ACGAN head; build it with mixer=class")
        pooled = f.flatten(2).mean(dim=2) if f.dim() > 2 else f  # [B, F]
        return logits, self.aux(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> logits [B]
        return self.outputs(self.run(x))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.run(x), aux=True)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] in channels-last memory with channels-last strides, also for C = 1: there torch keeps
    NCHW strides (both describe the same memory) and a channels-last stem conv then returns NCHW maps, which every
    following conv copies back, forward and backward."""
    if x.dim() != 4:
        return x
    x = x.contiguous(memory_format=torch.channels_last)
    B, C, H, W = x.shape
    return x.as_strided(x.shape, (H * W, 1, W, 1)) if C == 1 else x


def sn(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018), one power iteration per training forward."""
    return nn.utils.parametrizations.spectral_norm(module)


def _cpu_4d(x: torch.Tensor) -> bool:
    """Whether the CPU tunings below apply: they win on a CPU; on a GPU torch's own kernel is one fused launch where
    ours are several (and inductor fuses torch's), so CUDA (and every other device) takes torch's op."""
    return x.dim() == 4 and x.device.type == "cpu"


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _as_nhwd(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """[B, C, H, W] -> [N, H, W, D] without a copy: [B, H, W, C] for channels-last memory, else [B*C, H, W, 1]."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1) if nhwc else x.reshape(B * C, H, W, 1)


def _from_nhwd(t: torch.Tensor, B: int, C: int, nhwc: bool) -> torch.Tensor:
    """The inverse of `_as_nhwd` for t [N, h, w, D] of any h, w: [B, C, h, w], channels-last memory if nhwc."""
    return t.permute(0, 3, 1, 2) if nhwc else t.reshape(B, C, t.shape[1], t.shape[2])


def _same_layout(dy: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return dy.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def _sum2x2(t: torch.Tensor) -> torch.Tensor:
    """[N, H, W, D] -> [N, H // 2, W // 2, D]: sums of the 2x2 blocks (floor mode): the row pairs first (adds of
    contiguous rows), then the column pairs of that half-size result."""
    N, H, W, D = t.shape
    h, w = H // 2, W // 2
    rows = t[:, : 2 * h, : 2 * w].reshape(N, h, 2, 2 * w, D)  # a view when the sides are even
    pairs = (rows[:, :, 0] + rows[:, :, 1]).view(N, h, w, 2, D)
    return pairs[:, :, :, 0] + pairs[:, :, :, 1]


def _repeat2x2(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """[N, h, w, D] -> [N, H, W, D]: every value repeated over a 2x2 block (columns, then whole rows: two
    expand-copies), zero-padded to H x W when H or W is odd."""
    N, h, w, D = t.shape
    g = t.unsqueeze(3).expand(N, h, w, 2, D).reshape(N, h, 1, 2 * w, D)
    g = g.expand(N, h, 2, 2 * w, D).reshape(N, 2 * h, 2 * w, D)
    return g if (2 * h, 2 * w) == (H, W) else torch.nn.functional.pad(g, (0, 0, 0, W - 2 * w, 0, H - 2 * h))


class _AvgPool2(torch.autograd.Function):
    """2x2 average pooling, stride 2, floor mode: block sums / 4; backward repeats dy / 4 over the blocks. NCHW or
    channels-last memory (the output keeps the input's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.in_shape, ctx.nhwc = x.shape, _is_nhwc(x)
        return _from_nhwd(_sum2x2(_as_nhwd(x, ctx.nhwc)).mul_(0.25), *x.shape[:2], ctx.nhwc)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        B, C, H, W = ctx.in_shape
        g = _as_nhwd(_same_layout(dy, ctx.nhwc), ctx.nhwc) * 0.25
        return _from_nhwd(_repeat2x2(g, H, W), B, C, ctx.nhwc)


class _Upsample2(torch.autograd.Function):
    """Nearest-neighbour 2x upsampling: repeat over 2x2 blocks; backward sums dy over the blocks. NCHW or
    channels-last memory (the output keeps the input's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ctx.nhwc = _is_nhwc(x)
        return _from_nhwd(_repeat2x2(_as_nhwd(x, ctx.nhwc), 2 * H, 2 * W), B, C, ctx.nhwc)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        B, C = dy.shape[:2]
        return _from_nhwd(_sum2x2(_as_nhwd(_same_layout(dy, ctx.nhwc), ctx.nhwc)), B, C, ctx.nhwc)


class AvgPool2(nn.AvgPool2d):
    """`nn.AvgPool2d(2)`, the same maths, faster on CPU: torch's NCHW avg_pool2d kernel (forward and backward)
    costs 2-5x our row-pair / column-pair adds at the 32x32 model's sizes in bf16 (one thread, [192, C, 34 / 17 / 8]
    maps); in channels-last memory ours ran the whole bf16 step ~2% faster than torch's kernel. In bf16 the two
    adds round twice (torch's kernel once): differences of an ulp or two. Other devices: torch's kernel."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AvgPool2.apply(x) if _cpu_4d(x) else super().forward(x)


class Upsample2(nn.Upsample):
    """`nn.Upsample(scale_factor=2, mode="nearest")`, the same maths, faster on CPU (two expand-copies forward, two
    adds backward: ~2x torch's NCHW kernels in bf16 at the decoder's sizes), NCHW or channels-last memory. Other
    devices: torch's kernel."""

    def __init__(self) -> None:
        super().__init__(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Upsample2.apply(x) if _cpu_4d(x) else super().forward(x)


class _InstanceNormNHWC(torch.autograd.Function):
    """Per-example, per-channel normalisation + affine of a channels-last [B, C, H, W] tensor, computed in fp32 on
        its [B, H*W, C] view (fp64 for fp64; two-pass mean and variance); backward recomputes x_hat from the saved
    input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        B, C, H, W = x.shape
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.permute(0, 2, 3, 1).reshape(B, H * W, C).to(acc, copy=True)  # [B, HW, C], a copy
        mean = xf.mean(1, keepdim=True)  # [B, 1, C]
        xf -= mean
        rstd = (xf.square().mean(1, keepdim=True) + eps).rsqrt()
        y = xf.mul_(rstd * weight.to(acc)).add_(bias.to(acc))
        ctx.save_for_backward(x, mean, rstd, weight)
        return y.to(x.dtype).view(B, H, W, C).permute(0, 3, 1, 2)  # channels-last again

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        B, C, H, W = x.shape
        n, acc = H * W, mean.dtype
        g = dy.permute(0, 2, 3, 1).reshape(B, n, C).to(acc)
        xhat = x.permute(0, 2, 3, 1).reshape(B, n, C).to(acc, copy=True).sub_(mean).mul_(rstd)
        s1 = g.sum(1, keepdim=True)  # [B, 1, C]: sum of dy
        s2 = (g * xhat).sum(1, keepdim=True)  # sum of dy * x_hat
        dx = xhat.mul_(s2 / -n).add_(g).sub_(s1 / n).mul_(rstd * weight.to(acc))
        dx = dx.to(dy.dtype).view(B, H, W, C).permute(0, 3, 1, 2)
        return dx, s2.sum((0, 1)).to(weight.dtype), s1.sum((0, 1)).to(weight.dtype), None


class InstanceNorm(nn.GroupNorm):
    """`InstanceNorm2d(C, affine=True)` as `GroupNorm(C, C)` (one channel per group: the same maths, parameter
    names and eps; torch's CPU instance_norm goes through a batch-norm reshape several times slower). On
    channels-last input it runs `_InstanceNormNHWC`: torch's channels-last group_norm is 10-40x slower than its
    NCHW kernel in bf16 on CPU, ours 2-4x, and channels-last makes the model's convolutions ~1.5x faster. Other
    devices (CUDA): torch's group_norm, one kernel each way (and fused by inductor with compile=true)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_4d(x) and _is_nhwc(x):
            return _InstanceNormNHWC.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)
