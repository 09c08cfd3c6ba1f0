"""amr_fast.classify_bench and the end-to-end parts of amr_fast.train_bench, on tiny shapes (no timed claims)."""

import dataclasses

import pytest

from amr_fast.classify import CLASSIFY_PRESETS
from amr_fast.classify_bench import MODES, bench_eval, bench_modes
from amr_fast.config import TrainConfig
from amr_fast.train_bench import _precisions, bench_model, conv_roofline, flops_per_image

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


def test_train_bench_precision_variant_flops_and_roofline():
    cfg = TrainConfig(arch="amr32", img_size=16, width=4, code_channels=2, num_classes=3, batch=8, ae_every=2)
    r = bench_model(cfg, cycles=1, rounds=1, warmup_cycles=0, variants={"ours bf16": {"precision": "bf16"}})
    assert r["ours bf16"]["changes"] == {"precision": "bf16"}
    assert r["ours bf16"]["calls_per_iter"] == r["ours"]["calls_per_iter"]
    flops = flops_per_image(cfg)
    assert flops > 0 and flops == pytest.approx(flops_per_image(cfg, "bf16"))  # same maths in either precision
    roof = conv_roofline(cfg, "fp32", seconds=0.01)
    assert roof["gflop"] > 0 and roof["gflop_per_s"] > 0 and roof["channels"] == 8


def test_precisions_spec(monkeypatch):
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "1")
    assert _precisions("auto") == ["fp32", "bf16"]
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "0")
    assert _precisions("auto") == ["fp32"] and _precisions("bf16") == ["bf16"]
    with pytest.raises(ValueError, match="fp32 and/or bf16"):
        _precisions("fp8")


def test_end_to_end_row_runs_the_real_trainer(tmp_path):
    from amr_fast.data import make_shards
    from amr_fast.train_bench import run_train_e2e

    data = make_shards("dsprites-procedural", None, tmp_path / "ds32", size=32, subset=300, seed=0)
    work = tmp_path / "work"
    work.mkdir()
    r = run_train_e2e(data, 0.128, {"workers": "1", "num_classes": "3"}, work)
    assert r["img_per_s"] > 0 and r["precision"] == "fp32" and r["processes"] == 1 and 50 < r["peak_rss_mb"] < 8000
    assert not list(work.glob("train-*"))  # the run directory is removed
