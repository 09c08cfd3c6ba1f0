"""Tests for `amr-fast classify` (amr_fast/classify.py): Manifold Mixup at exactly the drawn layer, mixed targets,
the paper's loss, on-device augmentation, every mode end to end, resume."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from amr_fast import classify, kernels
from amr_fast import run as run_lib
from amr_fast.checkpoint import find_latest_state, latest_snapshot, load_snapshot
from amr_fast.classify import mixup_forward, mixup_loss
from amr_fast.config import ClassifyConfig
from amr_fast.overrides import from_dict
from amr_fast.stats import read_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared CPU its wake-ups dominate."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(**kw) -> ClassifyConfig:
    base = dict(channels=1, num_classes=5, width=1 / 16, batch=8, mode="manifold", alpha=2.0)
    return ClassifyConfig(**{**base, **kw}).validate()


@pytest.fixture
def recorded_mixes(monkeypatch):
    """Every kernels.simplex_mix call made by classify: (h, perm, w, out)."""
    calls, original = [], kernels.simplex_mix

    def spy(h, perm, w, impl="auto"):
        out = original(h, perm, w, impl=impl)
        calls.append((h.detach().clone(), perm.clone(), w.clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(classify.kernels, "simplex_mix", spy)
    return calls


def stage_inputs(model, run):
    """Run `run()` and return the input of every stage of `model`."""
    seen = {}
    hooks = [
        stage.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, stage in enumerate(model.stages)
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_manifold_mixes_at_exactly_the_drawn_layer(recorded_mixes):
    cfg = tiny_cfg(mix_layers=(0, 1, 2))
    model = classify.build_classifier(cfg).eval()  # eval: BatchNorm does not depend on the batch
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 5, (8,))
    clean = stage_inputs(model, lambda: model(x))
    drawn = set()
    for seed in range(12):
        recorded_mixes.clear()
        g = torch.Generator().manual_seed(seed)
        out = {}
        mixed = stage_inputs(model, lambda g=g, out=out: out.update(k=mixup_forward(model, x, y, cfg, g)[2]))
        k = out["k"]
        drawn.add(k)
        h, perm, w, h_mix = recorded_mixes[0]  # the hidden-state mix (the second call mixes the targets)
        lam = w[:, :1].reshape(-1, *[1] * (h.dim() - 1))
        for i in range(len(model.stages)):
            if i < k:
                torch.testing.assert_close(mixed[i], clean[i])  # layers before k: unmixed
        torch.testing.assert_close(h, clean[k])  # the mix is taken of the clean state at layer k ...
        torch.testing.assert_close(mixed[k], lam * clean[k] + (1 - lam) * clean[k][perm[1]])  # ... as eq. 2
        torch.testing.assert_close(mixed[k], h_mix)
    assert drawn == {0, 1, 2}  # every allowed layer is drawn, and only those


@pytest.mark.parametrize("mode", ["mixup", "manifold"])
@pytest.mark.parametrize("per_example", [False, True])
def test_mixed_targets_are_lam_and_one_minus_lam(recorded_mixes, mode, per_example):
    cfg = tiny_cfg(mode=mode, per_example=per_example, mix_layers=(1,))
    model = classify.build_classifier(cfg)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    logits, y_mix, k = mixup_forward(model, torch.randn(8, 1, 32, 32), y, cfg, torch.Generator().manual_seed(3))
    assert k == (0 if mode == "mixup" else 1)
    _, perm, w, _ = recorded_mixes[-1]  # the target mix: same perm and weights as the hidden state's
    torch.testing.assert_close(recorded_mixes[0][1], perm)
    lam = w[:, 0]
    assert bool(((lam > 0) & (lam < 1)).all())
    assert (lam.unique().numel() == 1) != per_example  # one lam per batch (the paper) or one per example
    torch.testing.assert_close(y_mix.sum(1), torch.ones(8))
    for b in range(8):
        a, p = int(y[b]), int(y[perm[1, b]])
        expected = torch.zeros(5)
        expected[a] += lam[b]
        expected[p] += 1 - lam[b]
        torch.testing.assert_close(y_mix[b], expected)
    assert logits.shape == (8, 5)


def test_erm_is_a_clean_forward_on_one_hot_targets(recorded_mixes):
    cfg = tiny_cfg(mode="erm")
    model = classify.build_classifier(cfg).eval()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 3, 1, 4])
    logits, target, k = mixup_forward(model, x, y, cfg, torch.Generator())
    assert k is None and not recorded_mixes
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(target, F.one_hot(y, 5).float())


def test_loss_matches_the_papers_bce_on_softmax_and_soft_cross_entropy():
    logits = torch.randn(6, 5) * 3
    y_mix = torch.softmax(torch.randn(6, 5), dim=1)
    expected = torch.nn.BCELoss()(torch.softmax(logits, dim=1), y_mix)
    torch.testing.assert_close(mixup_loss(logits, y_mix, "bce"), expected)
    hard = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(mixup_loss(logits, F.one_hot(hard, 5).float(), "ce"), F.cross_entropy(logits, hard))
    saturated = torch.tensor([[200.0, 0, 0, 0, 0]], requires_grad=True)  # softmax rounds to exactly 1
    loss = mixup_loss(saturated, torch.tensor([[0.5, 0.5, 0, 0, 0]]), "bce")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(saturated.grad).all()


def test_random_crop_is_a_shifted_window_of_the_padded_image_and_flips_mirror():
    x = torch.rand(16, 2, 8, 8) * 2 - 1
    assert torch.equal(classify.random_crop_flip(x, 0, False, torch.Generator()), x)
    out = classify.random_crop_flip(x, 2, True, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    shifts = set()
    for b in range(16):
        windows = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(out[b], (lambda w: w.flip(2) if flip else w)(padded[b, :, dy : dy + 8, dx : dx + 8]))
        ]
        assert windows, f"example {b} is not a crop of its padded image"
        shifts.add(windows[0])
    assert len(shifts) > 4  # offsets and flips differ between examples


def test_cutout_zeroes_one_square_per_example():
    x = torch.ones(32, 1, 16, 16)
    out = classify.cutout(x, 4, torch.Generator().manual_seed(0))
    holes = (out == 0).sum(dim=(1, 2, 3))
    assert bool((holes <= 16).all()) and bool((holes >= 4).all())  # clipped at the border, at least a corner
    assert (holes == 16).any()
    assert torch.equal(out[out != 0], x[out != 0])


def test_cutout_per_batch_cuts_the_same_square_from_every_example():
    """The public Manifold Mixup code applies its Cutout to the whole batch tensor: one square for all."""
    out = classify.cutout(torch.ones(32, 1, 16, 16), 4, torch.Generator().manual_seed(0), per_batch=True)
    assert (out == out[:1]).all() and (out[0] == 0).any()


def test_public_defaults_head_crop_normalisation_and_epochs():
    """PreActResNet head = layer4 -> pool -> linear (head_bn adds the BN-ReLU); crop padding 2 (load_data_subset);
    CIFAR standardised per channel inside the network; SVHN epoch = 7325 per class at most = 62,156 images."""
    cfg = ClassifyConfig()
    assert (cfg.head_bn, cfg.crop_pad, cfg.cutout_per_batch) == (False, 2, True)
    model = classify.build_classifier(tiny_cfg())
    assert model.stages[-1].bn is None and not any("stages.4.bn" in k for k in model.state_dict())
    assert classify.build_classifier(tiny_cfg(head_bn=True)).stages[-1].bn is not None
    svhn, cifar = classify.CLASSIFY_PRESETS["svhn-manifold"], classify.CLASSIFY_PRESETS["cifar10-mixup"]
    assert svhn.total_kimg == pytest.approx(2000 * 62.156) and svhn.norm_mean == () and not svhn.flip
    assert cifar.norm_mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    net = classify.build_classifier(dataclasses.replace(cifar, width=0.125)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # [-1, 1]
    pixels = (x + 1) / 2
    mean, std = torch.tensor(cifar.norm_mean)[:, None, None], torch.tensor(cifar.norm_std)[:, None, None]
    plain = classify.build_classifier(dataclasses.replace(cifar, width=0.125, norm_mean=(), norm_std=())).eval()
    plain.load_state_dict(net.state_dict())  # the standardisation holds no weights: snapshots stay the same
    torch.testing.assert_close(net(x), plain((pixels - mean) / std), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="norm_mean and norm_std need 3 values"):
        dataclasses.replace(cifar, norm_std=(0.5,)).validate()
    # configs written before head_bn / fgsm_units / fgsm_kimg existed ran the BN-ReLU head and pixel-unit FGSM with
    # every evaluation
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("head_bn", "fgsm_units", "fgsm_kimg")}
    loaded = from_dict({**old, "eval_kimg": 7.0}, ClassifyConfig)
    assert (loaded.head_bn, loaded.fgsm_units, loaded.fgsm_kimg) == (True, "pixel", 7.0)


def test_fgsm_pixel_units_move_every_pixel_by_eps_in_the_loss_increasing_direction():
    cfg = tiny_cfg(mode="erm")
    model = classify.build_classifier(cfg).eval()
    x, y = torch.rand(4, 1, 32, 32) * 1.6 - 0.8, torch.tensor([0, 1, 2, 3])
    x_adv = classify.fgsm(model, x, y, 0.03, units="pixel")
    step = (x_adv - x).abs()
    assert torch.allclose(step[step > 0], torch.tensor(0.06), atol=1e-6)  # 0.03 in [0, 1] units = 0.06 here
    target = F.one_hot(y, 5).float()
    assert mixup_loss(model(x_adv), target) > mixup_loss(model(x), target)


@pytest.mark.parametrize("standardise", [True, False])
def test_fgsm_normalised_units_are_the_public_step_on_the_standardised_input(standardise):
    """The public attack (vikasverma1077/manifold_mixup, supervised/attacks.py of commit f14738c, `fgsm`):
    `nx_adv = x_adv + epsilon*torch.sign(grad(loss, x_adv,retain_graph=False)[0])` with no clipping, on the tensor its
    loader hands the network (supervised/load.py `load_data_subset`: ToTensor, then Normalize(mean, std): CIFAR's
    per-channel statistics, SVHN's 0.5 / 0.5), loss = `bce_loss(softmax(pred), to_one_hot(target, num_classes))`.
    Here that step is written out on z = (pixel - mean) / std fed to the same network without its standardisation,
    and compared with ours on x in [-1, 1]; images at the range's ends show that nothing is clipped."""
    from amr_fast.presets import NORMALISATION

    norm = NORMALISATION["cifar10"] if standardise else ((), ())
    cfg = tiny_cfg(mode="erm", channels=3, norm_mean=norm[0], norm_std=norm[1])
    model = classify.build_classifier(cfg).eval()
    plain = classify.build_classifier(dataclasses.replace(cfg, norm_mean=(), norm_std=())).eval()
    plain.load_state_dict(model.state_dict())
    mean = torch.tensor(norm[0] or (0.5,) * 3)[:, None, None]
    std = torch.tensor(norm[1] or (0.5,) * 3)[:, None, None]
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    x[:, :, :4] = 1.0  # white and black rows: a step outward leaves [-1, 1] when nothing clips
    x[:, :, 4:8] = -1.0
    y = torch.tensor([0, 1, 2, 3])
    eps = 0.03

    z = (((x + 1) / 2 - mean) / std).requires_grad_(True)  # what the public loader hands its network
    public_loss = F.binary_cross_entropy(F.softmax(plain(z), dim=1), F.one_hot(y, 5).float())
    (grad,) = torch.autograd.grad(public_loss, z)
    z_adv = z.detach() + eps * grad.sign()

    x_adv = classify.fgsm(model, x, y, eps, units="normalised")
    ours = ((x_adv + 1) / 2 - mean) / std
    torch.testing.assert_close(ours, z_adv, atol=eps * 1e-4, rtol=0)
    assert x_adv.max() > 1 and x_adv.min() < -1  # no clipping
    step_pixels = ((x_adv - x) / 2).abs().amax(dim=(0, 2, 3))  # per channel, in [0, 1] pixel units
    torch.testing.assert_close(step_pixels, eps * std.flatten(), atol=1e-6, rtol=1e-5)  # eps x the channel's std


def test_evaluate_predicts_under_autocast_and_takes_the_attacks_gradient_in_fp32(monkeypatch):
    cfg = tiny_cfg(mode="erm")
    model = classify.build_classifier(cfg)
    seen = {"forward": set(), "fgsm": set()}
    model.register_forward_pre_hook(lambda mod, args: seen["forward"].add(torch.is_autocast_enabled("cpu")))
    real_fgsm = classify.fgsm

    def spy(*args, **kwargs):
        seen["fgsm"].add(torch.is_autocast_enabled("cpu"))
        return real_fgsm(*args, **kwargs)

    monkeypatch.setattr(classify, "fgsm", spy)
    batches = [{"x": torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8), "y": torch.tensor([0, 1, 2, 3])}]
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    errors = classify.evaluate(model, iter(batches), cfg, torch.device("cpu"), attack=True, autocast=bf16)
    assert set(errors) == {"eval/test_error", "eval/fgsm_error@0.03"} and model.training
    assert seen["fgsm"] == {False} and seen["forward"] == {True, False}  # the gradient pass alone runs fp32
    seen["forward"].clear()
    errors = classify.evaluate(model, iter(batches), cfg, torch.device("cpu"), attack=False, autocast=bf16)
    assert set(errors) == {"eval/test_error"} and seen["forward"] == {True}
    few = classify.evaluate(model, iter(batches * 2), dataclasses.replace(cfg, eval_max=3), torch.device("cpu"))
    assert [len(v) for v in few.values()] == [3, 3]  # eval_max images, whatever the batch size


