"""Runs `triton_cases.py` (the Triton kernels against the reference) in its own process under TRITON_INTERPRET=1:
the variable must be set before triton is imported, and this process may already have imported it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from amr_fast.kernels import triton_import_error


@pytest.mark.skipif(triton_import_error() is not None, reason="triton is not installed")
def test_triton_kernels_in_the_interpreter():
    cases = Path(__file__).with_name("triton_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
