"""Both configs (TrainConfig, ClassifyConfig): presets (one per row of the papers' tables), overrides, validation
errors, JSON round trip."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from amr_fast.config import ClassifyConfig, TrainConfig, probe_adam_args
from amr_fast.overrides import from_dict, parse_overrides, to_json
from amr_fast.presets import CLASSIFY_PRESETS, PRESET_ROWS, PRESETS, preset_line, resolve

PAPER_DATASETS = ("mnist", "kmnist", "svhn32", "svhn256", "cifar10-256", "cifar10-1024", "dsprites")


def test_every_preset_validates_and_names_match_the_settings():
    pattern = re.compile(
        r"^(?P<data>[a-z0-9-]+?)-(?P<method>aegan|mixup|bernoulli|acai|class|betavae|cutmix|spatial-bernoulli)(-k(?P<k>\d))?$"
    )
    for name, cfg in PRESETS.items():
        assert cfg.validate() is cfg
        if name == "demo" or name.endswith("-consistency"):
            continue
        m = pattern.match(name)
        assert m, name
        method = m["method"]
        assert cfg.k == int(m["k"] or 2), name
        expected_mixer = {"aegan": "none", "acai": "mixup", "betavae": "none"}.get(method, method).replace("-", "_")
        assert cfg.mixer == expected_mixer, name
        assert cfg.method == {"acai": "acai", "betavae": "betavae"}.get(method, "amr"), name


def test_paper_presets_cover_the_tables_with_the_papers_hyperparameters():
    for data in ("mnist", "kmnist", "svhn32"):  # table 1
        for method in ("aegan", "acai", "mixup", "bernoulli", "mixup-k3", "bernoulli-k3"):
            assert f"{data}-{method}" in PRESETS
    for n in (1, 5, 10, 20):  # table 2
        for method in ("aegan", "acai", "mixup", "bernoulli", "mixup-k3"):
            assert PRESETS[f"svhn32-{n}k-{method}"].subset == n * 1000
    for data in ("svhn256", "cifar10-256", "cifar10-1024"):  # table 3
        for method in ("aegan", "acai", "mixup", "bernoulli", "mixup-k3", "mixup-k4", "mixup-k6", "mixup-k8"):
            assert f"{data}-{method}" in PRESETS
    for method in ("aegan", "mixup", "mixup-k3", "bernoulli", "bernoulli-k3", "betavae"):  # table 4
        assert PRESETS[f"dsprites-{method}"].arch == "dsprites64"
    for name, cfg in PRESETS.items():
        if name.startswith(PAPER_DATASETS):
            assert (cfg.lr, cfg.beta2, cfg.batch) == (1e-4, 0.99, 64), name
            if cfg.method != "betavae":
                assert cfg.beta1 == 0.5 and cfg.ae_every == 5, name
            if cfg.arch == "amr32":
                assert cfg.weight_decay == 1e-5, name
    # code sizes: 32, 256 and 1024 dims
    assert PRESETS["mnist-mixup"].code_channels * 16 == 32
    assert PRESETS["svhn256-mixup"].code_channels * 16 == 256
    assert PRESETS["cifar10-1024-mixup-k4"].code_channels * 16 == 1024
    assert PRESETS["dsprites-bernoulli-k3"].code_dim == 10


def test_presets_never_default_to_a_local_dataset_path():
    for name, cfg in PRESETS.items():
        assert cfg.data == "" or cfg.data.startswith("builtin:"), name
    assert PRESETS["demo"].data == "builtin:dsprites-procedural-xl"
    assert (PRESETS["demo"].mixer, PRESETS["demo"].k) == ("bernoulli", 3)
    demo, row = PRESETS["demo"], PRESETS["dsprites-bernoulli-k3"]  # the demo keeps the maths of its table-4 row
    same = ("arch", "method", "mixer", "k", "alpha", "recon", "code_dim", "gan_weight", "beta", "disc_mix")
    assert all(getattr(demo, f) == getattr(row, f) for f in same)
    for name in ("fashion-mnist-aegan", "fashion-mnist-mixup", "fashion-mnist-bernoulli", "fashion-mnist-mixup-k3"):
        assert PRESETS[name].code_channels * 16 == 32 and PRESETS[name].img_size == 32


def test_every_preset_name_is_written_out_in_the_source():
    """A user who greps for a preset's name finds where it is defined: no name exists only as a generated string."""
    import amr_fast.presets

    source = Path(amr_fast.presets.__file__).read_text()
    missing = [name for name in [*PRESETS, *CLASSIFY_PRESETS] if f'"{name}"' not in source]
    assert not missing


