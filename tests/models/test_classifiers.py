"""Tests for the Manifold Mixup classifiers (amr_fast/models/preact_resnet.py, amr_fast/models/wrn.py)."""

import pytest
import torch
from test_classify import _one_thread  # noqa: F401  (autouse: one torch thread for tiny tensors)

from amr_fast.models.preact_resnet import preact_resnet18, preact_resnet34
from amr_fast.models.wrn import WideResNet, wrn28_10


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "build, expected_millions",
    [(preact_resnet18, 11.17), (wrn28_10, 36.48)],  # the sizes the papers quote (11.2 M, 36.5 M)
)
def test_full_width_matches_published_sizes(build, expected_millions):
    assert n_params(build(3, 10)) / 1e6 == pytest.approx(expected_millions, abs=0.01)


@pytest.mark.parametrize("build", [preact_resnet18, preact_resnet34, lambda c, n, w: WideResNet(10, 2, c, n, w)])
def test_logits_shape_and_width_multiplier(build):
    small, smaller = build(1, 7, 0.25), build(1, 7, 0.125)
    x = torch.randn(3, 1, 32, 32)
    assert small(x).shape == (3, 7)
    assert n_params(smaller) < n_params(small) / 3  # conv weights scale ~ width^2
    assert small.num_mix_layers >= 3  # input, after stage 1, after stage 2 (the paper's set)


@pytest.mark.parametrize("mix_layer", [0, 1, 2, 3])
def test_mix_is_applied_at_exactly_that_stage_input(mix_layer):
    model = preact_resnet18(1, 5, 0.125).eval()
    x = torch.randn(4, 1, 32, 32)
    seen: list[list[torch.Tensor]] = [[], []]
    hooks = [
        stage.register_forward_pre_hook(lambda mod, args, i=i: seen[run].append((i, args[0].clone())))
        for i, stage in enumerate(model.stages)
    ]
    run = 0
    with torch.no_grad():
        model(x)
        run = 1
        model(x, mix_layer=mix_layer, mix=lambda h: h.flip(0))
    for hook in hooks:
        hook.remove()
    clean, mixed = dict(seen[0]), dict(seen[1])
    for i in range(len(model.stages)):
        if i < mix_layer:
            torch.testing.assert_close(mixed[i], clean[i])  # before the drawn layer: the clean batch
        elif i == mix_layer:
            torch.testing.assert_close(mixed[i], clean[i].flip(0))  # at it: the mix of the clean state
    assert not torch.allclose(mixed[len(model.stages) - 1], clean[len(model.stages) - 1])


def test_bad_mix_layer_is_a_clear_error():
    model = preact_resnet18(1, 5, 0.125)
    with pytest.raises(ValueError, match="mix_layer must lie in"):
        model(torch.randn(2, 1, 32, 32), mix_layer=model.num_mix_layers, mix=lambda h: h)
    with pytest.raises(ValueError, match="both mix_layer and mix"):
        model(torch.randn(2, 1, 32, 32), mix_layer=1)


def test_build_classifier_refuses_mix_layers_past_the_network():
    from amr_fast.config import ClassifyConfig
    from amr_fast.models import build_classifier

    cfg = ClassifyConfig(channels=1, num_classes=5, width=1 / 16, batch=8, mode="manifold", mix_layers=(0, 7))
    with pytest.raises(ValueError, match="mix_layers"):
        build_classifier(cfg.validate())
