"""amr_fast.train: phases touch only their own module, resume is exact, signals save state, multi-process training
matches one process, NaNs never reach a snapshot, snapshots load alone, the CLI only builds the config."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from amr_fast import checkpoint, cli, run, stats, train
from amr_fast.config import TrainConfig
from amr_fast.data import make_shards
from amr_fast.eval import grids
from amr_fast.eval.summary import factorvae_scores, summary_lines
from amr_fast.losses import AMRLoss
from amr_fast.models import build_networks
from amr_fast.overrides import to_json
from amr_fast.presets import PRESETS

DRIVER = Path(__file__).with_name("train_driver.py")
LOSS_KEYS = ("loss/ae", "loss/recon", "loss/disc", "probe/acc")
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Procedural dSprites at 16x16: 256 training and 256 validation images in shards of 64."""
    return make_shards("dsprites-procedural", None, tmp_path_factory.mktemp("dsprites16"), size=16, limit=256,
                       shard_size=64)  # fmt: skip


def tiny(root: Path, **kw) -> TrainConfig:
    """A few-thousand-parameter amr32 model on 16x16 images; 12 iterations of 8 images; events every 2-4."""
    base = dict(data=str(root), arch="amr32", img_size=16, channels=1, width=4, code_channels=2, num_classes=3,
                method="amr", mixer="mixup", k=2, batch=8, ae_every=2, lr=1e-3, total_kimg=0.096, tick_kimg=0.016,
                snapshot_kimg=0.032, state_kimg=0.032, probe_kimg=0.032, workers=0, seed=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base).validate()


def run_driver(cfg: TrainConfig, outdir: Path, *extra: str, wait: bool = True, launcher: list[str] | None = None):
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_path = outdir.parent / f"{outdir.name}.json"
    cfg_path.write_text(to_json(cfg))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "AMR_FAST_CACHE": str(outdir.parent / "cache"),
        "ACCELERATE_USE_CPU": "1",
    }
    cmd = (launcher or [sys.executable]) + [str(DRIVER), str(cfg_path), str(outdir), *extra]
    if not wait:
        # its own process group: a test can signal the group (the driver and its data loader workers) at once
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def wait_for_rows(run: Path, proc: subprocess.Popen, n: int = 1) -> None:
    wait_for(lambda: (run / "stats.jsonl").exists() and len(stats.read_jsonl(run / "stats.jsonl")) >= n, proc)


def assert_same_snapshots(a: Path, b: Path) -> None:
    """The newest snapshots of two runs hold bit-identical tensors."""
    ta, tb = load_file(str(checkpoint.latest_snapshot(a))), load_file(str(checkpoint.latest_snapshot(b)))
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], rtol=0, atol=0, msg=key)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError("run ended early:\n" + proc.stdout.read()[-2000:] + proc.stderr.read()[-3000:])
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def last_snapshot(run: Path) -> Path:
    return sorted(run.glob("snapshot-*.safetensors"))[-1]


