"""One run, any launch: the global-batch mixing of both trainers on 2 gloo ranks equals one process, a run trains
alike on 1 and 2 processes and resumes across world sizes, the draws are a function of (seed, step, phase), and a
run's loader threads are gone when it ends (the exit-134 abort at interpreter exit)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from itertools import islice
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import loss_rows, run_driver, tiny, wait_for_rows

from amr_fast import checkpoint, comm, globalbatch, stats
from amr_fast.data import make_shards, train_loader
from amr_fast.models import build_networks
from amr_fast.overrides import to_json

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards("dsprites-procedural", None, tmp_path_factory.mktemp("ds16"), size=16, limit=256,
                       shard_size=64)  # fmt: skip


def test_draws_are_a_function_of_seed_step_and_phase():
    draw = lambda *key: torch.rand(4, generator=globalbatch.draws(*key)).tolist()  # noqa: E731
    assert draw(0, 5, "amr/0") == draw(0, 5, "amr/0")
    assert len({str(draw(*k)) for k in [(0, 5, "amr/0"), (1, 5, "amr/0"), (0, 6, "amr/0"), (0, 5, "amr/1")]}) == 4


def test_global_mixing_on_two_ranks_equals_one_process(shards, tmp_path):
    """Both trainers' draws, mixes and (through the differentiable all-gather) gradients: 2 ranks x 4 rows against
    the 1-process step on the 8 rows, for the class mixer with mixup in D, k = 3 mixup with the consistency term,
    and Bernoulli with one p per (global) batch; classify's crops, cutout, partners and lam."""
    cfg_path, out = tmp_path / "cfg.json", tmp_path / "out.json"
    cfg_path.write_text(to_json(tiny(shards)))
    script = Path(__file__).with_name("dist_checks.py")
    r = subprocess.run([*TORCHRUN, str(script), str(out), str(cfg_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result.pop("gloo_threads_left") == 0  # the process group ended with the run (see kernels/ops.py)
    assert len(result) == 3 + 2 * (1 + 3 * 2)
    for name, diff in result.items():
        assert diff < 1e-5, (name, diff)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest_snapshot(run)))


def biases_before_a_norm(cfg) -> set[str]:
    """Snapshot keys of conv biases that an InstanceNorm follows: their gradient is 0 in theory, so Adam turns
    rounding noise into full-size steps (lr per step) and they differ between any two summation orders; they do
    not change what the network computes."""
    out = set()
    for net_name, net in build_networks(cfg).items():
        for name, module in net.named_modules():
            children = list(module.named_children()) if isinstance(module, torch.nn.Sequential) else []
            for (child, layer), (_, after) in zip(children, children[1:]):
                if getattr(layer, "bias", None) is not None and isinstance(after, torch.nn.GroupNorm):
                    out.add(f"{net_name}.{name + '.' if name else ''}{child}.bias")
    return out


def assert_runs_agree(a: Path, b: Path, cfg) -> None:
    """Per-tick losses within 1e-3 relative, final weights within 1e-3 of each tensor's scale (fp32), but for the
    biases whose gradient is 0 in theory (`biases_before_a_norm`)."""
    rows_a, rows_b = loss_rows(a), loss_rows(b)
    assert [r["nimg"] for r in rows_a] == [r["nimg"] for r in rows_b] and rows_a
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-6), (ra["nimg"], key)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    noise = biases_before_a_norm(cfg)
    assert noise and noise <= wa.keys()
    for key in wa.keys() - noise:
        scale = float(wa[key].abs().max()) or 1.0
        assert float((wa[key] - wb[key]).abs().max()) <= 1e-3 * scale, key


def test_one_process_and_two_resumed_on_one_then_four_train_alike(shards, tmp_path):
    """The same run on 1 process, and on 2 -> 1 -> 4 processes by resuming (real shards, Bernoulli mixing, fp32):
    every tick's losses and the final weights agree, so N processes train as 1 and a state moves between world
    sizes. A resumed run is a rerun with more total_kimg (a schedule field)."""
    cfg = tiny(shards, mixer="bernoulli", precision="fp32", total_kimg=0.096, batch=8)
    run_driver(cfg, tmp_path / "one")
    mixed = tmp_path / "mixed"
    run_driver(dataclasses.replace(cfg, total_kimg=0.032), mixed, launcher=TORCHRUN)
    r = run_driver(dataclasses.replace(cfg, total_kimg=0.064), mixed)
    assert "resuming" in r.stdout and "1 process on cpu" in r.stdout
    r = run_driver(cfg, mixed, launcher=[*TORCHRUN[:-1], "4"])
    assert "resuming" in r.stdout and "4 processes on cpu" in r.stdout
    assert_runs_agree(tmp_path / "one", mixed, cfg)


