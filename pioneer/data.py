"""Image-folder data: decode once, crop around the face, and serve deterministic batches.

The batch drawn at a step is a pure function of (seed, images seen, rank): the data order is
one permutation per epoch shared by all workers, each worker takes its own slice of the
global batch, and flips come from a generator seeded by the step. So a resumed run sees
exactly the images the uninterrupted run would have, with no RNG state to save.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from pioneer.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# CelebA's usual 140x140 face crop of the 178x218 aligned images, as a fraction of the width.
FACE_CROP_FRACTION = 140 / 178


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


def crop_box(width: int, height: int, crop: str) -> tuple[int, int, int, int]:
    """Square (left, top, right, bottom) to cut before resizing."""
    if crop == "none":
        return (0, 0, width, height)
    side = min(width, height)
    if crop == "face":
        side = min(side, round(width * FACE_CROP_FRACTION))
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def load_image(path: str | Path, crop: str, size: int) -> torch.Tensor:
    """Decode, convert to RGB, crop and resize: uint8 (3, size, size). Raises ValueError."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
            image = image.crop(crop_box(*image.size, crop))
            image = image.resize((size, size), Image.Resampling.LANCZOS)
            array = np.asarray(image, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, size, size)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped."""
    return images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def downsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Box-filter (N, 3, S, S) down to (N, 3, R, R); S/R is a power of two."""
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="area")


@dataclass
class FaceImages:
    """All readable images of a folder, decoded once at the top resolution (uint8)."""

    train: torch.Tensor  # (N, 3, S, S) uint8
    holdout: torch.Tensor  # (H, 3, S, S) uint8, never trained on
    skipped: list[str]  # unreadable files, with reasons

    @classmethod
    def load(cls, config: DataConfig, size: int) -> FaceImages:
        files = list_images(config.path)
        images, skipped = [], []
        for path in files:
            try:
                images.append(load_image(path, config.crop, size))
            except ValueError as error:
                skipped.append(str(error))
                log.warning("skipping %s", error)
        if len(images) <= config.holdout:
            raise DataError(
                f"{len(images)} readable images under {config.path!r} "
                f"({len(skipped)} skipped), need more than data.holdout={config.holdout}"
            )
        stacked = torch.stack(images)  # (N, 3, S, S)
        split = len(images) - config.holdout
        return cls(train=stacked[:split], holdout=stacked[split:], skipped=skipped)

    def mean_face(self, resolution: int) -> torch.Tensor:
        """The mean training image in [-1, 1], (3, R, R): the simplest baseline."""
        return downsample(to_unit_range(self.train), resolution).mean(dim=0)


class Batches:
    """Deterministic per-rank batches as a function of images seen."""

    def __init__(self, images: torch.Tensor, seed: int, flip: bool, rank: int, world_size: int):
        self.images = images
        self.seed = seed
        self.flip = flip
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations = {k: v for k, v in self._permutations.items() if k >= epoch - 1}
            generator = torch.Generator().manual_seed(seed_of(self.seed, "epoch", epoch))
            self._permutations[epoch] = torch.randperm(len(self.images), generator=generator)
        return self._permutations[epoch]

    def global_indices(self, images_seen: int, batch: int) -> torch.Tensor:
        """The global batch's dataset indices: positions images_seen .. +batch of the stream."""
        count = len(self.images)
        positions = torch.arange(images_seen, images_seen + batch)
        epochs = positions // count
        out = torch.empty(batch, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._permutation(epoch)[positions[mask] % count]
        return out

    def local_batch_size(self, batch: int) -> int:
        if batch % self.world_size:
            raise ValueError(f"batch {batch} is not divisible by {self.world_size} workers")
        return batch // self.world_size

    def get(self, images_seen: int, batch: int, resolution: int) -> torch.Tensor:
        """This rank's slice of the global batch, float (b, 3, R, R) in [-1, 1]."""
        local = self.local_batch_size(batch)
        indices = self.global_indices(images_seen, batch)[
            self.rank * local : (self.rank + 1) * local
        ]
        x = downsample(to_unit_range(self.images[indices]), resolution)
        if self.flip:
            generator = torch.Generator().manual_seed(seed_of(self.seed, "flip", images_seen))
            mirror = (
                torch.rand(batch, generator=generator)[self.rank * local : (self.rank + 1) * local]
                < 0.5
            )
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x