def test_paper_presets_evaluate_every_epoch_and_attack_in_the_public_units():
    """The public supervised/main.py (commit 83547a7) runs `val_acc, val_los   = validate(test_loader, net, log)`
    after every epoch's `train(...)` and keeps `best_acc` over them; FGSM in the public attack's units."""
    from amr_fast.presets import CLASSIFY_PAPER_PRESETS

    for name, (dataset, _) in CLASSIFY_PAPER_PRESETS.items():
        cfg = classify.CLASSIFY_PRESETS[name]
        epoch = 62.156 if dataset == "svhn" else 50.0
        assert cfg.eval_kimg == pytest.approx(epoch) and cfg.fgsm_kimg == pytest.approx(10 * epoch), name
        assert cfg.fgsm_units == "normalised", name
    assert classify.CLASSIFY_PRESETS["fashion-mnist-manifold"].fgsm_units == "pixel"  # its README table's units


def test_lr_schedule_counts_images():
    cfg = tiny_cfg(lr=0.1, lr_steps_kimg=(1.0, 2.0), lr_gamma=0.1)
    assert [round(classify.lr_at(cfg, n), 6) for n in (0, 999, 1000, 2500)] == [0.1, 0.1, 0.01, 0.001]


# ---------------------------------------------------------------------------------------------------------------
# End to end on a tiny Fashion-MNIST-format dataset made here.


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from amr_fast.data import make_shards

    src = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for stem, n in [("train", 96), ("t10k", 24)]:
        y = rng.integers(0, 10, n)
        x = rng.random((n, 28, 28)) * 60 + y[:, None, None] * 20  # class-dependent brightness: learnable
        write_idx(src / f"{stem}-images-idx3-ubyte", x)
        write_idx(src / f"{stem}-labels-idx1-ubyte", y)
    return str(make_shards("fashion-mnist", src, tmp_path_factory.mktemp("shards") / "fm32", size=32))


