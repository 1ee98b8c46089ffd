import numpy as np
import pytest
import torch

from pioneer.losses import (
    decoder_loss,
    encoder_loss,
    kl_gap,
    kl_n01,
    latent_cosine,
    reconstruction_l1,
)


def kl_closed_form_float64(codes: np.ndarray) -> float:
    """KL(N(mu_d, s2_d) || N(0, 1)) averaged over dimensions, written out independently."""
    total = 0.0
    n, dims = codes.shape
    for d in range(dims):
        column = codes[:, d].astype(np.float64)
        mu = column.sum() / n
        s2 = ((column - mu) ** 2).sum() / n
        total += 0.5 * (s2 + mu * mu - np.log(s2) - 1.0)
    return total / dims


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_kl_n01_matches_the_float64_closed_form(scale):
    rng = np.random.default_rng(0)
    codes = rng.normal(0.3, scale, size=(64, 32))
    got = kl_n01(torch.tensor(codes, dtype=torch.float32)).item()
    assert got == pytest.approx(kl_closed_form_float64(codes), rel=1e-5)


def test_kl_n01_of_standard_normal_codes_is_near_zero():
    codes = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    assert abs(kl_n01(codes).item()) < 1e-3


def test_kl_n01_is_fp32_for_bf16_codes():
    codes = torch.randn(16, 8).bfloat16()
    assert kl_n01(codes).dtype == torch.float32


def test_hinge_bounds_the_encoder_kl_term_at_minus_margin():
    kl_real, kl_fake = torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    assert kl_gap(kl_real, kl_fake, margin=0.4).item() == pytest.approx(-0.4)
    assert kl_gap(kl_real, kl_fake, margin=None).item() == pytest.approx(-2.0)
    assert kl_gap(kl_real, kl_fake, margin=5.0).item() == pytest.approx(-2.0)
    # Beyond the margin the encoder gets no more reward for widening the gap.
    kl_gap(kl_real, kl_fake, margin=0.4).backward()
    assert kl_real.grad.item() == 0.0 and kl_fake.grad.item() == 0.0


def test_losses_combine_terms_with_their_weights():
    x = torch.zeros(2, 3, 4, 4)
    assert reconstruction_l1(x, x + 0.5).item() == pytest.approx(0.5)
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert latent_cosine(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert latent_cosine(z, -z).item() == pytest.approx(2.0, abs=1e-6)
    kr, kf, rec = torch.tensor(1.0), torch.tensor(2.5), torch.tensor(0.2)
    assert encoder_loss(kr, kf, rec, 0.2, 1.0, 10.0).item() == pytest.approx(-0.2 + 2.0)
    assert encoder_loss(kr, kf, rec, None, 0.5, 10.0).item() == pytest.approx(-0.75 + 2.0)
    assert decoder_loss(kf, torch.tensor(0.01), 1.0, 1000.0).item() == pytest.approx(2.5 + 10.0)
