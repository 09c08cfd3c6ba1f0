"""Layers with our own CPU kernels (autograd functions or other torch ops), the same maths as torch's layers they
replace: `AvgPool2` (2x2 average pooling), `Upsample2` (nearest 2x upsampling), `InstanceNorm` (with an NHWC
function for channels-last input) and `StemBlock` (a 1x1 stem and the 3x3 convolution after it as one). They win
on a CPU, where torch's kernels for these ops are slow in bf16, in channels-last memory or for few channels
(README, "What makes the default fast"); on every other device each layer calls torch's op, one fused launch
there. Tested against torch's layers in tests/models/.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from amr_fast.models.base import to_channels_last


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
    """`nn.AvgPool2d(2)`, the same maths, on CPU tensors by our row-pair / column-pair adds (faster than torch's
    avg_pool2d kernels there, forward and backward, in NCHW and channels-last memory). In bf16 the two adds round
    twice (torch's kernel once): differences of an ulp or two. Other devices: torch's kernel."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AvgPool2.apply(x) if _cpu_4d(x) else super().forward(x)


class Upsample2(nn.Upsample):
    """`nn.Upsample(scale_factor=2, mode="nearest")`, the same maths, on CPU tensors by two expand-copies forward
    and two adds backward (faster than torch's kernels there), NCHW or channels-last memory. Other devices: torch's
    kernel."""

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
    names and eps; torch's CPU instance_norm goes through a slower batch-norm reshape). On channels-last CPU input
    it runs `_InstanceNormNHWC`, because torch's channels-last group_norm is far slower there than its NCHW kernel
    and channels-last is what makes the model's convolutions fast. Other devices (CUDA): torch's group_norm, one
    kernel each way (and fused by inductor with compile=true)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_4d(x) and _is_nhwc(x):
            return _InstanceNormNHWC.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _stem_conv3x3(x: torch.Tensor, stem: nn.Conv2d, conv: nn.Conv2d) -> torch.Tensor:
    """conv(stem(x)) for a 1x1 `stem` (padding p) and a 3x3 `conv` (stride 1, padding 1), x channels-last [N, k, H, W]:
    one 3x3 convolution of [x zero-padded by p; a channel of ones for the stem's bias] (k + 1 channels over the
    stem's maps) with the weights conv.weight . [stem.weight | stem.bias]. Autograd gives every gradient (the
    weights' through their product)."""
    N, k, H, W = x.shape
    p = stem.padding[0]
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype  # what conv would use
    Hs, Ws = H + 2 * p, W + 2 * p  # the stem's maps
    parts, w1 = [F.pad(x.to(dtype), (p, p, p, p))], stem.weight.flatten(1)  # w1 [C, k]
    if stem.bias is not None:  # its bias is a weight on a channel of ones over the stem's maps (not the conv's padding)
        parts.append(torch.ones((), dtype=dtype, device=x.device).expand(N, 1, Hs, Ws))
        w1 = torch.cat([w1, stem.bias[:, None]], 1)
    xa = to_channels_last(torch.cat(parts, 1))  # [N, K, Hs, Ws]; channels-last strides also for K = 1
    w3 = conv.weight  # one access, as conv's own forward (a spectral norm's power iteration runs once)
    with torch.autocast(x.device.type, enabled=False):  # the weights' product in their own precision
        w = torch.einsum("ocij,cK->oKij", w3, w1.to(w3.dtype))  # [O, K, 3, 3]
    return F.conv2d(xa, w, conv.bias, padding=1)  # [N, O, Hs, Ws], channels-last


class StemBlock(nn.Sequential):
    """A block that opens with a 1x1 convolution (the stem, any padding) straight into a 3x3 convolution (stride 1,
    padding 1), as the AMR 32x32 family's first blocks do: nothing lies between the two, so on channels-last CPU
    input the pair runs as one linear map (`_stem_conv3x3`), the same maths: one 3x3 convolution from k + 1
    channels instead of oneDNN's 1x1 convolution from 1 or 3 channels (slow, its weight gradient above all) and a
    3x3 convolution of the stem's 16 maps. The layers after the pair run as they are; other input
    (NCHW, other devices): every layer in turn. The same modules and state_dict keys as nn.Sequential."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        stem, conv = layers[0], layers[1]
        if not (isinstance(stem, nn.Conv2d) and stem.kernel_size == (1, 1) and stem.stride == (1, 1)
                and stem.groups == 1 and isinstance(stem.padding, tuple) and len(set(stem.padding)) == 1):  # fmt: skip
            raise ValueError(f"StemBlock opens with a 1x1 convolution, stride 1, one padding; got {stem}")
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1):  # fmt: skip
            raise ValueError(f"StemBlock's second layer is a 3x3 convolution, stride 1, padding 1; got {conv}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem, conv, *rest = self
        if _cpu_4d(x) and x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last):
            x = _stem_conv3x3(x, stem, conv)
        else:
            x = conv(stem(x))
        for layer in rest:
            x = layer(x)
        return x
