import pytest
import torch

from pioneer.config import ModelConfig
from pioneer.ema import copy_block, ema_beta, update_ema
from pioneer.model import Decoder, spectral_norm_modules


def test_beta_gives_the_requested_half_life_in_images():
    beta = ema_beta(images_seen=10**9, batch=32, halflife_images=10_000, rampup=0.05)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # Early on the ramp shortens the half-life to rampup * images seen.
    early = ema_beta(images_seen=1_000, batch=32, halflife_images=10_000, rampup=0.05)
    assert early ** (50 / 32) == pytest.approx(0.5)
    assert ema_beta(10, 32, 10_000, rampup=0.0) == beta


def test_ema_spectral_norm_vectors_follow_the_averaged_weights():
    torch.manual_seed(0)
    config = ModelConfig(latent_size=16, channels=(16, 8, 8))
    live, ema = Decoder(config), Decoder(config)
    ema.load_state_dict(live.state_dict())
    optimizer = torch.optim.Adam(live.parameters(), lr=0.02)
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    for _ in range(60):
        optimizer.zero_grad()
        live(z, 2).square().mean().neg().backward()  # push the weights around
        optimizer.step()
        update_ema(ema, live, beta=0.9)
    ema.eval()
    for module in spectral_norm_modules(ema):
        # The EMA's normalised weight has unit spectral norm: its u/v are its own.
        sigma = torch.linalg.matrix_norm(module.weight.flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)
    live_u = [m.parametrizations.weight[0]._u for m in spectral_norm_modules(live)]
    ema_u = [m.parametrizations.weight[0]._u for m in spectral_norm_modules(ema)]
    assert any(not torch.allclose(a, b) for a, b in zip(live_u, ema_u, strict=False))


def test_a_new_block_starts_from_the_live_weights():
    config = ModelConfig(latent_size=16, channels=(16, 8, 8))
    torch.manual_seed(0)
    live = Decoder(config)
    torch.manual_seed(1)
    ema = Decoder(config)
    copy_block(ema, live, 2)
    for a, b in zip(
        ema.blocks[2].state_dict().values(), live.blocks[2].state_dict().values(), strict=False
    ):
        assert torch.equal(a, b)
    assert not torch.equal(ema.to_rgb[1].weight, live.to_rgb[1].weight)  # others untouched
