"""amr_fast.run, the harness under both trainers: step status flags, the precision that reaches both loops,
atomic writes and JSON errors naming the file, and bad command lines answered in one line without a traceback.
(Resume, signals and statistics after kills are tested through each trainer: tests/test_train.py and
tests/test_classify.py.)"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from amr_fast import checkpoint, classify, cli, run, stats, train
from amr_fast.config import ClassifyConfig, TrainConfig
from amr_fast.models import build_classifier, build_networks
from amr_fast.overrides import to_json


def test_step_status_sees_a_non_finite_loss_or_gradient_and_the_stop_request():
    w = torch.nn.Parameter(torch.ones(3))
    loss = (w * 2).sum()
    loss.backward()
    same = lambda flags: flags  # noqa: E731  (one process: nothing to sum)
    assert run.step_status([loss], [w.grad], False, same) == ("ok", False)
    assert run.step_status([loss * float("inf")], [w.grad], True, same) == ("loss", True)
    w.grad[1] = float("nan")
    assert run.step_status([loss], [w.grad], False, same) == ("grad", False)


def test_due_counts_images_between_two_points():
    assert run.due(0, 16, 0.016) and not run.due(16, 24, 0.016) and run.due(24, 40, 0.016)


class _Launched(Exception):
    pass


@pytest.mark.parametrize("launched, expected", [("fp16", "fp16"), ("bf16", "bf16"), (None, "no"), ("no", "no")])
def test_the_launched_precision_reaches_both_loops(monkeypatch, tmp_path, launched, expected):
    """`accelerate launch --mixed_precision fp16` sets ACCELERATE_MIXED_PRECISION; precision=auto takes it, in
    both trainers (on this CPU we check the choice, not the arithmetic); its default "no" is the plain run's."""
    monkeypatch.setenv("AMR_FAST_CPU_BF16", "0")
    if launched:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    chosen = []

    def fake_accelerator(mixed_precision):
        chosen.append(mixed_precision)
        raise _Launched

    monkeypatch.setattr(run, "Accelerator", fake_accelerator)
    assert run.mixed_precision("auto") == expected and run.mixed_precision("fp16") == "fp16"
    with pytest.raises(_Launched):
        train.training_loop(TrainConfig(data="builtin:spiral"), tmp_path / "train", log=None)
    data = tmp_path / "data"  # classify checks its dataset first: a minimal index is enough
    data.mkdir()
    (data / "index.json").write_text(json.dumps({"format_version": 1, "image_size": 32, "channels": 3, "splits": {}}))
    with pytest.raises(_Launched):
        classify.train_classifier(ClassifyConfig(data=str(data)), tmp_path / "classify", log=None)
    assert chosen == [expected, expected]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: start from none, and let later tests choose their own precision."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_fp16_scales_the_loss_and_an_overflow_is_no_divergence(tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    r = run.Run(TrainConfig(max_nonfinite=2), tmp_path / "r", run.LoopState(), log=None)
    r.resume({}, {})  # no state: from scratch, at the initial loss scale
    assert r.fp16 and r.state.loss_scale == run.FP16_INITIAL_SCALE
    for _ in range(3):  # overflows halve the scale and never stop the run
        r.count_step("grad")
    assert r.state.loss_scale == run.FP16_INITIAL_SCALE / 8 and r.state.nonfinite == 0
    r.count_step("loss")
    with pytest.raises(ValueError, match=r"2 non-finite losses in a row .*max_nonfinite=2"):
        r.count_step("loss")


def test_atomic_writes_and_json_errors_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    checkpoint.write_text_atomic(path, '{"a": 1}\n')
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):  # the rename onto a directory fails: the tmp file is removed
        checkpoint.write_text_atomic(tmp_path / "dir", "x")
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text('{"lr": 0.0')  # a config.json truncated by a crash
    (tmp_path / f"state-{checkpoint.kimg_tag(16)}").mkdir()
    (tmp_path / f"state-{checkpoint.kimg_tag(16)}" / checkpoint.STATE_MARKER).write_text("{}")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        run.check_resume_config(TrainConfig(), tmp_path)


def test_trim_stats_keeps_the_rows_up_to_the_state(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"kimg": n / 1000, "nimg": n}) + "\n" for n in (16, 32, 48)) + '{"kimg": 0.0')
    run.trim_stats(path, 32)
    assert [json.loads(line)["nimg"] for line in path.read_text().splitlines()] == [16, 32]
    run.trim_stats(path, 0)
    assert path.read_text() == ""


# ---------------------------------------------------------------------------------------------------------------
# Bad command lines: one line on stderr, exit 2, no traceback.


def one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_outdir_naming_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["train", "--preset", "spiral-mixup", "--outdir", str(tmp_path / "file")]) == 2
    one_line_error(capsys, "is a file")