def loss_rows(run: Path) -> list[dict]:
    return [{k: r[k] for k in ("nimg", *LOSS_KEYS) if k in r} for r in stats.read_jsonl(run / "stats.jsonl")]


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory) -> Path:
    """One uninterrupted run of `tiny`, in this process on one thread (as the driver runs the interrupted ones)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.training_loop(tiny(shards), run, log=None)
    finally:
        torch.set_num_threads(threads)
    return run


# ---------------------------------------------------------------------------------------------------------------
# Phases.


@pytest.mark.parametrize(
    "kw",
    [
        dict(mixer="mixup"),
        dict(mixer="bernoulli", k=3),
        dict(mixer="class"),
        dict(mixer="none"),
        dict(method="acai", mixer="mixup"),
    ],  # fmt: skip
    ids=["mixup", "bernoulli-k3", "class", "aegan", "acai"],
)
def test_each_phase_leaves_gradients_only_on_its_own_modules(shards, kw):
    cfg = tiny(shards, **kw)
    nets = build_networks(cfg)
    loss = AMRLoss(cfg, nets, "cpu")
    own = {"ae": {"ae", "mixer"}, "disc": {"disc"}, "probe": {"probe"}}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 16, 16) * 2 - 1, torch.arange(8) % 3
    for phase in ("ae", "disc", "probe"):
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        loss.begin(x, y, True, g)
        loss.accumulate_gradients(phase)
        for name, net in nets.items():
            has_grad = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())
            assert has_grad == (name in own[phase]), (phase, name)


def test_an_iteration_without_ae_update_changes_only_disc_and_probe(shards):
    cfg = tiny(shards, mixer="bernoulli")
    nets = build_networks(cfg)
    adam = dict(lr=1e-2)
    parts = train.Parts(
        nets["ae"], nets["disc"], nets["probe"], [nets["ae"]], torch.optim.Adam(nets["ae"].parameters(), **adam),
        torch.optim.Adam(nets["disc"].parameters(), **adam), torch.optim.Adam(nets["probe"].parameters(), **adam),
        AMRLoss(cfg, nets, "cpu"), 0, torch.device("cpu"),
    )  # fmt: skip
    batch = {"x": torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8), "y": torch.arange(8) % 3}
    for update_ae in (False, True):
        before = {n: [p.detach().clone() for p in net.parameters()] for n, net in nets.items()}
        status, stop, reported = train.train_iteration(parts, [batch, batch], update_ae)
        assert status == "ok" and not stop and reported
        for name, net in nets.items():
            changed = any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters()))
            assert changed == (name != "ae" or update_ae), (update_ae, name)


# ---------------------------------------------------------------------------------------------------------------
# Runs, snapshots, resume, signals.


def test_run_directory_and_snapshot_loads_from_its_file_alone(reference_run, tmp_path):
    names = {p.name for p in reference_run.iterdir()}
    assert {"config.json", "log.txt", "stats.jsonl"} <= names
    assert any(n.startswith("samples-") and n.endswith(".png") for n in names)
    assert checkpoint.find_latest_state(reference_run).name == f"state-{checkpoint.kimg_tag(96)}"
    rows = stats.read_jsonl(reference_run / "stats.jsonl")
    assert [r["nimg"] for r in rows] == [16 * i for i in range(1, 7)]
    assert rows[-1]["probe/best_valid_acc"] is not None and 0 <= rows[-1]["probe/valid_acc"] <= 1
    log = (reference_run / "log.txt").read_text()  # ends by saying where the outputs are
    assert f"last snapshot:   {last_snapshot(reference_run)}" in log and "online probe:    best valid acc" in log
    assert "recon error:     mean |x_rec - x| " in log and "training time:   " in log  # the final figures

    alone = tmp_path / "elsewhere.safetensors"
    alone.write_bytes(last_snapshot(reference_run).read_bytes())
    nets, cfg = checkpoint.load_networks(alone)
    assert cfg.width == 4 and cfg.img_size == 16
    with torch.no_grad():
        h = nets["ae"].encode(torch.zeros(2, 1, 16, 16))
        assert h.shape == (2, 2, 4, 4) and torch.isfinite(h).all()

    state_dicts, _ = checkpoint.load_snapshot(alone)
    wrong = build_networks(dataclasses.replace(cfg, width=8))
    first = next(iter(wrong["ae"].state_dict()))
    with pytest.raises(ValueError, match=rf"mismatch at ae\.{first}: expected shape"):
        checkpoint.load_state_dicts(wrong, state_dicts)


def test_sigterm_then_sigkill_then_rerun_equals_an_uninterrupted_run(shards, reference_run, tmp_path):
    cfg, run = tiny(shards), tmp_path / "run"
    # 1. SIGTERM after the first tick: the run saves a state where it is and exits cleanly.
    proc = run_driver(cfg, run, "--sleep", "0.3", wait=False)
    wait_for(lambda: (run / "stats.jsonl").exists() and len(stats.read_jsonl(run / "stats.jsonl")) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    assert summary["stopped"] and 0 < summary["kimg"] < cfg.total_kimg
    assert checkpoint.find_latest_state(run).name == f"state-{checkpoint.kimg_tag(round(summary['kimg'] * 1000))}"
    # 2. Re-run, then SIGKILL once a later state is complete: nothing is saved at that moment.
    proc = run_driver(cfg, run, "--sleep", "0.3", wait=False)
    resumed_at = summary["kimg"]
    wait_for(lambda: checkpoint.state_kimg(checkpoint.find_latest_state(run)) > resumed_at + 0.016, proc)
    proc.kill()
    proc.communicate(timeout=60)
    # 3. Re-run the same command: it finishes, and equals the uninterrupted run (weights and loss stats).
    r = run_driver(cfg, run)
    assert "resuming" in r.stdout
    a, b = load_file(str(last_snapshot(reference_run))), load_file(str(last_snapshot(run)))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    ref_rows = {r["nimg"]: r for r in loss_rows(reference_run)}
    got_rows = loss_rows(run)
    assert [r["nimg"] for r in got_rows] == sorted(ref_rows)  # killed rows dropped, no duplicates
    # Rows after the last resume point are whole ticks of the resumed process and equal the reference exactly.
    resumed_nimg = round(float(r.stdout.split("resuming", 1)[1].split("(", 1)[1].split(" kimg", 1)[0]) * 1000)
    assert any(row["nimg"] > resumed_nimg for row in got_rows)
    for row in got_rows:
        if row["nimg"] > resumed_nimg:
            assert row == ref_rows[row["nimg"]]


def test_sigterm_to_the_process_group_with_loader_workers_saves_a_state_and_resumes_exactly(shards, tmp_path):
    # Slurm / systemd signal the whole group: the data loader's 2 workers get SIGTERM too and must not die of it.
    cfg, ref, run = tiny(shards, workers=2), tmp_path / "ref", tmp_path / "run"
    train.training_loop(cfg, ref, log=None)
    proc = run_driver(cfg, run, "--sleep", "0.3", wait=False)
    wait_for_rows(run, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, out[-2000:] + err[-3000:]
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    assert summary["stopped"] and 0 < summary["kimg"] < cfg.total_kimg
    assert checkpoint.find_latest_state(run).name == f"state-{checkpoint.kimg_tag(round(summary['kimg'] * 1000))}"
    assert "resuming" in run_driver(cfg, run).stdout
    assert_same_snapshots(ref, run)
    assert [r["nimg"] for r in loss_rows(run)] == [r["nimg"] for r in loss_rows(ref)]


def test_a_kill_before_the_first_state_leaves_the_stats_of_an_uninterrupted_run(shards, reference_run, tmp_path):
    cfg, run = tiny(shards), tmp_path / "run"
    proc = run_driver(dataclasses.replace(cfg, state_kimg=1), run, "--sleep", "0.3", wait=False)  # no state early
    wait_for_rows(run, proc, 2)
    proc.kill()
    proc.communicate(timeout=60)
    assert checkpoint.find_latest_state(run) is None and len(stats.read_jsonl(run / "stats.jsonl")) >= 2
    r = run_driver(cfg, run)
    assert "from scratch" in r.stdout
    assert loss_rows(run) == loss_rows(reference_run)  # no duplicated rows: the dead run's were dropped


def test_a_planted_pickle_in_a_state_is_never_executed_and_total_kimg_extends_a_run(
    reference_run, shards, tmp_path, monkeypatch
):
    import pickle
    import shutil

    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(reference_run, run)
    state = checkpoint.find_latest_state(run)

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "pytorch_model.bin"):
        (state / name).write_bytes(pickle.dumps(Exploit()))

    def refuse(*args, **kwargs):
        raise AssertionError("a resume state was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    lines = []
    summary = train.training_loop(tiny(shards, total_kimg=0.112), run, log=lines.append)
    assert not marker.exists()
    assert any("resuming" in line for line in lines) and summary["kimg"] == 0.112 and not summary["stopped"]
    assert [r["nimg"] for r in stats.read_jsonl(run / "stats.jsonl")][-2:] == [96, 112]


def test_rerunning_a_finished_run_does_not_train_again(reference_run, shards):
    before = (reference_run / "stats.jsonl").read_text()
    lines = []
    summary = train.training_loop(tiny(shards), reference_run, log=lines.append)
    assert any("already finished" in line for line in lines)
    assert (reference_run / "stats.jsonl").read_text() == before
    assert summary["snapshot"] == str(last_snapshot(reference_run)) and summary["probe"]["best_valid_acc"] is not None


def test_a_different_config_in_the_same_outdir_is_refused(reference_run, shards):
    with pytest.raises(ValueError, match="different config.*lr"):
        run.check_resume_config(tiny(shards, lr=5e-4), reference_run)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite losses.


def _nan_after(monkeypatch, first_bad_call: int, last_bad_call: int | None = None):
    """Make the disc phase's backward non-finite for calls first..last (inclusive) of accumulate_gradients."""
    original = AMRLoss.accumulate_gradients
    calls = {"n": 0}

    def patched(self, phase, gain=1.0):
        calls["n"] += 1
        bad = calls["n"] >= first_bad_call and (last_bad_call is None or calls["n"] <= last_bad_call)
        return original(self, phase, float("nan") if bad and phase == "disc" else gain)

    monkeypatch.setattr(AMRLoss, "accumulate_gradients", patched)


