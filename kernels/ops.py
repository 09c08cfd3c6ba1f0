"""The mixing ops as `torch.library` custom ops, so autograd and `torch.compile` see one node per mix.

    amr_fast::simplex_mix(h, perm, w, impl)   out[b] = sum_k w[b, k] * h[perm[k, b]]          (AMR mixup, k-way)
    amr_fast::mask_mix(h, perm, m, impl)      out[b, c] = sum_k m[b, k, c] * h[perm[k, b], c]  (Bernoulli mixup;
                                              m [B, K, *M] broadcast over [C, *S]: CutMix, position masks)
    amr_fast::mix_weight_grad(grad, h, perm, weights, impl)   d out / d w or d m, contracted with grad

`impl` is "torch" (`torch_mix.py`) or "triton" (`triton_mix.py`); the reference lives in `amr_fast.mixing` and
needs no custom op. The backward of both mixes is the same mix through the inverse permutations for h
(deterministic gather) plus `mix_weight_grad` for the weights. The fake (meta) implementations return
`layout.empty_out(h)` / a contiguous tensor shaped like the weights, which is also what the real ones return,
strides included.
"""

from __future__ import annotations

import torch
import torch._dynamo  # noqa: F401  (see below)

from . import torch_mix
from .layout import empty_out, inverse_perm, weights_at_source

# The first call of a custom op imports torch._dynamo. Imported after `init_process_group`, it keeps the default
# process group alive until the interpreter's exit, where gloo's threads, never joined, abort the process (SIGABRT,
# "terminate called without an active exception") after a run that ended well: so it is imported with the ops,
# before any process group exists. (torch 2.13; `tests/test_distributed.py` checks that a group goes at its end.)


def _impl_module(impl: str):
    if impl == "triton":
        from . import triton_mix  # imported on first use: TRITON_INTERPRET must be set before triton loads

        return triton_mix
    return torch_mix


def _mix(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, impl: str) -> torch.Tensor:
    return _impl_module(impl).mix(h, perm, weights)


@torch.library.custom_op("amr_fast::simplex_mix", mutates_args=())
def simplex_mix_op(h: torch.Tensor, perm: torch.Tensor, w: torch.Tensor, impl: str) -> torch.Tensor:
    """h [B, C, *S], perm [K, B] int64, w [B, K] -> [B, C, *S] (arguments already checked)."""
    return _mix(h, perm, w, impl)


@torch.library.custom_op("amr_fast::mask_mix", mutates_args=())
def mask_mix_op(h: torch.Tensor, perm: torch.Tensor, m: torch.Tensor, impl: str) -> torch.Tensor:
    """h [B, C, *S], perm [K, B] int64, m [B, K, C] or [B, K, *M] -> [B, C, *S] (arguments already checked)."""
    return _mix(h, perm, m, impl)


@torch.library.custom_op("amr_fast::mix_weight_grad", mutates_args=())
def mix_weight_grad_op(
    grad: torch.Tensor, h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, impl: str
) -> torch.Tensor:
    """sum over the dims that share a weight of grad[b] * h[perm[k, b]] -> the shape of weights ([B, K],
    [B, K, C] or [B, K, *M]), accumulated in fp32."""
    return _impl_module(impl).weight_grad(grad, h, perm, weights)


@simplex_mix_op.register_fake
def _(h, perm, w, impl):
    return empty_out(h)


@mask_mix_op.register_fake
def _(h, perm, m, impl):
    return empty_out(h)


@mix_weight_grad_op.register_fake
def _(grad, h, perm, weights, impl):
    return weights.new_empty(weights.shape)  # contiguous, like the real result


def _setup_context(ctx, inputs, output) -> None:
    h, perm, weights, impl = inputs
    ctx.impl = impl
    ctx.save_for_backward(h if ctx.needs_input_grad[2] else None, perm, weights)


def _backward(op, ctx, grad):
    """The backward of `op` (simplex_mix_op or mask_mix_op): grad_h by the same op through the inverse
    permutations, grad of the weights by mix_weight_grad_op."""
    h, perm, weights = ctx.saved_tensors
    grad_h = grad_w = None
    if ctx.needs_input_grad[0]:
        inv = inverse_perm(perm)  # [K, B]: gather through the inverse permutations, no atomics
        grad_h = op(grad, inv, weights_at_source(weights, inv), ctx.impl)
    if ctx.needs_input_grad[2]:
        grad_w = mix_weight_grad_op(grad, h, perm, weights, ctx.impl)
    return grad_h, None, grad_w, None


def _simplex_backward(ctx, grad):
    return _backward(simplex_mix_op, ctx, grad)


def _mask_backward(ctx, grad):
    return _backward(mask_mix_op, ctx, grad)


simplex_mix_op.register_autograd(_simplex_backward, setup_context=_setup_context)
mask_mix_op.register_autograd(_mask_backward, setup_context=_setup_context)
