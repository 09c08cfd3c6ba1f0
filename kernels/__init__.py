"""amr_fast.kernels: the mixing ops of both papers with `impl=` dispatch (docs/design.md, "The mixing-op contract").

    simplex_mix(h, perm, w)   out[b] = sum_k w[b, k] * h[perm[k, b]]               mixup, k-way mixup (AMR sec. 2),
                                                                                   Manifold Mixup (Verma et al. eq. 2)
    mask_mix(h, perm, m)      out[b, c] = sum_k m[b, k, c] * h[perm[k, b], c]      Bernoulli / k-way Bernoulli mixup
                              m [B, K, C] per channel, or [B, K, *M] broadcast over  CutMix / per-position masks
                              h's [C, *S] (M each 1 or h's size: [B, K, 1, *S])      of the code grid

impl:
- "ref": `amr_fast.mixing`, the spec (a gather + einsum, K copies of h);
- "torch": the fast plain-torch path (`torch_mix.py`): embedding_bag, no K-fold temporaries;
- "triton": fused kernels (`triton_mix.py`): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1;
- "auto": "triton" for CUDA tensors (not float64) when triton imports, "torch" otherwise. Never fails.
An explicit impl that cannot run raises ValueError saying why. "torch" and "triton" are `torch.library` custom ops
(`ops.py`): differentiable in h and w / m with a deterministic backward, traceable by `torch.compile`.
"""

from __future__ import annotations

import functools
import os

import torch

from amr_fast import mixing
from amr_fast.config import IMPLS  # the one definition (config stays torch-free)

from . import ops


@functools.cache
def triton_import_error() -> str | None:
    """None when triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # ImportError, or a broken install raising at import
        return f"{type(err).__name__}: {err}"
    return None


def resolve_impl(impl: str, h: torch.Tensor) -> str:
    """The impl that will run for h: "auto" resolved; an explicit impl that cannot run raises ValueError."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if impl == "auto":
        fused = h.is_cuda and h.dtype != torch.float64 and triton_import_error() is None  # kernels accumulate fp32
        return "triton" if fused else "torch"
    if impl == "triton" and triton_import_error() is not None:
        raise ValueError(f"impl='triton' cannot run: triton does not import ({triton_import_error()}); use 'auto'")
    if impl == "triton" and not h.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"impl='triton' needs CUDA tensors (h is on {h.device}); use impl='torch' or 'auto' here, or set "
            "TRITON_INTERPRET=1 before triton is imported to run the kernels in the interpreter"
        )
    return impl


def _prepare(h: torch.Tensor, perm: torch.Tensor, weights: torch.Tensor, kind: str, impl: str):
    mixing.check_mix_args(h, perm, weights, kind)
    return resolve_impl(impl, h), perm.long()


def simplex_mix(h: torch.Tensor, perm: torch.Tensor, w: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """out[b] = sum_k w[b, k] * h[perm[k, b]].  h [B, C, *S] float, perm [K, B] int, w [B, K] -> [B, C, *S]."""
    impl, perm = _prepare(h, perm, w, "simplex", impl)
    if impl == "ref":
        return mixing.simplex_mix(h, perm, w)
    return ops.simplex_mix_op(h, perm, w, impl)


def mask_mix(h: torch.Tensor, perm: torch.Tensor, m: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """out[b] = sum_k m[b, k] * h[perm[k, b]].  h [B, C, *S], perm [K, B], m [B, K, C] (per channel) or
    [B, K, *M] broadcast over [C, *S] ([B, K, 1, *S] per position, [B, K, C, *S] per element) -> [B, C, *S]."""
    impl, perm = _prepare(h, perm, m, "mask", impl)
    if impl == "ref":
        return mixing.mask_mix(h, perm, m)
    return ops.mask_mix_op(h, perm, m, impl)