def test_a_nan_step_is_skipped_and_counted_and_the_run_finishes(shards, tmp_path, monkeypatch):
    _nan_after(monkeypatch, 8, 9)  # one disc phase of the 4th-ish iteration
    summary = train.training_loop(tiny(shards, total_kimg=0.064, probe_kimg=1), tmp_path / "run", log=None)
    assert summary["nonfinite_steps"] >= 1 and not summary["stopped"]
    assert stats.read_jsonl(tmp_path / "run" / "stats.jsonl")[-1]["nonfinite"] == summary["nonfinite_steps"]
    for t in load_file(summary["snapshot"]).values():
        assert torch.isfinite(t).all()


def test_a_nan_step_skipped_on_the_device_is_counted_as_the_synced_path_counts_it(shards, tmp_path, monkeypatch):
    """On one GPU the fused optimisers skip a non-finite step on the device and the count is read at the tick
    (`Run.defer_skips`); forced here on the CPU (fused Adam runs there too), the same injected NaN steps give the
    same count in every stats row, and the reported losses leave the skipped steps out (finite means)."""
    rows = {}
    for deferred in (False, True):
        monkeypatch.setattr(run, "fused_optimizers", lambda device, on=deferred: on)
        _nan_after(monkeypatch, 8, 13)  # the disc phases of a few iterations in the first two ticks
        out = tmp_path / f"run-{deferred}"
        summary = train.training_loop(tiny(shards, total_kimg=0.064, probe_kimg=1), out, log=None)
        monkeypatch.undo()
        rows[deferred] = stats.read_jsonl(out / "stats.jsonl")
        assert summary["nonfinite_steps"] == rows[deferred][-1]["nonfinite"] >= 2
        assert all(math.isfinite(r["loss/disc"]) for r in rows[deferred])
    assert [r["nonfinite"] for r in rows[True]] == [r["nonfinite"] for r in rows[False]]


