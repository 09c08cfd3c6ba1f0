"""AMR networks: shapes of every model, the public-code quirks we kept or fixed, the class mixer's mask range."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from amr_fast.models import build_networks
from amr_fast.models.amr32 import AMR32AutoEncoder
from amr_fast.models.mixer import ClassMixer
from amr_fast.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    # preset -> (tiny overrides, code shape)
    "mnist-mixup": (dict(width=4), (2, 4, 4)),
    "cifar10-1024-mixup-k4": (dict(width=4), (64, 4, 4)),
    "fashion-mnist-class": (dict(width=4, mixer_hidden=8), (2, 4, 4)),
    "dsprites-mixup": (dict(width=4, disc_width=4), (10,)),
    "dsprites-betavae": (dict(width=4, disc_width=4), (10,)),
    "spiral-mixup": (dict(width=8), (2,)),
}


def _x(cfg, n=3):
    if cfg.arch == "mlp":
        return torch.rand(n, cfg.channels) * 2 - 1  # points [N, 2]
    return torch.rand(n, cfg.channels, cfg.img_size, cfg.img_size) * 2 - 1


@pytest.mark.parametrize("preset", CASES)
def test_shapes_of_every_model(preset):
    overrides, code_shape = CASES[preset]
    cfg = replace(PRESETS[preset], **overrides)
    nets = build_networks(cfg)
    assert set(nets) == {"ae", "disc", "probe"} | ({"mixer"} if cfg.mixer == "class" else set())
    ae, disc, probe = nets["ae"], nets["disc"], nets["probe"]
    x = _x(cfg)
    h, x_rec = ae(x)
    assert tuple(h.shape) == (3, *code_shape) and ae.code_shape == code_shape
    assert x_rec.shape == x.shape and x_rec.abs().max() <= 1
    x_rec2, logits = ae.decode_with_logits(h)
    torch.testing.assert_close(x_rec2, x_rec)
    torch.testing.assert_close(torch.sigmoid(logits), (x_rec + 1) / 2, atol=1e-5, rtol=1e-5)
    assert disc(x).shape == (3,)
    assert probe(h.flatten(1)).shape == (3, cfg.num_classes)
    assert probe.in_features == math.prod(code_shape)
    if cfg.method == "betavae":
        mu, logvar = ae.encode_stats(x)
        assert mu.shape == logvar.shape == (3, *code_shape)
        torch.testing.assert_close(ae.encode(x), mu)
    if cfg.mixer == "class":
        logits_d, aux = disc.forward_aux(x)
        torch.testing.assert_close(logits_d, disc(x))
        assert aux.shape == (3, cfg.num_classes)
        m = nets["mixer"](torch.rand(3, cfg.num_classes))
        assert m.shape == (3, 2, code_shape[0])
    else:
        with pytest.raises(ValueError, match="mixer=class"):
            disc.forward_aux(x)


@pytest.mark.parametrize("preset", ["mnist-mixup", "dsprites-mixup", "spiral-mixup"])
def test_disc_blocks_split_anywhere_equal_the_full_pass(preset):
    cfg = replace(PRESETS[preset], **CASES[preset][0])
    disc = build_networks(cfg)["disc"].eval()  # eval: spectral norm's power iteration does not move between calls
    x = _x(cfg, 4)
    full = disc(x)
    for layer in range(disc.num_blocks + 1):
        torch.testing.assert_close(disc.outputs(disc.run(disc.run(x, 0, layer), layer)), full)


def test_amr32_keeps_the_34x34_stem_and_reaches_a_4x4_bottleneck():
    ae = AMR32AutoEncoder(channels=3, width=4, code_channels=16, img_size=32)
    stem = ae.encoder[0][0]
    assert stem.kernel_size == (1, 1) and stem.padding == (1, 1)
    assert stem(torch.zeros(1, 3, 32, 32)).shape[-2:] == (34, 34)
    assert ae.encode(torch.zeros(2, 3, 32, 32)).shape == (2, 16, 4, 4)
    # 64x64 inputs: one more scale, same bottleneck
    ae64 = AMR32AutoEncoder(channels=1, width=4, code_channels=2, img_size=64)
    assert ae64(torch.zeros(2, 1, 64, 64))[1].shape == (2, 1, 64, 64)
    assert ae64.encode(torch.zeros(2, 1, 64, 64)).shape == (2, 2, 4, 4)
    slopes = {m.negative_slope for m in ae.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}


def test_amr32_init_uses_the_right_fan_in_and_unit_norm_scales():
    torch.manual_seed(0)
    ae = AMR32AutoEncoder(channels=1, width=32, code_channels=2, img_size=32)
    for m in ae.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_groups == m.num_channels  # instance norm
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.Conv2d) and m.weight.numel() > 4000:
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            expected = 1 / math.sqrt(1.04 * fan_in)
            assert abs(m.weight.std().item() / expected - 1) < 0.1, (m, m.weight.std().item(), expected)


def test_group_norm_with_one_channel_per_group_is_instance_norm():
    gn, inorm = nn.GroupNorm(6, 6), nn.InstanceNorm2d(6, affine=True)
    nn.init.normal_(gn.weight), nn.init.normal_(gn.bias)
    inorm.load_state_dict(gn.state_dict())
    x = torch.randn(3, 6, 5, 7, requires_grad=True)
    torch.testing.assert_close(gn(x), inorm(x), atol=1e-5, rtol=1e-5)
    (g1,) = torch.autograd.grad(gn(x).square().sum(), x)
    (g2,) = torch.autograd.grad(inorm(x).square().sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def test_disc_is_spectrally_normalised_except_the_amr32_stem():
    nets = build_networks(replace(PRESETS["mnist-mixup"], width=4))
    convs = [m for m in nets["disc"].modules() if isinstance(m, nn.Conv2d)]
    normalised = [nn.utils.parametrize.is_parametrized(m, "weight") for m in convs]
    assert normalised[0] is False and all(normalised[1:])  # the 1x1 stem is plain, as the public code
    assert not any(isinstance(m, nn.GroupNorm) for m in nets["disc"].modules())


def test_class_mixer_masks_cover_zero_to_one_not_stuck_above_half():
    torch.manual_seed(0)
    lows = []
    for seed in range(5):  # fresh initialisations: the public code's ReLU-before-sigmoid gave masks >= 0.5 always
        torch.manual_seed(seed)
        mixer = ClassMixer(num_classes=10, channels=16, k=2, hidden=32)
        y_mix = (torch.rand(64, 10) < 0.3).float()
        m = mixer(y_mix)
        assert m.shape == (64, 2, 16)
        assert ((m > 0) & (m < 1)).all()
        torch.testing.assert_close(m.sum(dim=1), torch.ones(64, 16))
        lows.append((m[:, 0] < 0.5).float().mean().item())
    assert min(lows) > 0.1, lows  # a good share of channels favour the second source
    # k > 2: a distribution over the k sources per channel
    m3 = ClassMixer(num_classes=10, channels=8, k=3, hidden=16)(torch.rand(5, 10))
    assert m3.shape == (5, 3, 8)
    torch.testing.assert_close(m3.sum(dim=1), torch.ones(5, 8))


def test_class_mixer_can_learn_a_mask_below_half():
    torch.manual_seed(0)
    mixer = ClassMixer(num_classes=4, channels=6, k=2, hidden=16)
    opt = torch.optim.Adam(mixer.parameters(), lr=1e-2)
    y = torch.eye(4)
    for _ in range(100):
        opt.zero_grad()
        mixer(y)[:, 0].mean().backward()  # push the first source's weight down
        opt.step()
    assert mixer(y)[:, 0].max() < 0.1


def _weight(m: nn.Module) -> torch.Tensor:
    return m.parametrizations.weight.original if nn.utils.parametrize.is_parametrized(m, "weight") else m.weight


def _default_init(m: nn.Module) -> bool:
    """PyTorch's default init of a conv / linear layer: weights and bias U(-b, b), b = 1 / sqrt(fan_in) (torch's
    fan_in: weight.shape[1] x kernel size, also for ConvTranspose2d), i.e. std b / sqrt(3), every |w| <= b."""
    w = _weight(m)
    b = 1 / math.sqrt(w[0].numel() if not isinstance(m, nn.ConvTranspose2d) else w.shape[1] * w[0, 0].numel())
    spread = abs(w.std().item() / (b / math.sqrt(3)) - 1) < 0.15
    return spread and w.abs().max().item() <= b and m.bias.abs().max().item() <= b and m.bias.abs().sum() > 0


def test_dsprites_init_is_the_public_kaiming_init_on_conv2d_and_linear_only():
    """The public dSprites networks (../shared/public-amr/amr/architectures/konny/model.py lines 117-120 and
    180-183 call `kaiming_init` on every module; lines 132-136: it matches only nn.Linear / nn.Conv2d, Kaiming
    normal with zero bias): the decoder's ConvTranspose2d layers keep PyTorch's default init."""
    torch.manual_seed(0)
    nets = build_networks(PRESETS["dsprites-bernoulli-k3"])
    transposed = [m for m in nets["ae"].modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == 4 and all(_default_init(m) for m in transposed[:3])  # the last one: 32 x 1 weights
    for net in (nets["ae"], nets["disc"]):
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.numel() > 4000:
                w = _weight(m)
                assert abs(w.std().item() / math.sqrt(2 / w[0].numel()) - 1) < 0.1 and not m.bias.any(), m


def test_amr32_disc_spectral_norm_layers_keep_the_default_init():
    """The public 32x32 D (../shared/public-amr/amr/architectures/arch_kyle.py lines 18-25, `Initializer`: only
    layers with `hasattr(layer, 'weight')`; lines 31-34 wrap D's 3x3 convs in SpectralNorm, whose weight moves to
    the wrapped module as `weight_bar`, architectures/shared/spectral_normalization.py lines 57-63): only the 1x1
    stem gets the ACAI init; every spectrally normalised conv keeps PyTorch's default (uniform) init."""
    torch.manual_seed(0)
    disc = build_networks(PRESETS["mnist-mixup"])["disc"]
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    stem, rest = convs[0], convs[1:]
    assert abs(stem.weight.std().item() * math.sqrt(1.04 * stem.weight[0].numel()) - 1) < 0.2 and not stem.bias.any()
    assert len(rest) == 8 and all(_default_init(m) for m in rest)


