"""amr_fast.bench.train on tiny shapes (no timed claims): the reference schedule does the public code's passes,
ours does fewer; the precision variants, the ceiling and the end-to-end row."""

import dataclasses

import pytest

from amr_fast.bench.common import precisions
from amr_fast.bench.train import bench_model, conv_roofline, flops_per_image
from amr_fast.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_counts_passes_of_both_schedules():
    cfg = TrainConfig(arch="amr32", img_size=16, width=4, code_channels=2, num_classes=3, batch=8, ae_every=5)
    r = bench_model(cfg, cycles=1, rounds=1, warmup_cycles=0, variants={"cl": {"channels_last": True}})
    # Public schedule: enc + 2 dec with autograd every iteration, D on x_rec/x_mix for the AE loss, then D on
    # x/x_rec/x_mix again for D's loss.
    assert r["reference"]["calls_per_iter"] == {"enc": 1.0, "dec": 2.0, "disc": 5.0}
    ours = r["ours"]["calls_per_iter"]
    assert ours["enc"] == 1.0 and ours["dec"] == 1.0 and ours["disc"] == pytest.approx(1 + 1 / 5)
    assert r["ours"]["img_per_s"] > 0 and r["reference"]["img_per_s"] > 0 and r["iterations"] == 5
    assert r["ours"]["speedup"] > 0 and r["cl"]["changes"] == {"channels_last": True}
    assert r["cl"]["calls_per_iter"] == ours


def test_reference_schedule_refuses_other_methods():
    from amr_fast.bench.reference import ReferenceStep

    cfg = dataclasses.replace(TrainConfig(), mixer="bernoulli")
    with pytest.raises(ValueError, match="mixer=mixup"):
        ReferenceStep(cfg, {"ae": None, "disc": None, "probe": None}, None)


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
    assert precisions("auto") == ["fp32", "bf16"]
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "0")
    assert precisions("auto") == ["fp32"] and precisions("bf16") == ["bf16"]
    with pytest.raises(ValueError, match="fp32 and/or bf16"):
        precisions("fp8")


def test_end_to_end_row_runs_the_real_trainer(tmp_path):
    from amr_fast.bench.train_e2e import run_train_e2e
    from amr_fast.data import make_shards

    data = make_shards("dsprites-procedural", None, tmp_path / "ds32", size=32, subset=300, seed=0)
    work = tmp_path / "work"
    work.mkdir()
    r = run_train_e2e(data, 0.128, {"workers": "1", "num_classes": "3"}, work)
    assert r["img_per_s"] > 0 and r["precision"] == "fp32" and r["processes"] == 1 and 50 < r["peak_rss_mb"] < 8000
    assert not list(work.glob("train-*"))  # the run directory is removed
    two = run_train_e2e(data, 0.128, {"workers": "1", "num_classes": "3"}, work, env={"AMR_FAST_PROCS": "2"})
    assert two["processes"] == 2 and two["env"] == {"AMR_FAST_PROCS": "2"}  # `env` reaches the trainer