@pytest.mark.parametrize("deferred", [False, True])
def test_nans_in_a_row_stop_the_run_and_never_reach_a_snapshot(shards, tmp_path, monkeypatch, deferred):
    monkeypatch.setattr(run, "fused_optimizers", lambda device: deferred)  # True: skipped on the device
    _nan_after(monkeypatch, 12)  # every step from iteration ~5 on
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="non-finite losses/gradients in a row.*max_nonfinite=3"):
        train.training_loop(tiny(shards, max_nonfinite=3, snapshot_kimg=0.016, probe_kimg=1), out, log=None)
    snaps = sorted(out.glob("snapshot-*.safetensors"))
    assert snaps  # snapshots from before the NaNs exist, and all are finite
    for snap in snaps:
        for t in load_file(str(snap)).values():
            assert torch.isfinite(t).all()


# ---------------------------------------------------------------------------------------------------------------
# Two processes.


def test_two_processes_keep_ranks_identical_and_match_one_process(shards, tmp_path):
    # AE+GAN (no mixing draws), 3 iterations of a fixed global batch of 16: 2 ranks x 8 vs 1 process x 16.
    cfg = tiny(shards, mixer="none", total_kimg=0.048, tick_kimg=0.048, snapshot_kimg=1, state_kimg=1, probe_kimg=1)
    one, two = tmp_path / "w1", tmp_path / "w2"
    for d in (one, two):
        d.mkdir()
    run_driver(dataclasses.replace(cfg, batch=16), tmp_path / "one", "--fixed-batches", "--dump-weights", str(one))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    r = run_driver(dataclasses.replace(cfg, batch=16), tmp_path / "two", "--fixed-batches", "--dump-weights", str(two),
                   launcher=torchrun)  # fmt: skip
    assert "2 processes on cpu" in r.stdout
    r0, r1, w1 = (
        load_file(str(p)) for p in (two / "rank0.safetensors", two / "rank1.safetensors", one / "rank0.safetensors")
    )
    init = build_networks(dataclasses.replace(cfg, batch=16))
    init_sd = {f"{m}.{k}": v for m, net in init.items() for k, v in net.state_dict().items()}
    assert any(not torch.allclose(r0[key], init_sd[key]) for key in r0)  # it trained
    for key in r0:
        torch.testing.assert_close(r1[key], r0[key], rtol=0, atol=0, msg=key)  # ranks bitwise identical
    # The gradients every optimiser step used: 2 ranks' average = the 1-process gradient of the same global batch.
    # (Weights are not compared: Adam turns rounding noise in gradients that are exactly 0 in theory, e.g. conv
    # biases before InstanceNorm, into full-size steps.)
    g2, g1 = load_file(str(two / "grads0.safetensors")), load_file(str(one / "grads0.safetensors"))
    assert g2.keys() == g1.keys() and len({k.split("/")[0] for k in g1}) == 3  # 3 steps
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], rtol=1e-3, atol=1e-5, msg=key)


