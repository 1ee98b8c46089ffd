"""PNG grids and image files for the CLI, the API and the training loop."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from pioneer.data import load_image, to_uint8, to_unit_range
from pioneer.storage import atomic_write


def grid_image(images: torch.Tensor, nrow: int, min_tile: int = 64) -> Image.Image:
    """(N, 3, R, R) in [-1, 1] -> one PIL grid; small tiles are enlarged (nearest) to min_tile."""
    images = images.detach().float().cpu()
    side = images.shape[-1]
    if side < min_tile:
        scale = -(-min_tile // side)
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=255)  # (3, H, W)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())


def save_png(image: Image.Image, path: str | Path) -> Path:
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    return save_png(grid_image(images, nrow), path)


def read_images(paths: list[str | Path], crop: str, resolution: int) -> torch.Tensor:
    """Image files -> (N, 3, R, R) in [-1, 1], cropped as the training data was."""
    return to_unit_range(torch.stack([load_image(p, crop, resolution) for p in paths]))
