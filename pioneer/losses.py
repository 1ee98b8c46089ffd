"""The PIONEER losses as small pure functions (paper Eq. 1-5). Weights come in as arguments."""

from __future__ import annotations

import torch


def kl_n01(codes: torch.Tensor) -> torch.Tensor:
    """AGE batch estimate of KL(q(z) || N(0, I)) from codes (N, D), averaged over dimensions.

    Fits a diagonal Gaussian to the batch: per dimension mean mu_d and variance s2_d, then
    KL = mean_d[(s2_d + mu_d^2) / 2 - log(s2_d) / 2 - 1/2]. Computed in fp32 at least.
    """
    codes = codes.float() if codes.dtype in (torch.float16, torch.bfloat16) else codes
    mean = codes.mean(dim=0)
    var = codes.var(dim=0, unbiased=False).clamp_min(1e-12)
    return ((var + mean.square()) / 2 - var.log() / 2 - 0.5).mean()


def kl_gap(kl_real: torch.Tensor, kl_fake: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Eq. 5's hinge max(-M, KL(q(z|x)) - KL(q(z|x_hat))); plain Eq. 1 difference when M is None.

    The bound stops the encoder from widening the gap without limit and overpowering the
    decoder, the collapse of Sec. 3.1 / Fig. 3.
    """
    gap = kl_real - kl_fake
    return gap if margin is None else gap.clamp_min(-margin)


def reconstruction_l1(x: torch.Tensor, x_reconstructed: torch.Tensor) -> torch.Tensor:
    """Eq. 3 L_X: per-pixel mean |x - theta(phi(x))|."""
    return (x.float() - x_reconstructed.float()).abs().mean()


def latent_cosine(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Eq. 4 L_Z: batch mean of 1 - z^T phi(theta(z)), both unit vectors."""
    return (1.0 - (z.float() * codes.float()).sum(dim=1)).mean()


def encoder_loss(
    kl_real: torch.Tensor,
    kl_fake: torch.Tensor,
    recon: torch.Tensor,
    margin: float | None,
    kl_weight: float,
    recon_weight: float,
) -> torch.Tensor:
    """Eq. 5: kl_weight * max(-M, KL_real - KL_fake) + lambda_X * L_X."""
    return kl_weight * kl_gap(kl_real, kl_fake, margin) + recon_weight * recon


def decoder_loss(
    kl_fake: torch.Tensor, latent: torch.Tensor, kl_weight: float, latent_weight: float
) -> torch.Tensor:
    """Eq. 2: kl_weight * KL(q(z|x_hat)) + lambda_Z * L_Z."""
    return kl_weight * kl_fake + latent_weight * latent