def test_summary_lines_give_probe_recon_factorvae_and_speed():
    probe = {"best_valid_acc": 0.5, "best_kimg": 160.0, "test_acc_at_best": None, "last_valid_acc": 0.48}
    summary = {"run_dir": "r", "snapshot": "s", "samples": "p", "stopped": False, "kimg": 160.0, "time": 300.0,
               "img_per_s": 533.3, "probe": probe, "recon": {"l1": 0.029, "mse": 0.032, "n": 5000, "split": "valid"},
               "factorvae": {"kim-mnih": {"score": 0.54, "n_train": 200, "n_eval": 200, "batch_size": 100},
                             "amr-public": {"score": 0.61, "n_train": 800, "n_eval": 800, "batch_size": 800}},
               "shape_probes": {"linear": 0.481, "mlp": 0.992, "n_train": 10000, "n_test": 5000,
                                "num_classes": 3}}  # fmt: skip
    text = "\n".join(summary_lines(summary))
    assert "shape probes:    linear 0.481, MLP 0.992 (offline, on the final code: 10000 train -> 5000 valid" in text
    assert "best valid acc 0.5000 at 160.000 kimg, last 0.4800" in text
    assert "recon error:     mean |x_rec - x| 0.0290, MSE 0.0320 (5000 valid images" in text
    assert "FactorVAE score: 0.540 kim-mnih (Kim & Mnih, all 5 dSprites factors, 200+200 votes of 100" in text
    assert "FactorVAE score: 0.610 amr-public (the AMR authors' procedure: train accuracy on 800 votes of 800" in text
    assert "training time:   5m00s for 160 kimg, 533 img/s" in text


def test_grid_images_are_spread_over_the_split_with_the_labels_interleaved(shards):
    n = json.loads((shards / "index.json").read_text())["splits"]["valid"]["num_samples"]
    x, y = grids.grid_images(shards, "valid", n)  # dSprites' valid split is sorted by grid index, i.e. by shape
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.uint8
    assert sorted(y[:3].tolist()) == [0, 1, 2]  # the k = 3 triangle mixes the three shapes
    assert all(y[i] != y[i + 4] for i in range(4))  # each strip (i, i + 4) mixes two shapes


def test_world_size_mismatch_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--multi_gpu --num_processes"):
        run.check_world_size(1)


# ---------------------------------------------------------------------------------------------------------------
# CLI.


