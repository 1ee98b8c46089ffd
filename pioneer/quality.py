"""Image-quality and latent-quality math, pure torch: PSNR, SSIM, MS-SWD, a linear probe.

The metric registry that runs these on a model and its baselines is `pioneer.evaluation`.
Images are (N, 3, H, W) in [-1, 1] unless said otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of (N, 3, H, W) images in [-1, 1] (peak = full range)."""
    x01 = (x.float().clamp(-1, 1) + 1) / 2
    y01 = (y.float().clamp(-1, 1) + 1) / 2
    mse = (x01 - y01).square().flatten(1).mean(dim=1).clamp_min(1e-10)  # (N,)
    return (10 * torch.log10(1.0 / mse)).mean().item()


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window, K1=0.01, K2=0.03, data range 1).

    The window shrinks to the largest odd size that fits images smaller than it.
    """
    x = (x.double().clamp(-1, 1) + 1) / 2
    y = (y.double().clamp(-1, 1) + 1) / 2
    side = min(x.shape[-2:])
    window = min(window, side if side % 2 else side - 1)
    g = _gaussian(window, sigma)
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=3)  # 'valid', as the reference implementation

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.mean().item()


# MS-SWD: the multi-scale sliced Wasserstein distance of Karras et al. (progressive GAN,
# Sec. 5 and its sliced_wasserstein.py): 7x7 patches from every level of a Laplacian pyramid
# (down to 16x16), normalised per channel, compared along random directions.

_BLUR = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _down(x: torch.Tensor) -> torch.Tensor:
    kernel = (_BLUR[:, None] * _BLUR[None, :]).to(x).expand(3, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)[..., ::2, ::2]


def _up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.zeros(n, c, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    out[..., ::2, ::2] = x * 4
    kernel = (_BLUR[:, None] * _BLUR[None, :]).to(x).expand(3, 1, 5, 5)
    return F.conv2d(F.pad(out, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)


def laplacian_pyramid(x: torch.Tensor, smallest: int = 16) -> list[torch.Tensor]:
    """Band-pass levels, finest first, down to `smallest` px (the last is the low-pass)."""
    levels = []
    while x.shape[-1] > smallest:
        low = _down(x)
        levels.append(x - _up(low))
        x = low
    levels.append(x)
    return levels


def patch_descriptors(
    level: torch.Tensor, per_image: int, generator: torch.Generator, size: int = 7
) -> torch.Tensor:
    """per_image random size x size patches of each image, (N * per_image, 3 * size^2)."""
    n, _, h, w = level.shape
    size = min(size, h, w)
    ys = torch.randint(0, h - size + 1, (n, per_image), generator=generator)
    xs = torch.randint(0, w - size + 1, (n, per_image), generator=generator)
    offsets = torch.arange(size)
    rows = (ys[..., None] + offsets)[..., :, None]  # (N, P, size, 1)
    cols = (xs[..., None] + offsets)[..., None, :]  # (N, P, 1, size)
    images = torch.arange(n)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[images, rows, cols]  # (N, P, size, size, 3)
    return patches.permute(0, 1, 4, 2, 3).reshape(n * per_image, -1)


def _normalise(descriptors: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per colour channel over all of a set's patches."""
    d = descriptors.view(descriptors.shape[0], 3, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((d - mean) / std).view(descriptors.shape[0], -1)


def sliced_wasserstein(
    a: torch.Tensor, b: torch.Tensor, generator: torch.Generator, directions: int = 512
) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of projections."""
    count = min(len(a), len(b))
    a, b = a[:count], b[:count]
    total = 0.0
    for start in range(0, directions, 128):
        dirs = torch.randn(a.shape[1], min(128, directions - start), generator=generator)
        dirs = F.normalize(dirs.to(a), dim=0)
        pa, _ = torch.sort(a @ dirs, dim=0)
        pb, _ = torch.sort(b @ dirs, dim=0)
        total += (pa - pb).abs().mean(dim=0).sum().item()
    return total / directions


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(parts) & 0x7FFF_FFFF)


def ms_swd(
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    per_image: int = 128,
    max_descriptors: int = 2**16,
) -> dict[str, float]:
    """MS-SWD x 1e3 per pyramid level (finest first) and their mean, for two image sets."""
    per_image = max(1, min(per_image, max_descriptors // max(1, min(len(x), len(y)))))
    out = {}
    levels_x, levels_y = laplacian_pyramid(x.float()), laplacian_pyramid(y.float())
    for depth, (level_x, level_y) in enumerate(zip(levels_x, levels_y, strict=True)):
        # The same patch positions in both sets, so only the images differ, not the draw.
        a = _normalise(patch_descriptors(level_x, per_image, _generator(seed, depth)))
        b = _normalise(patch_descriptors(level_y, per_image, _generator(seed, depth)))
        directions = _generator(seed, depth, 1)
        out[f"{level_x.shape[-1]}px"] = 1e3 * sliced_wasserstein(a, b, directions)
    out["mean"] = sum(out.values()) / len(levels_x)
    return out


def linear_probe(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decay: float = 1e-3,
    iterations: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression per label column; returns (test accuracy, majority-rate) per column.

    Labels are +1 / -1 (0: unknown, left out). Codes are standardised with the training
    statistics first: unit-norm codes have coordinates ~1/sqrt(D), and unscaled, the weight
    decay would drown the signal.
    """
    mean, std = train_codes.mean(0), train_codes.std(0).clamp_min(1e-8)
    xtr = ((train_codes - mean) / std).double()
    xte = ((test_codes - mean) / std).double()
    known = train_labels != 0
    target = (train_labels > 0).double()
    weight = torch.zeros(
        xtr.shape[1], train_labels.shape[1], dtype=torch.float64, requires_grad=True
    )
    bias = torch.zeros(train_labels.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = xtr @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (loss * known).sum(0) / known.sum(0).clamp_min(1)
        total = loss.sum() + weight_decay * weight.square().sum()
        total.backward()
        return total

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (xte @ weight + bias) > 0
    test_known = test_labels != 0
    truth = test_labels > 0
    counts = test_known.sum(0).clamp_min(1)
    accuracy = ((predicted == truth) & test_known).sum(0) / counts
    majority = (train_labels > 0).sum(0) >= (train_labels < 0).sum(0)  # class per column
    majority_rate = ((truth == majority) & test_known).sum(0) / counts
    return accuracy.float(), majority_rate.float()


def trimmed_mean(values: torch.Tensor, low: float = 0.01, high: float = 0.99) -> float:
    """Mean of the values between the low and high quantiles (PPL's outlier rejection)."""
    values = values.double()
    lo, hi = torch.quantile(values, low), torch.quantile(values, high)
    kept = values[(values >= lo) & (values <= hi)]
    return kept.mean().item()