def test_resolve_parses_overrides_by_type():
    cfg = resolve("mnist-mixup", {"lr": "2e-4", "k": "3", "compile": "true", "data": "/tmp/x", "lamb": "5"})
    assert (cfg.lr, cfg.k, cfg.compile, cfg.data, cfg.lamb) == (2e-4, 3, True, "/tmp/x", 5.0)
    assert isinstance(cfg.lamb, float) and isinstance(cfg.k, int)
    assert PRESETS["mnist-mixup"].k == 2  # presets are not mutated
    assert parse_overrides(["a=b=c", "k=3"]) == {"a": "b=c", "k": "3"}


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'mnist-mixpu'.*did you mean mnist-mixup.*choose from"):
        resolve("mnist-mixpu", {})
    with pytest.raises(ValueError) as err:
        resolve("nothing-like-it", {})
    assert "cifar10-1024-mixup-k4" in str(err.value) and "demo" in str(err.value)


def test_unknown_override_field_suggests_the_closest():
    with pytest.raises(ValueError, match="unknown config field 'lamda'.*did you mean 'lamb'"):
        resolve("demo", {"lamda": "3"})
    with pytest.raises(ValueError, match="field=value"):
        parse_overrides(["lr"])


@pytest.mark.parametrize(
    "field, value, expected",
    [("k", "three", "k expects an int"), ("lr", "fast", "lr expects a float"), ("compile", "maybe", "expects a bool")],
)
def test_wrong_type_says_the_expected_type(field, value, expected):
    with pytest.raises(ValueError, match=expected):
        resolve("demo", {field: value})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mixer": "mixpu"}, r"mixer must be one of none, mixup, .*; got 'mixpu' \(did you mean 'mixup'"),
        ({"k": "9"}, "k must lie in 2..8"),
        ({"recon": "l3"}, "recon must be one of"),
        ({"batch": "64", "batch_gpu": "10"}, "batch .64. must be a multiple of batch_gpu .10."),
        ({"img_size": "48"}, "img_size must be a power of two"),
        ({"method": "acai", "mixer": "bernoulli"}, "method=acai needs mixer=mixup"),
        ({"method": "betavae"}, "method=betavae trains no mixing; set mixer=none"),
        ({"lr": "0"}, "lr must be a finite number > 0"),
        ({"beta1": "1.5"}, r"beta1 must lie in \[0, 1\)"),
        ({"impl": "cuda"}, "impl must be one of auto, ref, torch, triton"),
        ({"disc_mix": "hiden"}, "did you mean 'hidden'"),
    ],
)
def test_validation_names_the_field_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("mnist-mixup", overrides)


def test_arch_specific_validation():
    with pytest.raises(ValueError, match="img_size must be 64 for arch=dsprites64"):
        resolve("dsprites-mixup", {"img_size": "32"})
    with pytest.raises(ValueError, match="needs a vector code"):
        resolve("mnist-aegan", {"method": "betavae"})


def test_json_round_trip_and_strict_from_dict():
    for name in ("mnist-mixup", "demo", "spiral-mixup-consistency", "dsprites-betavae"):
        cfg = PRESETS[name]
        assert from_dict(json.loads(to_json(cfg))) == cfg
    d = dataclasses.asdict(TrainConfig())
    d["total_kimg"] = 5  # an int where a float is expected is fine
    assert from_dict(d).total_kimg == 5.0
    with pytest.raises(ValueError, match="unknown config field 'widht'.*'width'"):
        from_dict({**d, "widht": 3})
    with pytest.raises(ValueError, match="k expects type int"):
        from_dict({**d, "k": "3"})


# ---------------------------------------------------------------------------------------------------------------
# ClassifyConfig (`amr-fast classify`): the same parser.


def test_classify_presets_follow_the_paper():
    cifar = CLASSIFY_PRESETS["cifar10-manifold"]
    assert cifar.arch == "preactresnet18" and cifar.alpha == 2.0 and cifar.width == 1.0
    epoch = 50.0  # CIFAR-10: 50k training images
    assert cifar.total_kimg == 2000 * epoch and cifar.lr_steps_kimg == (500 * epoch, 1000 * epoch, 1500 * epoch)
    assert CLASSIFY_PRESETS["svhn-mixup"].alpha == 1.0
    assert CLASSIFY_PRESETS["cifar100-erm"].num_classes == 100
    for name, cfg in CLASSIFY_PRESETS.items():
        assert cfg.data == "", name  # the user passes data=DIR
        cfg.validate()


