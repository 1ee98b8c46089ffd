"""One image transform for `pioneer prepare`, the folder reader and the API: bytes -> RGB squares.

Free of torch so that `pioneer prepare` worker processes start fast. Each resolution is
resized straight from the cropped source (Lanczos), never from another resolution, so a
prepared 32x32 image equals a direct resize of its source file.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# CelebA's usual 140x140 face crop of the 178x218 aligned images, as a fraction of the width.
FACE_CROP_FRACTION = 140 / 178
# Refuse truncated files rather than pad them with grey (Pillow's default already, made sure).
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageSkip(ValueError):
    """An input that cannot become a training image; `reason` is a manifest count key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


def decode(data: bytes, max_pixels: int | None = None) -> tuple[Image.Image, str | None]:
    """Bytes -> (RGB image, the source mode when it had to be converted, else None).

    max_pixels: refuse larger images from their header alone, before any pixel is decoded
    (the HTTP service's guard against decompression bombs; Pillow's own limit is ~179 MP)."""
    if not data:
        raise ImageSkip("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageSkip("too_large", f"{width}x{height} is over {max_pixels:,} pixels")
            image.load()
        image = ImageOps.exif_transpose(image)
    except ImageSkip:
        raise
    except UnidentifiedImageError:
        raise ImageSkip("not_image", "not a readable image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = "too_large" if max_pixels is not None else "corrupt"
        raise ImageSkip(reason, f"too many pixels: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageSkip("corrupt", str(error) or type(error).__name__) from None
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: Pillow's convert() would clip at 255; rescale the full range instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB"), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colour; flatten onto white as a viewer shows them.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), mode
    return image.convert("RGB"), mode


def resize(image: Image.Image, crop: str, size: int) -> np.ndarray:
    """Crop then resize to uint8 (size, size, 3)."""
    square = image.crop(crop_box(*image.size, crop))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


class Transformed(NamedTuple):
    images: dict[int, np.ndarray]  # resolution -> uint8 (R, R, 3)
    converted: str | None  # the source's mode when it was not RGB
    upscaled: bool  # the crop was smaller than the largest resolution


def transform(
    data: bytes,
    crop: str,
    resolutions: tuple[int, ...],
    upscale: bool = False,
    max_aspect: float = 3.0,
) -> Transformed:
    """Source bytes -> a square per resolution. Raises ImageSkip for unusable inputs."""
    image, converted = decode(data)
    width, height = image.size
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > max_aspect:
        raise ImageSkip("aspect_ratio", f"{width}x{height} is wider than {max_aspect}:1")
    left, top, right, bottom = crop_box(width, height, crop)
    side = min(right - left, bottom - top)
    small = side < max(resolutions)
    if small and not upscale:
        raise ImageSkip("too_small", f"{width}x{height} crops to {side} px < {max(resolutions)} px")
    return Transformed({size: resize(image, crop, size) for size in resolutions}, converted, small)
