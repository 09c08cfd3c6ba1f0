"""The Triton kernels compiled ahead of time for an H100/H200 (sm_90) on this machine, no GPU needed: the compiled
path (not the interpreter's) builds for every variant the host code launches (simplex_mix / mask_mix, the three
column layouts of the weight grad, K = 2, 3, 8, fp32 and bf16, the block sizes `triton_mix` picks), and ptxas keeps
every variant's registers without spills (a zero stack: no local memory)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
from amr_fast.kernels import triton_import_error

pytestmark = pytest.mark.skipif(triton_import_error() is not None, reason="triton is not installed")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles for a GPU: not under TRITON_INTERPRET=1", allow_module_level=True)

triton = pytest.importorskip("triton")
from amr_fast.kernels import triton_mix  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
needs_tools = pytest.mark.skipif(not os.path.exists(CUOBJDUMP), reason="triton's NVIDIA backend tools are missing")


def _compile(kernel, signature: dict[str, str], constexprs: dict[str, int | bool], warps: int):
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    names = list(signature)
    src = ASTSource(kernel, signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def _registers_and_stack(compiled) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    assert m, out
    return int(m.group(1)), int(m.group(2))


# The variants with the most registers (K = 2 with bf16 tiles, per-group weights, small rows) and the other K / column
# layouts: a dozen compiles, ~1 s each.
@needs_tools
@pytest.mark.parametrize(
    ("K", "dtype", "per_group", "B", "D"),
    [(2, "bf16", False, 16384, 16384), (2, "bf16", True, 16384, 16384), (3, "fp32", True, 16384, 16384),
     (8, "fp32", False, 16384, 16384), (8, "bf16", True, 16384, 16384), (2, "bf16", True, 1024, 32)],
)  # fmt: skip
def test_forward_compiles_for_sm90_without_spills(K, dtype, per_group, B, D):
    BLOCK_B, BLOCK_D = triton_mix._fwd_blocks(B, D, K, 4 if dtype == "fp32" else 2, per_group)
    signature = {"h_ptr": f"*{dtype}", "perm_ptr": "*i64", "w_ptr": "*fp32", "out_ptr": f"*{dtype}"}
    signature |= dict.fromkeys(("B", "D", "G", "inner", "stride_perm_k", "stride_w_b", "stride_w_k"), "i32")
    constexprs = dict(K=K, KP=triton_mix._pow2(K), PER_GROUP=per_group, BLOCK_B=BLOCK_B, BLOCK_D=BLOCK_D)
    compiled = _compile(triton_mix._mix_fwd_kernel, signature, constexprs, triton_mix._warps(BLOCK_B * BLOCK_D))
    regs, stack = _registers_and_stack(compiled)
    assert stack == 0 and regs <= 255, (regs, stack)


@needs_tools
@pytest.mark.parametrize(
    ("K", "dtype", "G", "n_j", "cols"),
    [(2, "fp32", 1, 16384, 0), (2, "bf16", 256, 64, 0), (2, "fp32", 256, 64, 1), (8, "bf16", 256, 64, 1),
     (3, "bf16", 64, 256, 2), (8, "fp32", 64, 256, 2)],
)  # fmt: skip
def test_weight_grad_compiles_for_sm90_without_spills(K, dtype, G, n_j, cols):
    BLOCK_G, BLOCK_J = triton_mix._wgrad_blocks(G, n_j, K, cols)
    signature = {"grad_ptr": f"*{dtype}", "h_ptr": f"*{dtype}", "perm_ptr": "*i64", "gw_ptr": "*fp32"}
    signature |= dict.fromkeys(("D", "G", "inner", "n_j", "chunk_j", "B", "stride_perm_k"), "i32")
    constexprs = dict(K=K, KP=triton_mix._pow2(K), COLS=cols, BLOCK_G=BLOCK_G, BLOCK_J=BLOCK_J)
    warps = triton_mix._warps(triton_mix._pow2(K) * BLOCK_G * BLOCK_J)
    regs, stack = _registers_and_stack(_compile(triton_mix._mix_weight_grad_kernel, signature, constexprs, warps))
    assert stack == 0 and regs <= 255, (regs, stack)
