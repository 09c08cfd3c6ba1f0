"""amr_fast.kernels: the mixing ops with `impl=` dispatch (contract: DESIGN.md "Contract: the mixing ops").

PLACEHOLDER until the fast paths land: every impl runs the reference.
"""

from __future__ import annotations

import torch

from amr_fast import mixing

IMPLS = ("auto", "ref", "torch", "triton")


def simplex_mix(h: torch.Tensor, perm: torch.Tensor, w: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    return mixing.simplex_mix(h, perm, w)


def mask_mix(h: torch.Tensor, perm: torch.Tensor, m: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    return mixing.mask_mix(h, perm, m)
