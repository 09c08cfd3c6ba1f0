"""launch/recipes: one script per preset, generated from amr_fast.presets by launch/make_recipes.py."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
