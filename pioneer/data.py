"""Small data helpers shared by the dataset readers, the API and the training loop."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pioneer.transform import IMAGE_SUFFIXES, ImageSkip, decode, resize


class DataError(ValueError):
    """The data path cannot be used: missing, empty, or too few readable images."""


def seed_of(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (Python's hash() is salted per process for str)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist")
    if root.is_file():
        raise DataError(f"data path {str(root)!r} is a file; give a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no .jpg/.png/.webp images under {str(root)!r}")
    return files


def load_image(path: str | Path, crop: str, size: int) -> torch.Tensor:
    """Decode, convert to RGB, crop and resize: uint8 (3, size, size). Raises ValueError."""
    try:
        image, _ = decode(Path(path).read_bytes())
    except (ImageSkip, OSError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    return torch.from_numpy(resize(image, crop, size).copy()).permute(2, 0, 1).contiguous()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