def test_cli_dry_run_prints_the_resolved_config(capsys):
    assert cli.main(["train", "--preset", "demo", "--dry-run", "lamb=3", "--data", "/somewhere"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lamb"] == 3.0 and cfg["data"] == "/somewhere" and cfg["mixer"] == PRESETS["demo"].mixer


def test_cli_lists_presets_and_reports_mistakes_in_one_line(capsys):
    assert cli.main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert cli.main(["train", "--preset", "demo", "--dry-run", "no_such_field=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_field" in err and "Traceback" not in err


def test_tensorboard_gets_every_stats_row_and_sample_grid(shards, tmp_path, monkeypatch):
    from amr_fast.eval import tensorboard

    calls = {"scalars": [], "image": [], "closed": 0}

    class FakeLogger:  # tensorboard is an optional extra: record what the loop sends instead
        def __init__(self, run_dir):
            assert Path(run_dir) == tmp_path / "run"

        def scalars(self, row, kimg):
            calls["scalars"].append((kimg, row))

        def image(self, tag, img, kimg):
            calls["image"].append((tag, img.shape, kimg))

        def close(self):
            calls["closed"] += 1

    monkeypatch.setattr(tensorboard, "TensorBoardLogger", FakeLogger)
    cfg = tiny(shards, total_kimg=0.032)
    train.training_loop(cfg, tmp_path / "run", log=None, tensorboard=True)
    rows = stats.read_jsonl(tmp_path / "run" / "stats.jsonl")
    assert [kimg for kimg, _ in calls["scalars"]] == [r["kimg"] for r in rows]
    assert all("loss/disc" in row for _, row in calls["scalars"])
    assert [(tag, kimg) for tag, _, kimg in calls["image"]] == [("samples", 0.032)]
    assert calls["closed"] == 1


def test_tensorboard_without_the_package_is_a_one_line_error(shards, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    code = cli.main(["train", "--preset", "fashion-mnist-mixup", "--outdir", str(tmp_path / "run"), "--tensorboard",
                     f"data={shards}"])  # fmt: skip
    assert code == 2
    assert "pip install" in capsys.readouterr().err


def test_the_probe_optimiser_takes_its_config_fields(shards, tmp_path, monkeypatch):
    """The online probe's Adam gets probe_lr, probe_beta1/2 and probe_weight_decay (the paper presets: the
    networks' 1e-4, (0.5, 0.99), 1e-5, as the public code's cls_opt_args), not Adam's defaults."""
    made = []
    adam = torch.optim.Adam

    class Recording(adam):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            made.append(kw)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    cfg = tiny(shards, total_kimg=0.016, probe_lr=3e-4, probe_beta1=0.5, probe_beta2=0.99, probe_weight_decay=1e-5)
    train.training_loop(cfg, tmp_path / "run", log=None)
    assert dict(lr=3e-4, betas=(0.5, 0.99), weight_decay=1e-5, fused=None) in made, made  # fused: on CUDA only


def test_dsprites_summary_scores_factorvae_under_both_protocols(tmp_path):
    """The run summary of a dSprites run: FactorVAE under kim-mnih and amr-public, with the config's vote counts."""
    root = make_shards("dsprites-procedural", None, tmp_path / "data", size=64, limit=60, shard_size=60)
    cfg = TrainConfig(data=str(root), arch="dsprites64", img_size=64, width=8, code_dim=6, num_classes=3,
                      mixer="none", factorvae_votes=10, factorvae_vote_batch=4).validate()  # fmt: skip
    ae = build_networks(cfg)["ae"]
    out = factorvae_scores(ae, cfg, root, torch.device("cpu"))
    assert list(out) == ["kim-mnih", "amr-public"] and ae.training
    assert (out["kim-mnih"]["n_train"], out["kim-mnih"]["n_eval"], out["kim-mnih"]["batch_size"]) == (10, 10, 4)
    assert (out["amr-public"]["n_train"], out["amr-public"]["batch_size"]) == (10, 4)
    assert 0 <= out["amr-public"]["score"] <= 0.8 and 0 <= out["kim-mnih"]["score"] <= 1


# ---------------------------------------------------------------------------------------------------------------
# The public loop's epochs: its AE counter and its partial last batch.


def _public_loop(epochs: int, n: int, batch: int, every: int) -> list[tuple[bool, int]]:
    """(G updated, images) per iteration by the public code's rule, written from its files: models/base.py lines
    40-50 run `for epoch ...: for b, batch in enumerate(itr_train): train_on_instance(..., iter=b+1)` (the counter
    restarts every epoch); task_launcher.py lines 573-576 build that loader with batch_size and shuffle only
    (drop_last False: ceil(n / batch) batches, the last one partial); models/swapgan.py line 263 steps G when
    `(kwargs['iter']-1) % self.update_g_every == 0`."""
    out = []
    for _ in range(epochs):
        for b, start in enumerate(range(0, n, batch)):
            it = b + 1
            out.append(((it - 1) % every == 0, min(batch, n - start)))
    return out


def _our_loop(cfg: TrainConfig) -> list[tuple[bool, int]]:
    """(AE updated, images) per iteration of our loop: train.schedule until the run's budget is trained on."""
    out, nimg = [], 0
    while nimg < round(cfg.total_kimg * 1000):
        out.append(train.schedule(cfg, len(out)))
        nimg += out[-1][1]
    return out


def test_paper_presets_follow_the_public_ae_counter_to_the_step():
    """SVHN(1k): 16 batches an epoch (the last of 40 images), AE steps at iter 1, 6, 11, 16: 4 an epoch, 24,000 in
    6,000 epochs (a global counter: 19,200 of the same 96,000 iterations; full batches only: 18,750 of 93,750)."""
    cfg = PRESETS["svhn32-1k-mixup"]
    ours, public = _our_loop(cfg), _public_loop(6000, 1000, 64, 5)
    assert ours == public and len(ours) == 96_000 and sum(u for u, _ in ours) == 24_000
    assert sum(train.schedule(dataclasses.replace(cfg, ae_schedule="global"), i)[0] for i in range(96_000)) == 19_200
    # every paper preset: the same rule, its own epoch size (a few epochs of each, to keep the test short)
    for name in ("mnist-mixup", "svhn32-mixup", "cifar10-256-acai", "dsprites-bernoulli-k3", "svhn32-5k-mixup-k3"):
        cfg = PRESETS[name]
        short = dataclasses.replace(cfg, total_kimg=3 * cfg.epoch_images / 1000)
        assert cfg.ae_schedule == "per-epoch" and cfg.probe_kimg == cfg.epoch_images / 1000
        assert _our_loop(short) == _public_loop(3, cfg.epoch_images, cfg.batch, cfg.ae_every), name


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (2, 3)])
def test_partial_batch_keeps_equal_micro_batches_on_every_rank(world, accum):
    """The partial last batch: exact in one process; rounded down to a multiple of world x accum otherwise, every
    micro-batch the same size (the codes are gathered across ranks), never empty."""
    batch = 24
    for images in (24, 23, 7, 5, 1):
        kept = train.partial_batch([{"x": torch.arange(batch // (world * accum))} for _ in range(accum)], images,
                                   batch, world)  # fmt: skip
        sizes = {len(b["x"]) for b in kept}
        n = world * accum
        assert len(kept) == accum and sizes == {batch // n if images == batch else max(1, images // n)}
        assert world * sum(len(b["x"]) for b in kept) == (images if n == 1 else n * max(1, images // n))


def test_epochs_train_on_partial_last_batches(shards, tmp_path):
    """epoch_images = 40 with batch 16: iterations of 16, 16, 8 images; two epochs are 6 iterations, 80 images."""
    cfg = tiny(shards, epoch_images=40, ae_schedule="per-epoch", total_kimg=0.08, tick_kimg=0.04, probe_kimg=0.04,
               batch=16, snapshot_kimg=1, state_kimg=1)  # fmt: skip
    summary = train.training_loop(cfg, tmp_path / "run", log=None)
    rows = stats.read_jsonl(tmp_path / "run" / "stats.jsonl")
    assert [(r["it"], r["nimg"]) for r in rows] == [(3, 40), (6, 80)] and summary["kimg"] == 0.08
    assert all(r["probe/valid_acc"] is not None for r in rows)
    with pytest.raises(ValueError, match="ae_schedule=per-epoch needs epochs: set epoch_images"):
        tiny(shards, ae_schedule="per-epoch")
