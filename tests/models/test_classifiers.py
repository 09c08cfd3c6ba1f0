"""Tests for the Manifold Mixup classifiers (amr_fast/models/preact_resnet.py, amr_fast/models/wrn.py)."""

import pytest
import torch
from test_classify import _one_thread  # noqa: F401  (autouse: one torch thread for tiny tensors)
from torch.nn import functional as F

from amr_fast.models.preact_resnet import preact_resnet18, preact_resnet34
from amr_fast.models.wrn import WideResNet, wrn28_10


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_preact_resnet18_matches_the_published_size():
    assert n_params(preact_resnet18(3, 10)) / 1e6 == pytest.approx(11.17, abs=0.01)  # the paper's 11.2 M


def public_wrn_size(depth: int, k: int, num_classes: int) -> int:
    """Parameters of the public Wide_ResNet (vikasverma1077/manifold_mixup supervised/models/wide_resnet.py),
    counted from its definition: `conv3x3(3, nStages[0])` with `bias=True`; per `wide_basic`: bn1(in_planes),
    conv1 3x3 in->planes `bias=True`, bn2(planes), conv2 3x3 planes->planes `bias=True`, and where
    `stride != 1 or in_planes != planes` a 1x1 shortcut conv `bias=True`; `nn.BatchNorm2d(nStages[3],
    momentum=0.9)`; `nn.Linear(nStages[3], num_classes)`."""
    n, stages = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    total, c_in = 3 * stages[0] * 9 + stages[0], stages[0]
    for i, planes in enumerate(stages[1:]):
        for b in range(n):
            stride = 2 if i > 0 and b == 0 else 1
            total += 2 * c_in + (c_in * planes * 9 + planes) + 2 * planes + (planes * planes * 9 + planes)
            if stride != 1 or c_in != planes:
                total += c_in * planes + planes
            c_in = planes
    return total + 2 * stages[3] + stages[3] * num_classes + num_classes


@pytest.mark.parametrize("num_classes", [10, 100])
def test_wrn28_10_has_the_public_networks_parameter_count(num_classes):
    assert n_params(wrn28_10(3, num_classes)) == public_wrn_size(28, 10, num_classes)


def test_wrn_block_is_the_public_wide_basic():
    """The public `wide_basic.forward`: `out = self.conv1(act(self.bn1(x)))`, `out = self.conv2(act(self.bn2(out)))`,
    `out += self.shortcut(x)`, with the stride on conv2 (`nn.Conv2d(planes, planes, kernel_size=3, stride=stride,
    padding=1, bias=True)`) and the shortcut a 1x1 conv of the raw x. Written out with F.conv2d on our block's
    weights (the first block of stage 2: stride 2 and a width change), in eval mode with non-trivial BN statistics."""
    model = WideResNet(10, 2, 3, 10).eval()
    block = model.stages[1][0]
    torch.manual_seed(1)
    for bn in (block.bn1, block.bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()

    def bn_relu(h, bn):
        return F.relu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    x = torch.randn(2, block.conv1.in_channels, 32, 32)
    out = F.conv2d(bn_relu(x, block.bn1), block.conv1.weight, block.conv1.bias, stride=1, padding=1)
    out = F.conv2d(bn_relu(out, block.bn2), block.conv2.weight, block.conv2.bias, stride=2, padding=1)
    want = out + F.conv2d(x, block.shortcut.weight, block.shortcut.bias, stride=2)
    with torch.no_grad():
        got = block(x)
    assert got.shape == (2, block.conv2.out_channels, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


def test_wrn_final_bn_has_the_public_momentum_in_pytorchs_meaning():
    """The public `self.bn1 = nn.BatchNorm2d(nStages[3], momentum=0.9)` is PyTorch's momentum (the public code is
    PyTorch): running = (1 - 0.9) running + 0.9 batch, so one training batch from zero statistics leaves 0.9 of its
    mean (the Keras reading of 0.9 would leave 0.1 of it). Every other BN keeps PyTorch's default 0.1."""
    model = wrn28_10(3, 10, width=0.05).train()
    head = model.stages[-1]
    h = torch.randn(4, head.bn.num_features, 8, 8) + 3.0
    head(h)
    torch.testing.assert_close(head.bn.running_mean, 0.9 * h.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    others = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m is not head.bn}
    assert others == {0.1}


def test_wrn28_10_logits_and_mix_layers():
    model = wrn28_10(3, 100, width=0.05)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.num_mix_layers == 3  # input, after stage 1, after stage 2: the public random.randint(0, 2)


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
