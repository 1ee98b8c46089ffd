from contextlib import nullcontext

import pytest
import torch
from torch.nn.utils import parametrize

from pioneer.config import ModelConfig
from pioneer.model import (
    EqualizedLR,
    PixelNorm,
    build_networks,
    freeze_for_inference,
    power_iterate,
    spectral_norm_modules,
)

TINY = dict(latent_size=16, channels=(16, 8, 8, 4))


def convs(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("mode", ["balanced", "baseline"])
@pytest.mark.parametrize("phase", [0, 1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_every_phase_gives_finite_outputs_of_the_right_shape(mode, phase, alpha):
    torch.manual_seed(0)
    encoder, decoder = build_networks(ModelConfig(mode=mode, **TINY))
    side = 4 * 2**phase
    z = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    images = decoder(z, phase, alpha)
    assert images.shape == (5, 3, side, side)
    assert torch.isfinite(images).all()
    codes = encoder(images, phase, alpha)
    assert codes.shape == (5, 16)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(5))


def block_convs(net):
    return [m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d)]


def rgb_convs(net):
    rgb = net.to_rgb if hasattr(net, "to_rgb") else net.from_rgb
    return [m for m in rgb.modules() if isinstance(m, torch.nn.Conv2d)]


def test_balanced_mode_puts_spectral_norm_on_every_block_conv_of_both_nets():
    encoder, decoder = build_networks(ModelConfig(mode="balanced", **TINY))
    for net in (encoder, decoder):
        assert block_convs(net)
        assert set(map(id, spectral_norm_modules(net))) == set(map(id, block_convs(net)))
        assert not any(parametrize.is_parametrized(m, "weight") for m in rgb_convs(net))
        assert not any(isinstance(m, PixelNorm) for m in net.modules())
    # With rgb_spectral_norm, literally every conv carries it.
    encoder, decoder = build_networks(ModelConfig(rgb_spectral_norm=True, **TINY))
    for net in (encoder, decoder):
        assert set(map(id, spectral_norm_modules(net))) == set(map(id, convs(net)))
        for conv in convs(net):
            assert not any(isinstance(p, EqualizedLR) for p in conv.parametrizations.weight)


def test_baseline_mode_has_equalized_lr_and_pixel_norm_in_the_decoder_only():
    encoder, decoder = build_networks(ModelConfig(mode="baseline", **TINY))
    assert not spectral_norm_modules(decoder)
    for conv in convs(decoder):
        assert parametrize.is_parametrized(conv, "weight")
        assert isinstance(conv.parametrizations.weight[0], EqualizedLR)
    assert sum(isinstance(m, PixelNorm) for m in decoder.modules()) > 0
    assert set(map(id, spectral_norm_modules(encoder))) == set(map(id, block_convs(encoder)))
    assert not any(isinstance(m, PixelNorm) for m in encoder.modules())


def test_encoder_rejects_images_of_the_wrong_resolution():
    encoder, decoder = build_networks(ModelConfig(**TINY))
    with pytest.raises(ValueError, match=r"phase 2 expects \(N, 3, 16, 16\)"):
        encoder(torch.zeros(2, 3, 8, 8), phase=2)
    with pytest.raises(ValueError, match="latents"):
        decoder(torch.zeros(2, 7), phase=0)


def test_fade_in_at_alpha_zero_is_the_previous_resolution_upsampled():
    torch.manual_seed(0)
    _, decoder = build_networks(ModelConfig(**TINY))
    decoder.eval()
    z = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    coarse = decoder(z, 1, 1.0)
    faded = decoder(z, 2, 0.0)
    torch.testing.assert_close(faded, coarse.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_power_iterate_converges_to_the_true_spectral_norm():
    torch.manual_seed(0)
    _, decoder = build_networks(ModelConfig(**TINY))
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # move the weights away from the u/v's
    power_iterate(decoder, iterations=200)
    decoder.eval()
    for module in spectral_norm_modules(decoder):
        original = module.parametrizations.weight.original
        true_sigma = torch.linalg.matrix_norm(original.flatten(1), ord=2)
        normalised = torch.linalg.matrix_norm(module.weight.flatten(1), ord=2)
        assert abs(normalised.item() - 1.0) < 1e-3, (true_sigma, normalised)


def test_spectral_norm_stays_fp32_under_bf16_autocast():
    """sigma is computed outside autocast, so a bf16 forward sees the fp32 normalised
    weight bit for bit (on a GPU, autocast would otherwise run its mv in bf16)."""
    torch.manual_seed(0)
    _, decoder = build_networks(ModelConfig(**TINY))
    decoder.eval()
    for module in spectral_norm_modules(decoder):
        eager = module.weight
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = module.weight
        assert inside.dtype == torch.float32 and torch.equal(inside, eager)


@pytest.mark.parametrize("mode", ["balanced", "baseline"])
def test_frozen_networks_compute_what_the_parametrized_ones_do(mode):
    torch.manual_seed(0)
    encoder, decoder = build_networks(ModelConfig(mode=mode, **TINY))
    encoder.train()
    power_iterate(encoder, 5)
    encoder.eval()
    decoder.eval()
    z = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    with torch.no_grad():
        images = decoder(z, 2, 0.5)
        codes = encoder(images, 2, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images_bf16 = decoder(z, 2, 0.5)
        frozen_encoder = freeze_for_inference(encoder)
        frozen = freeze_for_inference(decoder)
        torch.testing.assert_close(frozen(z, 2, 0.5), images, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen_encoder(images, 2, 0.5), codes, rtol=1e-5, atol=1e-6)
        frozen_bf16 = freeze_for_inference(decoder, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(frozen_bf16(z, 2, 0.5), images_bf16, rtol=0, atol=0)
    for net in (frozen_encoder, frozen_bf16):
        assert not any(parametrize.is_parametrized(m) for m in net.modules())
        assert not net.training
    assert {m.weight.dtype for m in convs(frozen_bf16)} == {torch.bfloat16}


def test_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    from pioneer import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve("auto", cpu) == "fp32"
    assert isinstance(precision.autocast("auto", cpu), nullcontext)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert precision.resolve("auto", cpu) == "bf16" and precision.resolve("fp32", cpu) == "fp32"
    assert isinstance(precision.autocast("auto", cpu), torch.autocast)
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("fp16", cpu)
