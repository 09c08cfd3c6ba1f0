"""amr_fast.train_bench: the reference schedule does the public code's passes, ours does fewer; recipes in sync."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from amr_fast.config import TrainConfig
from amr_fast.train_bench import bench_model

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


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
    from amr_fast.train_bench import ReferenceStep

    cfg = dataclasses.replace(TrainConfig(), mixer="bernoulli")
    with pytest.raises(ValueError, match="mixer=mixup"):
        ReferenceStep(cfg, {"ae": None, "disc": None, "probe": None}, None)


def test_recipes_are_generated_from_the_presets(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "make_recipes.py"), str(tmp_path)], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.sh")}
    committed = {p.name: p.read_text() for p in (ROOT / "launch" / "recipes").glob("*.sh")}
    assert fresh == committed, "launch/recipes is stale: run `python launch/make_recipes.py`"
    assert "mnist-mixup.sh" in fresh and "dsprites-betavae.sh" in fresh
    for name in ("mnist-mixup.sh", "svhn32-1k-acai.sh"):
        assert subprocess.run(["bash", "-n", str(tmp_path / name)]).returncode == 0