def test_spectral_norm_power_iterations_per_step():
    """Ours: one power iteration per D call in training mode (torch's parametrisation), D called once for the D
    step and once more on the AE's iterations: 2 per layer on those, 1 on the others. The public swapgan.py
    (../shared/public-amr/amr/models/swapgan.py lines 237, 241, 273, 278, 282) calls D five times every iteration,
    one power iteration each (spectral_normalization.py lines 66-68): the README's differences table says so."""
    from torch.nn.utils import parametrizations as P

    from amr_fast.train import Parts, train_iteration

    cfg = replace(PRESETS["mnist-mixup"], width=4, batch=4, channels_last=False, precision="fp32")
    nets = build_networks(cfg)
    layers = [m for m in nets["disc"].modules() if isinstance(m, P._SpectralNorm)]
    parts = Parts.build(cfg, nets)
    batch = {"x": torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8), "y": torch.zeros(4, dtype=torch.long)}
    calls, orig = [], P._SpectralNorm._power_method

    def counted(self, *a, **k):
        calls.append(self)
        return orig(self, *a, **k)

    for update_ae, want in ((True, 2), (False, 1)):
        before = [m._u.clone() for m in layers]
        calls.clear()
        P._SpectralNorm._power_method = counted
        try:
            train_iteration(parts, [batch], update_ae)
        finally:
            P._SpectralNorm._power_method = orig
        assert all(sum(c is m for c in calls) == want for m in layers), update_ae
        assert all(not torch.equal(u, m._u) for u, m in zip(before, layers))