def e2e_cfg(data: str, **kw) -> ClassifyConfig:
    base = dict(
        data=data,
        channels=1,
        width=1 / 16,
        batch=8,
        total_kimg=0.016,  # two iterations
        tick_kimg=0.008,
        snapshot_kimg=0.016,
        state_kimg=0.016,
        eval_kimg=0.016,
        eval_max=8,
        lr_steps_kimg=(0.008,),
        workers=0,
    )
    return ClassifyConfig(**{**base, **kw}).validate()


@pytest.mark.parametrize("mode, arch", [("erm", "preactresnet18"), ("mixup", "preactresnet18"),
                                        ("manifold", "preactresnet18"), ("cutout", "preactresnet18"),
                                        ("manifold", "wrn28_10")])  # fmt: skip
def test_each_mode_trains_two_iterations(shards, tmp_path, mode, arch):
    from amr_fast.stats import read_jsonl

    cfg = e2e_cfg(shards, mode=mode, arch=arch, loss="ce" if mode == "cutout" else "bce")
    messages = []
    run = classify.train_classifier(cfg, tmp_path / f"{mode}-{arch}", log=messages.append)
    assert "best eval/test_error over the evaluations" in messages[-1]  # best and final, as the public code's best
    rows = read_jsonl(run / "stats.jsonl")
    assert [r["kimg"] for r in rows] == [0.008, 0.016]
    assert [r["lr"] for r in rows] == [cfg.lr, cfg.lr * cfg.lr_gamma]
    assert all(np.isfinite(r["loss/cls"]) for r in rows)
    last = rows[-1]
    for key in ("eval/test_error", "eval/fgsm_error@0.03"):
        assert 0 <= last[key] <= 100
    (snapshot,) = run.glob("snapshot-*.safetensors")
    model, loaded_cfg = classify.load_classifier(snapshot)
    assert loaded_cfg == cfg
    torch.manual_seed(cfg.seed)
    untrained = classify.build_classifier(cfg)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), untrained.state_dict().values())]
    assert any(changed)  # two SGD steps moved the weights