def test_overrides_after_options_are_accepted(capsys):
    assert cli.main(["train", "--preset", "demo", "lamb=3", "--outdir", "O", "total_kimg=2", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lamb"] == 3.0 and cfg["total_kimg"] == 2.0
    assert cli.main(["classify", "--dry-run", "--outdir", "O", "width=0.25", "--data", "D", "mix_layers=0,1"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["width"] == 0.25 and cfg["mix_layers"] == [0, 1] and cfg["data"] == "D"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """An autoencoder snapshot of `amr-fast train` and a classifier snapshot of `amr-fast classify`."""
    tmp = tmp_path_factory.mktemp("snaps")
    cfg = TrainConfig(arch="amr32", img_size=16, width=4, code_channels=2, num_classes=3).validate()
    ae = tmp / "ae.safetensors"
    checkpoint.save_snapshot(ae, build_networks(cfg), json.loads(to_json(cfg)), 1.0)
    ccfg = ClassifyConfig(channels=1, width=1 / 16).validate()
    clf = tmp / "classifier.safetensors"
    checkpoint.save_snapshot(clf, {"classifier": build_classifier(ccfg)}, dataclasses.asdict(ccfg), 1.0)
    img = tmp / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    return ae, clf, img


def test_mix_out_naming_a_directory_leaves_no_tmp_file(snapshots, tmp_path, capsys):
    ae, _, img = snapshots
    assert cli.main(["mix", str(ae), str(img), str(img), "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "is a directory")
    assert not list(tmp_path.iterdir())


def test_a_classifier_snapshot_given_to_mix_or_eval(snapshots, tmp_path, capsys):
    _, clf, img = snapshots
    assert cli.main(["mix", str(clf), str(img), str(img), "--out", str(tmp_path / "m.png")]) == 2
    one_line_error(capsys, "classifier snapshot", "amr-fast train")
    assert cli.main(["eval", str(clf), "--metrics", "recon"]) == 2
    one_line_error(capsys, "classifier snapshot")
    ae, _, _ = snapshots
    with pytest.raises(ValueError, match="not a classifier"):
        classify.load_classifier(ae)


def test_a_command_with_subcommands_still_parses(capsys):
    with pytest.raises(SystemExit) as stop:  # `amr-fast bench` has subcommands, which argparse cannot intermix
        cli.main(["bench", "--help"])
    assert stop.value.code == 0 and "kernels" in capsys.readouterr().out


def test_a_tick_far_below_the_runs_earlier_speed_says_the_cores_are_contended():
    speeds = []
    notes = [run.contention_note(speeds, v) for v in (50.0, 400.0, 420.0, 390.0, 150.0, 410.0)]
    assert notes[:4] == ["", "", "", ""] and notes[5] == ""  # the warm-up tick and normal ticks: no note
    assert "36% of this run's earlier 420 img/s: the cores are contended" in notes[4] and "procs=N" in notes[4]


# ---------------------------------------------------------------------------------------------------------------
# Non-finite steps decided on the device (fused optimisers, one process): no host sync per step, the same skips.


def _adam_step(opt, w, grad_value, bad_loss=False):
    w.grad = torch.full_like(w, grad_value)
    loss = torch.tensor(float("nan") if bad_loss else 1.0)
    return run.skip_on_device([opt], run.step_flags([loss], [w.grad], None, lambda f: f))


def test_skip_on_device_leaves_a_non_finite_step_out_entirely():
    """A fused Adam given a non-finite step leaves the parameters, moments and step count exactly as they were;
    a good step then moves them as if the bad one never happened."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1, fused=True)
    ref_w = torch.nn.Parameter(torch.ones(3))
    ref = torch.optim.Adam([ref_w], lr=0.1, fused=True)
    assert _adam_step(opt, w, 1.0).item() == 0 and _adam_step(ref, ref_w, 1.0).item() == 0
    before = (w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()})
    assert _adam_step(opt, w, float("nan")).item() == 1  # a non-finite gradient
    assert _adam_step(opt, w, 0.5, bad_loss=True).item() == 1  # a non-finite loss, finite gradients
    assert torch.equal(w.detach(), before[0])
    assert all(torch.equal(opt.state[w][k], v) for k, v in before[1].items())
    _adam_step(opt, w, 2.0)
    _adam_step(ref, ref_w, 2.0)
    assert torch.equal(w.detach(), ref_w.detach())
    with pytest.raises(ValueError, match="fused"):
        run.skip_on_device([torch.optim.Adam([w])], torch.zeros(2))


def test_skips_counted_on_the_device_settle_exactly_and_stop_a_diverged_run(tmp_path):
    r = run.Run(TrainConfig(max_nonfinite=3), tmp_path / "r", run.LoopState(), log=None)
    r.resume({}, {})
    flags = [0, 1, 1, 0, 1, 1]
    for bad in flags:
        r.count_step(torch.tensor(float(bad)))
    assert r.state.nonfinite_total == 0  # nothing read yet: no sync per step
    r.settle_skips()
    assert (r.state.nonfinite_total, r.state.nonfinite) == (4, 2)  # exact total; the run in a row goes on
    r.count_step(torch.tensor(0.0))
    r.settle_skips()
    assert (r.state.nonfinite_total, r.state.nonfinite) == (4, 0)
    for bad in (1, 1, 1, 0):  # 3 in a row between two ticks: the run stops at the next one
        r.count_step(torch.tensor(float(bad)))
    with pytest.raises(ValueError, match=r"3 non-finite losses/gradients in a row by .*max_nonfinite=3"):
        r.settle_skips()


def test_reports_of_a_step_skipped_on_the_device_do_not_count():
    stats.reset()
    stats.report("loss", torch.tensor(2.0), keep=torch.tensor(1.0))
    stats.report("loss", torch.tensor(float("nan")), keep=torch.tensor(0.0))
    stats.report("loss", torch.tensor([4.0, 6.0]), keep=torch.tensor(1.0))
    assert stats.collect() == {"loss": 4.0}


# ---------------------------------------------------------------------------------------------------------------
# The one tick of both trainers (`Run.after_step`) and the end of their steps (`apply_step`).


def _recording_run(path, every_kimg: int, **cfg) -> tuple[run.Run, list, run.Outputs]:
    """A resumed Run of TrainConfig(**cfg) in `path`, the list of calls its `_outputs` record, and those outputs."""
    r = run.Run(TrainConfig(**cfg), path, run.LoopState(), log=None)
    r.resume({}, {})
    events: list = []
    return r, events, _outputs(r, events, every_kimg)


def _outputs(r: run.Run, events: list, every_kimg: int) -> run.Outputs:
    """An `Outputs` that records its calls; its evaluation is due every `every_kimg` and gives {"eval/at": nimg}."""

    def evaluate(prev: int) -> dict:
        events.append(("evaluate", prev))
        return {"eval/at": r.state.nimg} if run.due(prev, r.state.nimg, every_kimg) else {}

    return run.Outputs(evaluate, lambda: events.append(("snapshot", r.state.nimg)),
                       lambda: events.append(("state", r.state.nimg)),
                       lambda row: events.append(("row", row["nimg"], row.get("eval/at"))))  # fmt: skip


def test_after_step_evaluates_when_due_and_snapshots_and_saves_on_ticks(tmp_path):
    """Every step: the trainer's evaluation (its own schedule); every tick_kimg: the row, with the evaluations since
    the last tick, then the snapshot and the state when due; at the end all three."""
    r, events, out = _recording_run(tmp_path / "r", 3, total_kimg=10, tick_kimg=2, snapshot_kimg=4, state_kimg=8)
    with r:
        while not r.finished:
            prev, r.state.nimg = r.state.nimg, r.state.nimg + 1000
            assert not r.after_step(prev, False, out, {})
    assert [e for e in events if e[0] == "evaluate"] == [("evaluate", 1000 * i) for i in range(10)]
    assert [e for e in events if e[0] != "evaluate"] == [
        ("row", 2000, None), ("row", 4000, 3000), ("snapshot", 4000), ("row", 6000, 6000), ("row", 8000, None),
        ("snapshot", 8000), ("state", 8000), ("row", 10000, 9000), ("snapshot", 10000), ("state", 10000),
    ]  # fmt: skip
    rows = stats.read_jsonl(tmp_path / "r" / "stats.jsonl")
    assert [row["nimg"] for row in rows] == [2000, 4000, 6000, 8000, 10000] and rows[1]["eval/at"] == 3000
    assert r.last_row["nimg"] == 10000 and not r.stopped


def test_after_step_saves_a_state_and_ends_the_loop_after_a_signal(tmp_path):
    r, events, out = _recording_run(tmp_path / "r", 100, total_kimg=10, tick_kimg=4, snapshot_kimg=4, state_kimg=4)
    with r:
        r.state.nimg = 1000
        assert r.after_step(0, True, out, {})
    assert r.stopped and events == [("evaluate", 0), ("state", 1000)]


def test_apply_step_unscales_fp16_gradients_and_skips_non_finite_steps():
    """The gradients are divided by the loss scale before the step, also those the reduction gave to parameters
    without one here; a non-finite loss or gradient leaves the parameters as they were."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([a, b], lr=1.0)

    def reduce(flags):  # as a gradient all-reduce: b, without a gradient on this rank, gets the others'
        b.grad = torch.full_like(b, 8.0)
        return flags

    a.grad = torch.full_like(a, 4.0)
    assert run.apply_step([opt], [a, b], [torch.tensor(1.0)], False, reduce, loss_scale=4.0) == ("ok", False)
    assert a.tolist() == [-1.0, -1.0] and b.tolist() == [-2.0, -2.0]
    a.grad = torch.full_like(a, float("inf"))
    assert run.apply_step([opt], [a, b], [torch.tensor(1.0)], True, lambda f: f, 4.0) == ("grad", True)
    assert run.apply_step([opt], [a], [torch.tensor(float("nan"))], False, lambda f: f) == ("loss", False)
    assert a.tolist() == [-1.0, -1.0] and b.tolist() == [-2.0, -2.0]
