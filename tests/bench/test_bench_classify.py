"""amr_fast.bench.classify on tiny shapes (no timed claims)."""

import dataclasses

import pytest

from amr_fast.bench.classify import MODES, bench_eval, bench_modes
from amr_fast.presets import CLASSIFY_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classify_bench_times_every_mode():
    base = dataclasses.replace(CLASSIFY_PRESETS["fashion-mnist-manifold"], width=0.0625)
    r = bench_modes(base, iters=1, rounds=1, batch=8)
    assert set(MODES) <= set(r) and r["erm"]["vs_erm"] == 1.0
    assert all(r[m]["img_per_s"] > 0 and r[m]["vs_erm"] > 0 for m in MODES)


def test_eval_bench_times_training_the_test_error_and_fgsm():
    base = dataclasses.replace(CLASSIFY_PRESETS["fashion-mnist-manifold"], width=0.0625, batch=8, eval_batch=16)
    r = bench_eval(base, "fp32", iters=1, eval_iters=1)
    assert all(r[k] > 0 for k in ("train_img_per_s", "test_img_per_s", "test_fgsm_img_per_s"))
    assert r["per_epoch_test"] == pytest.approx(10_000 / r["test_img_per_s"] / (50_000 / r["train_img_per_s"]))
    assert r["config"]["eval_batch"] == 16