def test_test_error_every_eval_kimg_fgsm_every_fgsm_kimg_and_both_at_the_end(shards, tmp_path):
    cfg = e2e_cfg(shards, mode="manifold", total_kimg=0.04, eval_kimg=0.008, fgsm_kimg=0.016, snapshot_kimg=0.04,
                  state_kimg=0.04, eval_batch=3)  # fmt: skip
    messages = []
    run = classify.train_classifier(cfg, tmp_path / "cadence", log=messages.append)
    rows = read_jsonl(run / "stats.jsonl")
    assert [r["kimg"] for r in rows] == [0.008, 0.016, 0.024, 0.032, 0.04]
    assert all(isinstance(r.get("eval/test_error"), float) for r in rows)
    assert [r["kimg"] for r in rows if "eval/fgsm_error@0.03" in r] == [0.016, 0.032, 0.04]
    best = min(r["eval/test_error"] for r in rows)
    assert f"best eval/test_error over the evaluations {best:.2f}" in messages[-1]


def on_step(monkeypatch, step: int, action) -> None:
    """Call `action()` at the start of training step `step` (1-based; counted by the augmentation calls)."""
    calls = {"n": 0}
    real_augment = classify.random_crop_flip

    def augment(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(classify, "random_crop_flip", augment)


def assert_same_final_weights(run_a, run_b, newest: bool = False) -> None:
    """The (single, or with `newest` the newest) snapshots of two runs hold the same weights, bit for bit."""
    if newest:
        a, b = latest_snapshot(run_a), latest_snapshot(run_b)
    else:
        (a,), (b,) = run_a.glob("snapshot-*.safetensors"), run_b.glob("snapshot-*.safetensors")
    weights_a, weights_b = load_snapshot(a)[0]["classifier"], load_snapshot(b)[0]["classifier"]
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=0, atol=0, msg=name)