END = """
import sys, threading
from itertools import islice
from amr_fast.data import train_loader
for _ in range(int(sys.argv[2])):
    loader = train_loader(sys.argv[1], 16, rank=1, world_size=2, workers=2, decode="thread", shuffle_buffer=8)
    for b in islice(loader, 3):
        (b["x"].float() * 2).sum()  # the main thread computes while the decode threads read ahead
    loader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("amr-decode")], "threads left running"
print("ok")
"""


def test_the_end_of_a_run_leaves_no_loader_thread_and_exits_0(shards, tmp_path):
    """A finished run closes its loader (the trainers' `contextlib.closing`): its decode threads are joined, never
    left inside torch at interpreter exit (an abort with exit 134 after the summary, ~1 run in 18). The end of a
    run, 40 times in one process, then 2 processes that end right after."""
    loader = train_loader(shards, 16, workers=2, decode="thread")
    next(loader)
    assert any(t.name.startswith("amr-decode") for t in threading.enumerate())
    loader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("amr-decode")]
    script = tmp_path / "end.py"
    script.write_text(END)
    for n in (40, 1, 1):
        r = subprocess.run([sys.executable, str(script), str(shards), str(n)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
    assert list(islice(train_loader(shards, 16, workers=0), 1))  # the loader still works after all that


def cli_train(root: Path, outdir: Path, *overrides: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`amr-fast train` of the tiny config (tests/test_train.py), as a user types it."""
    cfg = tiny(root)
    fields = ("data", "arch", "img_size", "channels", "width", "code_channels", "num_classes", "method", "mixer", "k",
              "ae_every", "lr", "tick_kimg", "snapshot_kimg", "state_kimg", "probe_kimg", "workers")  # fmt: skip
    args = [f"{name}={getattr(cfg, name)}" for name in fields]
    return [*(launcher or (sys.executable,)), "-m", "amr_fast.cli", "train", "--outdir", str(outdir), *args, *overrides]


def cli_env(**kw: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "AMR_FAST_PROCS"}  # the default: one process per core
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **kw}


def test_the_default_cli_starts_processes_stops_on_sigterm_and_resumes_on_one(shards, tmp_path):
    """`amr-fast train` on a CPU: data-parallel processes through torchrun's launcher (procs=2 here; the default
    is one per usable core); SIGTERM to the process group saves a state and exits 0, as one process does (the
    launcher forwards the signal the processes already had); the run then resumes and ends on procs=1."""
    run = tmp_path / "run"
    cmd = cli_train(shards, run, "total_kimg=40", "batch=16", "procs=2")
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    wait_for_rows(run, proc, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "2 processes on cpu" in out and "stopped by a signal" in out and "Traceback" not in err
    state = checkpoint.find_latest_state(run)
    kimg = checkpoint.state_kimg(state)
    r = subprocess.run(cli_train(shards, run, f"total_kimg={kimg + 0.032}", "batch=16", "procs=1"), env=cli_env(),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"resuming {run} from {state.name}" in r.stdout and "1 process on cpu" in r.stdout
    assert stats.read_jsonl(run / "stats.jsonl")[-1]["kimg"] >= kimg + 0.032


def test_ctrl_c_to_the_processes_exits_130_so_make_stops(shards, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process group) of a 2-process run: a state is saved and the command
    exits 130, as one process does, so `make demo` stops instead of going on to its next line."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli_train(shards, run, "total_kimg=40", "batch=16", "procs=2"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_rows(run, proc, 1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert "stopped by a signal" in out and checkpoint.find_latest_state(run) is not None


def test_a_user_error_in_the_processes_is_said_once_without_the_launchers_lines(shards, tmp_path):
    """A mistake every process meets (here: an outdir holding a run of another config) prints its one-line error
    once, exit 2, without torch's launcher's failure lines; a process that crashes is named with its exit code."""
    run = tmp_path / "run"
    r = subprocess.run(cli_train(shards, run, "total_kimg=0.016", "batch=16", "procs=1"), env=cli_env(),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = subprocess.run(cli_train(shards, run, "total_kimg=0.032", "batch=16", "procs=2", "lamb=3"), env=cli_env(),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == [next(line for line in errors if line.startswith("amr-fast train: error:"))], r.stderr
    assert "holds a run with another config" in errors[0] and "lamb" in errors[0]
    r = subprocess.run(cli_train(shards, run, "total_kimg=0.032", "batch=16", "procs=2", "lamb=3"),
                       env=cli_env(AMR_FAST_DEBUG="1"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 1 and "Traceback" in r.stderr  # AMR_FAST_DEBUG: the error is raised, a crash
    assert r.stderr.rstrip().endswith("failed (exit code 1)") and "amr-fast: process " in r.stderr, r.stderr


def test_accelerate_launch_cpu_num_processes_is_stopped_with_the_right_command(shards, tmp_path):
    """accelerate 1.x: `accelerate launch --cpu --num_processes 2` starts ONE process with WORLD_SIZE unset."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    r = subprocess.run(cli_train(shards, tmp_path / "run", "total_kimg=0.016", launcher=tuple(accelerate)),
                       env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode != 0 and "starts ONE process" in r.stderr and "--multi_gpu --num_processes N" in r.stderr
    assert not (tmp_path / "run" / "stats.jsonl").exists()


def test_two_node_ranks_on_localhost_train_as_one_process(shards, tmp_path):
    """The README's two-node command as two node ranks of one process each on 127.0.0.1 (accelerate launch
    --num_machines 2 --machine_rank 0|1) ends where the same run on one process ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = ("total_kimg=0.064", "batch=8", "precision=fp32")
    procs = []
    for node in (0, 1):
        launch = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                  "--num_processes", "2", "--machine_rank", str(node), "--main_process_ip", "127.0.0.1",
                  "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no")  # fmt: skip
        cmd = cli_train(shards, tmp_path / "nodes", *overrides, launcher=launch)
        env = cli_env(ACCELERATE_USE_CPU="1")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    r = subprocess.run(cli_train(shards, tmp_path / "one", *overrides, "procs=1"), env=cli_env(),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "2 processes on cpu" in (tmp_path / "nodes" / "log.txt").read_text()
    assert_runs_agree(tmp_path / "one", tmp_path / "nodes", tiny(shards))


def test_classify_on_two_processes_trains_like_one(tmp_path):
    """`amr-fast classify` (manifold mixup under DDP, the hidden state all-gathered inside the forward pass) on 2
    processes: it runs, and its per-tick losses agree with one process's up to BatchNorm's per-process statistics
    (the only difference: the batches, partners and lam are the same, tests/dist_checks.py)."""
    from test_classify import e2e_cfg

    root = make_shards("dsprites-procedural", None, tmp_path / "ds32", size=32, limit=256, shard_size=64)
    cfg = e2e_cfg(str(root), mode="manifold", num_classes=3, total_kimg=0.048, tick_kimg=0.016, eval_kimg=0.048,
                  snapshot_kimg=0.048, state_kimg=0.048, batch=16, per_example=True, eval_split="valid")  # fmt: skip
    run_driver(cfg, tmp_path / "one", "--classify")
    r = run_driver(cfg, tmp_path / "two", "--classify", launcher=TORCHRUN)
    assert "2 processes on cpu" in r.stdout
    one, two = (stats.read_jsonl(tmp_path / d / "stats.jsonl") for d in ("one", "two"))
    assert [row["nimg"] for row in one] == [row["nimg"] for row in two] == [16, 32, 48]
    losses = [(a["loss/cls"], b["loss/cls"]) for a, b in zip(one, two)]
    assert all(abs(a - b) <= 0.03 * a for a, b in losses), losses  # measured: within 0.6 %
    assert losses[0][0] != losses[0][1]  # BatchNorm per process: not the same arithmetic


@pytest.mark.skipif(not comm.supported(), reason="the shared-memory collectives need x86-64 Linux with /dev/shm")
def test_shared_memory_collectives_equal_gloos_and_a_dead_peer_is_an_error(tmp_path):
    """`amr_fast.comm` on 2 ranks: all-gather and all-reduce give gloo's bits for 4 dtypes, several shapes, a
    transposed input and 64-byte chunks; no segment file is left in /dev/shm once the ranks have mapped it; when
    rank 1 ends, rank 0 waiting in a collective gets an error naming it within seconds instead of waiting forever."""
    out = tmp_path / "out.json"
    script = Path(__file__).with_name("comm_checks.py")
    r = subprocess.run([*TORCHRUN, str(script), str(out)], capture_output=True, text=True, timeout=300)
    assert out.exists(), r.stdout[-2000:] + r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["mismatches"] == []
    assert result["segment_files"] == []
    assert result["error"] == "process 1 of 2 ended while process 0 waited for it"
    assert result["waited_s"] < 10
