"""Image-quality figures used during training (the metric registry comes with `pioneer eval`)."""

from __future__ import annotations

import torch


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of (N, 3, H, W) images in [-1, 1] (peak = full range)."""
    x01 = (x.float().clamp(-1, 1) + 1) / 2
    y01 = (y.float().clamp(-1, 1) + 1) / 2
    mse = (x01 - y01).square().flatten(1).mean(dim=1).clamp_min(1e-10)  # (N,)
    return (10 * torch.log10(1.0 / mse)).mean().item()
