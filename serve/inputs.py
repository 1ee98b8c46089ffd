"""Request checking for the HTTP service, free of Ray and FastAPI: every bad input becomes
a RequestError with the HTTP status it deserves and a message saying what to send."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import torch
import torch.nn.functional as F

from pioneer.images import grid_image
from pioneer.transform import ImageSkip, decode, resize


class RequestError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra  # more JSON fields for the answer (e.g. the known attributes)


# An upload that cannot become an image, by ImageSkip reason.
_IMAGE_STATUS = {"empty": 400, "not_image": 415, "corrupt": 400, "too_large": 413}


def image_tensor(data: bytes, field: str, crop: str, resolution: int, max_pixels: int):
    """Uploaded bytes -> uint8 (3, R, R), cropped and resized as the training data was."""
    try:
        image, _ = decode(data, max_pixels=max_pixels)
    except ImageSkip as error:
        raise RequestError(
            _IMAGE_STATUS.get(error.reason, 400), f"{field}: {error.reason}: {error.detail}"
        ) from None
    pixels = resize(image, crop, resolution)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def latents(value: Any, latent_size: int, low: int, high: int, field: str = "latents"):
    """A JSON list of `low`..`high` latents of latent_size finite numbers -> (N, D) unit rows."""
    if not isinstance(value, list) or not low <= len(value) <= high:
        count = len(value) if isinstance(value, list) else type(value).__name__
        raise RequestError(422, f"{field} must be a list of {low} to {high} latents, got {count}")
    rows = [vector(row, latent_size, f"{field}[{i}]") for i, row in enumerate(value)]
    z = torch.stack(rows)
    if (z.norm(dim=1) < 1e-8).any():
        raise RequestError(422, f"{field}: a zero latent has no direction on the sphere")
    return F.normalize(z, dim=1)


def vector(value: Any, size: int, field: str) -> torch.Tensor:
    if not isinstance(value, list) or len(value) != size:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise RequestError(422, f"{field} must be a list of {size} numbers, got {got}")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise RequestError(422, f"{field} must hold numbers only")
    if not all(math.isfinite(x) for x in value):
        raise RequestError(422, f"{field} holds NaN or infinite values")
    return torch.tensor(value, dtype=torch.float32)


def json_field(text: str | None, field: str) -> Any:
    """A form field holding JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise RequestError(422, f"{field} must be JSON: {error}") from None


def strengths(value: Any, known: list[str], max_strength: float) -> dict[str, float]:
    """{"Smiling": 1.5, ...}: names among `known`, finite strengths within +-max_strength."""
    if not isinstance(value, dict) or not value:
        raise RequestError(422, 'attributes must be a JSON object such as {"Smiling": 1.5}')
    unknown = sorted(name for name in value if name not in known)
    if unknown:
        raise RequestError(404, f"unknown attribute(s) {unknown}", known=known)
    out = {}
    for name, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise RequestError(422, f"strength of {name} must be a number, got {amount!r}")
        if not math.isfinite(amount) or abs(amount) > max_strength:
            raise RequestError(
                422, f"strength of {name} must be in [-{max_strength:g}, {max_strength:g}]"
            )
        out[name] = float(amount)
    return out


def integer(value: Any, field: str, low: int, high: int) -> int:
    """A form field or JSON value that must be an integer in [low, high]."""
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise RequestError(422, f"{field} must be an integer in [{low}, {high}], got {value!r}")
    return number


def png(images: torch.Tensor, nrow: int) -> bytes:
    """(N, 3, R, R) uint8 or [-1, 1] -> one PNG grid (tiles at least 64 px)."""
    if images.dtype == torch.uint8:
        images = images.float().div(127.5).sub(1.0)
    buffer = io.BytesIO()
    grid_image(images, nrow=nrow).save(buffer, format="PNG")
    return buffer.getvalue()


def png_each(images: torch.Tensor) -> list[bytes]:
    return [png(image.unsqueeze(0), 1) for image in images]
