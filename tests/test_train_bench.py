"""amr_fast.train_bench: the reference schedule does the public code's passes, ours does fewer; recipes in sync."""

import dataclasses
import os
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
    committed = {p.name: p.read_text() for p in (ROOT / "launch" / "recipes").glob("*.sh") if p.name != "common.sh"}
    assert fresh == committed, "launch/recipes is stale: run `python launch/make_recipes.py`"
    assert "mnist-mixup.sh" in fresh and "dsprites-betavae.sh" in fresh
    # A recipe shards once, then trains its preset; `amr-fast` replaced by an echo to see the commands.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "amr-fast").write_text('#!/bin/bash\necho "amr-fast $@"\n')
    (fake / "amr-fast").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SEED": "2", "SRC": "/src/svhn"}
    r = subprocess.run(["bash", str(ROOT / "launch" / "recipes" / "svhn32-1k-acai.sh"), "lamb=5"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "amr-fast shard svhn --src /src/svhn --size 32 --subset 1000 --out data/svhn-32-1k",
        "amr-fast train --preset svhn32-1k-acai --outdir runs/svhn32-1k-acai-s2 data=data/svhn-32-1k seed=2 lamb=5",
    ]