@pytest.mark.parametrize(
    "dataset, epoch, classes", [("cifar10", 50.0, 10), ("cifar100", 50.0, 100), ("svhn", 62.156, 10)]
)
def test_wrn_presets_have_the_public_wrn_schedule(dataset, epoch, classes):
    """vikasverma1077/manifold_mixup supervised/README.md, "Manifold mixup WRN-28-10" (and No mixup / Mixup):
    `--arch wrn28_10 --learning_rate 0.1 --momentum 0.9 --decay 0.0001 --epochs 400 --schedule 200 300 --gammas 0.1
    0.1 --train mixup_hidden --mixup_alpha 2.0` (mixup: `--mixup_alpha 1.0`), batch_size default 100 (main.py)."""
    for mode, alpha in (("erm", 1.0), ("mixup", 1.0), ("manifold", 2.0)):
        cfg = CLASSIFY_PRESETS[f"{dataset}-wrn-{mode}"]
        assert (cfg.arch, cfg.mode, cfg.num_classes, cfg.batch) == ("wrn28_10", mode, classes, 100)
        assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.lr_gamma) == (0.1, 0.9, True, 1e-4, 0.1)
        assert cfg.total_kimg == pytest.approx(400 * epoch)
        assert cfg.lr_steps_kimg == pytest.approx((200 * epoch, 300 * epoch))
        assert cfg.alpha == alpha or mode == "erm"
        same = CLASSIFY_PRESETS[f"{dataset}-{mode}"]  # data, augmentation and standardisation as the PreActResNet's
        fields = ("norm_mean", "norm_std", "flip", "crop_pad")
        assert [getattr(cfg, f) for f in fields] == [getattr(same, f) for f in fields]


def test_arch_on_a_paper_preset_of_another_schedule_is_refused_with_the_preset_to_use():
    wrn = r"keep the preactresnet18 schedule \(2000 epochs.*--preset cifar10-wrn-manifold"
    with pytest.raises(ValueError, match=wrn):
        resolve("cifar10-manifold", {"arch": "wrn28_10"}, CLASSIFY_PRESETS)
    with pytest.raises(ValueError, match=r"use --preset svhn-mixup arch=preactresnet34"):
        resolve("svhn-wrn-mixup", {"arch": "preactresnet34"}, CLASSIFY_PRESETS)
    with pytest.raises(ValueError, match=r"set both total_kimg and lr_steps_kimg$"):  # no WRN cutout preset
        resolve("cifar10-cutout", {"arch": "wrn28_10", "total_kimg": "20000"}, CLASSIFY_PRESETS)
    # the same schedule, an explicit one, or a preset of ours (not a paper row): accepted as asked
    assert resolve("cifar10-manifold", {"arch": "preactresnet34"}, CLASSIFY_PRESETS).total_kimg == 100_000
    cfg = resolve("cifar10-cutout", {"arch": "wrn28_10", "total_kimg": "20000", "lr_steps_kimg": "1e4,1.5e4"},
                  CLASSIFY_PRESETS)  # fmt: skip
    assert (cfg.arch, cfg.total_kimg, cfg.lr_steps_kimg) == ("wrn28_10", 20_000, (10_000, 15_000))
    assert resolve("fashion-mnist-manifold", {"arch": "wrn28_10"}, CLASSIFY_PRESETS).arch == "wrn28_10"


def test_classify_overrides_and_bad_values_are_clear_errors():
    cfg = resolve("fashion-mnist-manifold", {"mix_layers": "0,2", "width": "0.25", "flip": "false"}, CLASSIFY_PRESETS)
    assert cfg.mix_layers == (0, 2) and cfg.width == 0.25 and cfg.flip is False
    assert from_dict(dataclasses.asdict(cfg), ClassifyConfig) == cfg
    assert from_dict(json.loads(to_json(cfg)), ClassifyConfig) == cfg  # JSON lists back to tuples
    with pytest.raises(ValueError, match="mode"):
        resolve("fashion-mnist-manifold", {"mode": "manifld"}, CLASSIFY_PRESETS)
    with pytest.raises(ValueError, match="unknown config field 'lr_step'"):
        resolve("fashion-mnist-manifold", {"lr_step": "1"}, CLASSIFY_PRESETS)
    with pytest.raises(ValueError, match="fgsm_eps expects a float"):
        resolve("fashion-mnist-manifold", {"fgsm_eps": "0.1,x"}, CLASSIFY_PRESETS)
    with pytest.raises(ValueError, match="amr-fast classify --list-presets"):
        resolve("cifar10-manifld", {}, CLASSIFY_PRESETS)