def test_rerun_after_a_crash_resumes_to_the_same_weights(shards, tmp_path, monkeypatch):
    cfg = e2e_cfg(shards, mode="manifold", total_kimg=0.032, snapshot_kimg=0.032)
    straight = classify.train_classifier(cfg, tmp_path / "straight", log=lambda msg: None)

    def crash():
        raise KeyboardInterrupt("simulated kill after the state at 0.016 kimg")

    with monkeypatch.context() as patch:
        on_step(patch, 3, crash)
        with pytest.raises(KeyboardInterrupt):
            classify.train_classifier(cfg, tmp_path / "crashed", log=lambda msg: None)
    assert not list((tmp_path / "crashed").glob("snapshot-*"))
    messages = []
    resumed = classify.train_classifier(cfg, tmp_path / "crashed", log=messages.append)
    assert any("resuming" in m for m in messages)
    assert_same_final_weights(straight, resumed)
    with pytest.raises(ValueError, match="another config"):
        classify.train_classifier(dataclasses.replace(cfg, lr=0.5), tmp_path / "crashed", log=lambda msg: None)


def test_sigterm_saves_a_state_and_the_rerun_finishes_identically(shards, tmp_path, monkeypatch):
    import os
    import signal

    from amr_fast.checkpoint import find_latest_state

    cfg = e2e_cfg(shards, mode="mixup", total_kimg=0.032, snapshot_kimg=0.032, state_kimg=0.032, eval_kimg=0.032)
    handler_before = signal.getsignal(signal.SIGTERM)
    straight = classify.train_classifier(cfg, tmp_path / "straight", log=lambda msg: None)
    messages = []
    with monkeypatch.context() as patch:  # handled by the loop: finish the step, save a state, return
        on_step(patch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        classify.train_classifier(cfg, tmp_path / "stopped", log=messages.append)
    assert any("stopped by a signal" in m for m in messages)
    assert find_latest_state(tmp_path / "stopped").name.endswith(f"{0.016:010.3f}")  # saved where it stopped
    assert not list((tmp_path / "stopped").glob("snapshot-*"))
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the loop put the caller's handler back
    resumed = classify.train_classifier(cfg, tmp_path / "stopped", log=lambda msg: None)
    assert_same_final_weights(straight, resumed)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite steps: skipped and counted, max_nonfinite in a row stop the run, never a non-finite snapshot or state.


@pytest.fixture
def nan_steps(monkeypatch):
    """poison(steps, where): make training steps `steps` (1-based) non-finite, either in the loss or in the input
    images (which also drives BatchNorm statistics to NaN). Returns `seen`: per step, the classifier's floating
    tensors (weights and BatchNorm statistics) as they were at the start of that step."""
    seen: list[list[torch.Tensor]] = []
    model: dict = {}
    real_build, real_augment, real_loss = classify.build_classifier, classify.random_crop_flip, classify.mixup_loss
    bad = {"now": False}

    def build(cfg):
        model["net"] = real_build(cfg)
        return model["net"]

    def poison(steps, where: str):
        def augment(*args, **kwargs):
            seen.append([t.detach().clone() for t in model["net"].state_dict().values() if t.is_floating_point()])
            bad["now"] = len(seen) in steps
            x = real_augment(*args, **kwargs)
            return x * float("nan") if bad["now"] and where == "input" else x

        def loss(*args, **kwargs):
            value = real_loss(*args, **kwargs)
            return value * float("nan") if bad["now"] and where == "loss" else value

        monkeypatch.setattr(classify, "build_classifier", build)
        monkeypatch.setattr(classify, "random_crop_flip", augment)
        monkeypatch.setattr(classify, "mixup_loss", loss)
        return seen

    return poison


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def saved_tensors(run):
    """Every tensor of every snapshot and resume state (its model.safetensors) in `run`, with the file names."""
    from safetensors.torch import load_file

    files = sorted(run.glob("snapshot-*.safetensors")) + sorted(run.glob("state-*/model*.safetensors"))
    return files, [t for f in files for t in load_file(f).values()]


@pytest.mark.parametrize("deferred", [False, True], ids=["synced", "on-device"])
@pytest.mark.parametrize("where", ["loss", "input"])
def test_a_non_finite_step_is_skipped_counted_and_training_continues(
    shards, tmp_path, nan_steps, where, deferred, monkeypatch
):
    """Also with the skip decided on the device (one GPU: fused SGD, `Run.defer_skips`; forced here on the CPU):
    the same rows, the same untouched weights and BatchNorm statistics."""
    from amr_fast.stats import read_jsonl

    monkeypatch.setattr(run_lib, "fused_optimizers", lambda device: deferred)
    seen = nan_steps({2}, where)
    cfg = e2e_cfg(shards, mode="manifold", total_kimg=0.032, snapshot_kimg=0.032, state_kimg=0.032, eval_kimg=0.032)
    run = classify.train_classifier(cfg, tmp_path / where, log=lambda msg: None)
    rows = read_jsonl(run / "stats.jsonl")
    assert [r["nonfinite"] for r in rows] == [0, 1, 1, 1]  # counted once, in the tick of step 2
    assert "loss/cls" not in rows[1] and all(np.isfinite(r["loss/cls"]) for r in rows if r is not rows[1])
    assert len(seen) == 4
    for before, after in zip(seen[1], seen[2]):  # step 2 changed nothing: weights and BatchNorm statistics
        assert torch.equal(before, after)
    assert any(not torch.equal(a, b) for a, b in zip(seen[2], seen[3]))  # step 3 trained again
    files, tensors = saved_tensors(run)
    assert len(files) == 2 and all_finite(tensors)  # the final snapshot and state


def test_non_finite_steps_in_a_row_stop_the_run_and_nothing_saved_is_non_finite(shards, tmp_path, nan_steps):
    from amr_fast.stats import read_jsonl

    nan_steps(set(range(3, 100)), "input")
    cfg = e2e_cfg(shards, mode="mixup", total_kimg=0.064, snapshot_kimg=0.008, state_kimg=0.008, max_nonfinite=3)
    with pytest.raises(ValueError, match=r"3 non-finite losses in a row at 0\.032 kimg \(max_nonfinite=3\)"):
        classify.train_classifier(cfg, tmp_path / "nan", log=lambda msg: None)
    rows = read_jsonl(tmp_path / "nan" / "stats.jsonl")
    assert [r["nonfinite"] for r in rows] == [0, 0, 1, 2]  # the step that stopped the run wrote no row
    files, tensors = saved_tensors(tmp_path / "nan")
    assert len(list((tmp_path / "nan").glob("snapshot-*"))) == 4 and all_finite(tensors)


def test_non_finite_steps_skipped_on_the_device_stop_the_run_at_the_next_tick(shards, tmp_path, nan_steps, monkeypatch):
    """One GPU (forced here on the CPU): the steps are skipped on the device and counted there; the first tick or
    state after the third in a row stops the run, and nothing saved is non-finite."""
    monkeypatch.setattr(run_lib, "fused_optimizers", lambda device: True)
    nan_steps(set(range(3, 100)), "input")
    cfg = e2e_cfg(shards, mode="mixup", total_kimg=0.064, snapshot_kimg=0.008, state_kimg=0.008, max_nonfinite=3)
    with pytest.raises(ValueError, match=r"3 non-finite losses/gradients in a row by 0\.04 kimg \(max_nonfinite=3\)"):
        classify.train_classifier(cfg, tmp_path / "nan", log=lambda msg: None)
    rows = read_jsonl(tmp_path / "nan" / "stats.jsonl")
    assert [r["nonfinite"] for r in rows] == [0, 0, 1, 2]  # as the synced path; the state due at 0.04 read the third
    files, tensors = saved_tensors(tmp_path / "nan")
    assert all_finite(tensors)


def test_a_resume_state_is_never_written_with_non_finite_weights(shards, tmp_path, monkeypatch):
    real_build = classify.build_classifier
    model = {}

    def build(cfg):
        model["net"] = real_build(cfg)
        return model["net"]

    def corrupt():
        with torch.no_grad():
            next(model["net"].parameters())[0].fill_(float("nan"))  # as a finite step overflowing the weights

    monkeypatch.setattr(classify, "build_classifier", build)
    on_step(monkeypatch, 2, corrupt)
    cfg = e2e_cfg(shards, mode="erm", total_kimg=0.032, snapshot_kimg=0.032, state_kimg=0.008, eval_kimg=0.032)
    with pytest.raises(ValueError, match=r"refusing to write a resume state at 0\.016 kimg: classifier\..* non-finite"):
        classify.train_classifier(cfg, tmp_path / "bad", log=lambda msg: None)
    files, tensors = saved_tensors(tmp_path / "bad")
    assert [f.parent.name for f in files] == [f"state-{0.008:010.3f}"] and all_finite(tensors)


# ---------------------------------------------------------------------------------------------------------------
# The run harness under the classifier: extension, process-group signals, statistics after early kills, the CLI.


def test_raising_total_kimg_extends_a_finished_run_to_the_weights_of_a_longer_one(shards, tmp_path):
    cfg = e2e_cfg(shards, mode="manifold", total_kimg=0.032, snapshot_kimg=0.032, eval_kimg=0.032)
    straight = classify.train_classifier(cfg, tmp_path / "straight", log=lambda msg: None)
    short = dataclasses.replace(cfg, total_kimg=0.016, snapshot_kimg=0.016)
    classify.train_classifier(short, tmp_path / "extended", log=lambda msg: None)
    messages = []
    extended = classify.train_classifier(cfg, tmp_path / "extended", log=messages.append)
    assert any("resuming" in m for m in messages)
    assert [r["kimg"] for r in read_jsonl(extended / "stats.jsonl")] == [0.008, 0.016, 0.024, 0.032]
    assert_same_final_weights(straight, extended, newest=True)


def test_sigterm_to_the_process_group_with_loader_workers_saves_a_state_and_resumes_exactly(shards, tmp_path):
    import os
    import signal

    from test_train import run_driver, wait_for_rows

    cfg = e2e_cfg(shards, mode="mixup", total_kimg=0.032, snapshot_kimg=0.032, state_kimg=0.032, workers=2)
    straight = classify.train_classifier(cfg, tmp_path / "straight", log=lambda msg: None)
    run = tmp_path / "run"
    proc = run_driver(cfg, run, "--classify", "--sleep", "0.3", wait=False)
    wait_for_rows(run, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped by a signal" in out and "Traceback" not in err, out + err[-3000:]
    assert find_latest_state(run) is not None and not list(run.glob("snapshot-*"))
    assert "resuming" in run_driver(cfg, run, "--classify").stdout
    assert_same_final_weights(straight, run)


def test_a_kill_before_the_first_state_leaves_the_stats_of_an_uninterrupted_run(shards, tmp_path):
    cfg = e2e_cfg(shards, mode="erm", total_kimg=0.032, snapshot_kimg=0.032, state_kimg=0.032, eval_kimg=0.032)
    straight = classify.train_classifier(cfg, tmp_path / "straight", log=lambda msg: None)
    run = tmp_path / "run"
    run.mkdir()  # what a run killed after two ticks and before its first state leaves behind
    (run / "stats.jsonl").write_text(json.dumps({"kimg": 0.008, "loss/cls": 9.0}) + "\n" + '{"kimg": 0.016, "lo')
    classify.train_classifier(cfg, run, log=lambda msg: None)
    same = ("kimg", "nimg", "lr", "loss/cls", "train/error", "nonfinite", "eval/test_error")

    def rows(path):
        return [{k: r.get(k) for k in same} for r in read_jsonl(path / "stats.jsonl")]

    assert rows(run) == rows(straight) and len(rows(run)) == 4


def test_bad_outdir_is_one_line_without_traceback(shards, tmp_path, capsys):
    from amr_fast import cli

    (tmp_path / "file").write_text("x")
    assert cli.main(["classify", "--outdir", str(tmp_path / "file"), f"data={shards}", "total_kimg=0.008"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and "Traceback" not in err


def test_eval_max_is_the_images_in_all_whatever_the_number_of_processes():
    """eval_max=7 evaluates 7 images on 1, 2, 3 or 8 processes (the ranks' shares add up), no limit at 0."""
    for world in (1, 2, 3, 8):
        shares = [classify.eval_share(7, rank, world) for rank in range(world)]
        assert sum(shares) == 7 and max(shares) - min(shares) <= 1, (world, shares)
    assert classify.eval_share(0, 0, 2) is None
