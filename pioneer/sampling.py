"""Latents on the unit sphere: sampling and spherical interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_latents(
    n: int, size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """n points uniform on the unit sphere in R^size (normalised Gaussians), (n, size)."""
    z = torch.randn(n, size, generator=generator, device="cpu")
    return F.normalize(z, dim=1).to(device)


def slerp_pairs(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors (..., D) at fractions t broadcast to (...,)."""
    z0 = F.normalize(z0.float(), dim=-1)
    z1 = F.normalize(z1.float(), dim=-1)
    cos = (z0 * z1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    t = t.float().unsqueeze(-1)
    # Nearly parallel endpoints: sin(omega) ~ 0, fall back to normalised lerp.
    safe = sin.abs() > 1e-6
    w0 = torch.where(safe, torch.sin((1 - t) * omega) / sin.clamp_min(1e-12), 1 - t)
    w1 = torch.where(safe, torch.sin(t * omega) / sin.clamp_min(1e-12), t)
    return F.normalize(w0 * z0 + w1 * z1, dim=-1)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors (D,) or (N, D) at fractions t (T,) -> (T, ..., D)."""
    t = t.float().view(-1, *([1] * (z0.ndim - 1)))  # (T, 1...) against (1, ..., D)
    return slerp_pairs(z0.unsqueeze(0), z1.unsqueeze(0), t)


def interpolation_fractions(steps: int) -> torch.Tensor:
    """steps evenly spaced fractions from 0 to 1 inclusive."""
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
    return torch.linspace(0.0, 1.0, steps)