# THE expected table, written once: preset -> (lambda printed by the paper's table for that row, total_kimg =
# the public script's epochs x the images of the split the public code trains on). Splits (public task_launcher.py):
# MNIST / KMNIST 50,000; SVHN 65,931 (90% of 73,257); CIFAR-10 40,000; SVHN subsets their size; dSprites 737,280.
# Table 4 prints no lambda: every exps/dsprite script uses 1. Epochs: the script of that lambda (exps/<folder>/).
MN, SV, CI, DS = 50_000, 65_931, 40_000, 737_280
EXPECTED = {
    # table 1                        lambda, kimg
    "mnist-aegan": (5, 2000 * MN), "mnist-mixup": (10, 2000 * MN), "mnist-bernoulli": (10, 2000 * MN),
    "mnist-mixup-k3": (20, 2000 * MN), "mnist-acai": (2, 2000 * MN),
    "kmnist-aegan": (10, 5000 * MN), "kmnist-mixup": (10, 6000 * MN), "kmnist-bernoulli": (10, 6000 * MN),
    "kmnist-mixup-k3": (10, 6000 * MN), "kmnist-acai": (10, 6000 * MN),
    "svhn32-aegan": (5, 4500 * SV), "svhn32-mixup": (10, 6000 * SV), "svhn32-bernoulli": (10, 4500 * SV),
    "svhn32-mixup-k3": (10, 6000 * SV), "svhn32-acai": (2, 6000 * SV),
    # table 2
    "svhn32-1k-aegan": (10, 6000 * 1000), "svhn32-1k-mixup": (10, 6000 * 1000),
    "svhn32-1k-bernoulli": (20, 6000 * 1000), "svhn32-1k-mixup-k3": (10, 6000 * 1000),
    "svhn32-1k-acai": (10, 6000 * 1000),
    "svhn32-5k-aegan": (10, 6000 * 5000), "svhn32-5k-mixup": (20, 6000 * 5000),
    "svhn32-5k-bernoulli": (20, 6000 * 5000), "svhn32-5k-mixup-k3": (10, 7000 * 5000),
    "svhn32-5k-acai": (10, 7000 * 5000),
    "svhn32-10k-aegan": (10, 6000 * 10_000), "svhn32-10k-mixup": (10, 6000 * 10_000),
    "svhn32-10k-bernoulli": (10, 6000 * 10_000), "svhn32-10k-mixup-k3": (10, 6000 * 10_000),
    "svhn32-10k-acai": (2, 6000 * 10_000),
    "svhn32-20k-aegan": (20, 4000 * 20_000), "svhn32-20k-mixup": (10, 4000 * 20_000),
    "svhn32-20k-bernoulli": (10, 4000 * 20_000), "svhn32-20k-mixup-k3": (10, 4000 * 20_000),
    "svhn32-20k-acai": (5, 4000 * 20_000),
    # table 3
    "svhn256-aegan": (5, 6000 * SV), "svhn256-mixup": (5, 6000 * SV), "svhn256-bernoulli": (10, 4500 * SV),
    "svhn256-mixup-k3": (5, 4500 * SV), "svhn256-mixup-k4": (5, 4500 * SV), "svhn256-mixup-k6": (5, 6000 * SV),
    "svhn256-mixup-k8": (5, 4500 * SV), "svhn256-acai": (2, 4500 * SV),
    **{f"cifar10-256-{m}": (50, 3000 * CI) for m in
       ("aegan", "mixup", "bernoulli", "mixup-k3", "mixup-k4", "mixup-k6", "mixup-k8")},
    "cifar10-256-acai": (20, 3000 * CI),
    **{f"cifar10-1024-{m}": (50, 8000 * CI) for m in
       ("aegan", "mixup", "bernoulli", "mixup-k3", "mixup-k4", "mixup-k6", "mixup-k8")},
    "cifar10-1024-acai": (20, 8000 * CI),
    # table 4
    "dsprites-betavae": (1, 500 * DS), "dsprites-aegan": (1, 500 * DS), "dsprites-mixup": (1, 500 * DS),
    "dsprites-bernoulli": (1, 500 * DS), "dsprites-mixup-k3": (1, 1000 * DS), "dsprites-bernoulli-k3": (1, 500 * DS),
    # not rows of the tables (extensions): the lambda and epochs of the script named in their PRESET_ROWS entry
    "mnist-bernoulli-k3": (10, 2000 * MN), "kmnist-bernoulli-k3": (10, 6000 * MN),
    "svhn32-bernoulli-k3": (10, 4500 * SV), "svhn32-mixup-k4": (10, 6000 * SV),
    "dsprites-cutmix": (1, 500 * DS),  # beyond the papers (section 5's proposal): the Bernoulli k=2 script's budget
}  # fmt: skip


