"""TrainConfig: presets (one per row of the AMR paper's tables 1-4), overrides, validation errors, JSON round trip."""

import dataclasses
import json
import re

import pytest

from amr_fast.config import PRESETS, TrainConfig, from_dict, parse_overrides, resolve, to_json

PAPER_DATASETS = ("mnist", "kmnist", "svhn32", "svhn256", "cifar10-256", "cifar10-1024", "dsprites")


def test_every_preset_validates_and_names_match_the_settings():
    pattern = re.compile(r"^(?P<data>[a-z0-9-]+?)-(?P<method>aegan|mixup|bernoulli|acai|class|betavae)(-k(?P<k>\d))?$")
    for name, cfg in PRESETS.items():
        assert cfg.validate() is cfg
        if name == "demo" or name.endswith("-consistency"):
            continue
        m = pattern.match(name)
        assert m, name
        method = m["method"]
        assert cfg.k == int(m["k"] or 2), name
        expected_mixer = {"aegan": "none", "acai": "mixup", "betavae": "none"}.get(method, method)
        assert cfg.mixer == expected_mixer, name
        assert cfg.method == {"acai": "acai", "betavae": "betavae"}.get(method, "amr"), name


def test_paper_presets_cover_the_tables_with_the_papers_hyperparameters():
    for data in ("mnist", "kmnist", "svhn32"):  # table 1
        for method in ("aegan", "acai", "mixup", "bernoulli", "mixup-k3", "bernoulli-k3"):
            assert f"{data}-{method}" in PRESETS
    for n in (1, 5, 10, 20):  # table 2
        for method in ("aegan", "acai", "mixup", "bernoulli"):
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
    assert PRESETS["demo"].data == "builtin:dsprites-procedural-large"
    assert (PRESETS["demo"].mixer, PRESETS["demo"].k) == ("mixup", 3)
    demo, row = PRESETS["demo"], PRESETS["dsprites-mixup-k3"]  # the demo keeps the maths of its table-4 row
    same = ("arch", "method", "mixer", "k", "alpha", "recon", "code_dim", "gan_weight", "beta", "disc_mix")
    assert all(getattr(demo, f) == getattr(row, f) for f in same)
    for name in ("fashion-mnist-aegan", "fashion-mnist-mixup", "fashion-mnist-bernoulli", "fashion-mnist-mixup-k3"):
        assert PRESETS[name].code_channels * 16 == 32 and PRESETS[name].img_size == 32


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
        ({"mixer": "mixpu"}, r"mixer must be one of none, mixup, bernoulli, class; got 'mixpu' \(did you mean 'mixup'"),
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
