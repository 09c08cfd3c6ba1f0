"""Shared test fixtures: every test starts from a fixed seed; torch uses the machine's 2 cores at most."""

import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# precision=auto means bf16 on a CPU with native bf16 (amr_fast.precision); the suite's numerical comparisons (ranks
# vs one process, resumes) are written for fp32, so auto stays fp32 here unless a test sets it (tests/test_precision).
os.environ.setdefault("AMR_FAST_CPU_BF16", "0")
# A plain `amr-fast train|classify` on a CPU starts one process per core (amr_fast.run.cpu_processes): the suite's
# in-process CLI calls stay one process unless a test asks (tests/test_distributed.py covers the default).
os.environ.setdefault("AMR_FAST_PROCS", "1")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Tiny shapes run ~10x faster on one thread than on two busy ones (OpenMP spin-waits under contention);
    use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