def test_every_paper_preset_has_its_tables_lambda_and_the_public_budget():
    paper = {name for name in PRESETS if name.startswith(PAPER_DATASETS)}
    assert paper == set(EXPECTED) == set(PRESET_ROWS)
    for name, (lamb, nimg) in EXPECTED.items():
        cfg, row = PRESETS[name], PRESET_ROWS[name]
        assert (cfg.lamb, cfg.total_kimg) == (lamb, nimg / 1000), name
        assert row.epochs * row.epoch_images == nimg, name
        assert f"lamb{lamb:g}" in row.script or name.startswith(("dsprites", "kmnist-acai")), (name, row.script)
        if cfg.subset:
            assert row.epoch_images == cfg.subset, name  # an epoch of a subset is the subset
    assert PRESETS["dsprites-aegan"].disc_width == 64  # exps/dsprite/baseline_lamb1.sh passes no --ndf: 64
    assert all(PRESETS[f"dsprites-{m}"].disc_width == 32 for m in ("mixup", "bernoulli-k3"))  # --ndf=32


def test_every_preset_names_an_existing_public_script():
    from tests.test_mixing import PUBLIC_AMR

    if not (PUBLIC_AMR / "amr" / "exps").exists():
        pytest.skip("public AMR code not here")
    for name, row in PRESET_ROWS.items():
        script = (PUBLIC_AMR / "amr" / row.script).read_text()
        assert f"--epochs={row.epochs} " in script, (name, row.script)
        if not name.startswith("dsprites-betavae"):
            assert f"--lamb={PRESETS[name].lamb:.1f} " in script, (name, row.script)
        if "--k=" in script or "gan3f" in row.script:
            assert PRESETS[name].k == int(row.script.split("gan")[1][0]), name


def test_paper_presets_train_the_probe_with_the_networks_optimiser():
    """The public code's probe optimiser copies the networks' opt_args: Adam lr 1e-4, betas (0.5, 0.99), wd 1e-5."""
    for name in PRESET_ROWS:
        cfg = PRESETS[name]
        want = (cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
        args = probe_adam_args(cfg)
        assert (args["lr"], args["betas"], args["weight_decay"]) == want, name
    assert probe_adam_args(PRESETS["mnist-mixup"]) == dict(lr=1e-4, betas=(0.5, 0.99), weight_decay=1e-5)


def test_list_presets_line_shows_row_lambda_and_budget():
    line = preset_line("mnist-aegan")
    assert "table 1, MNIST: AE+GAN" in line and "lambda 5 " in line and "100000 kimg = 2000 epochs x 50,000" in line
    assert "exps/mnist/baseline_lamb5.sh" in line
    assert "not in the tables" in preset_line("mnist-bernoulli-k3")
    assert "this machine" in preset_line("demo")


def test_cifar10_1024_presets_say_their_network_is_inferred():
    """The CIFAR10 (1024) scripts name a network file the public code lacks (../shared/public-amr/amr/exps/
    cifar10_1024/mixup_lamb50.sh line 8: --arch=architectures/arch_acai_kyle_1024.py; line 23 sets the probe's
    n_in 1024): --list-presets says ours is an inference; no other row carries a note."""
    from amr_fast.presets import PRESET_ROWS, preset_line

    inferred = [name for name in PRESET_ROWS if "network inferred" in preset_line(name)]
    assert inferred == [name for name in PRESET_ROWS if name.startswith("cifar10-1024")] and len(inferred) == 8
    assert all(PRESETS[name].code_channels * 16 == 1024 for name in inferred)
