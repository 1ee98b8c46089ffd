"""The service's options: one dataclass, filled from `serve/config.yaml`'s application
args or from `python -m serve` flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from pioneer.config import BUNDLED_CELEBA
from pioneer.precision import PRECISIONS


class OptionsError(ValueError):
    """Application args that cannot start the service."""


@dataclass(frozen=True)
class ServeOptions:
    checkpoint: str  # checkpoint dir or run dir (its latest checkpoint), local or s3://
    vectors: str | None = None  # attributes.pt from `pioneer attributes` (default: beside it)
    device: str = "auto"  # cpu, cuda or auto (cuda when the replica has a GPU)
    precision: str = "auto"  # auto (bf16 where the device has it natively), fp32 or bf16
    threads: int = 0  # torch threads per model replica (0: its num_cpus)
    examples: str = str(BUNDLED_CELEBA / "images")  # faces the web page offers to pick
    example_count: int = 12  # how many of them (the last ones, sorted by name)
    # Limits: past them a request gets a 4xx, never a 5xx.
    max_n: int = 64  # images per /v1/sample, latents per /v1/decode, images per /v1/encode
    max_steps: int = 16  # interpolation steps between consecutive faces
    max_upload_bytes: int = 8 << 20  # request bodies larger than this get 413
    max_pixels: int = 40_000_000  # uploaded images with more pixels get 413 (header only)
    max_strength: float = 5.0  # |strength| of an edit, per attribute
    # Dynamic batching (serve.batch) in the encoder and decoder replicas.
    max_batch_size: int = 32  # images in one forward pass
    # How long a batch waits for more requests after its first. 0: take what is queued; under
    # load, requests queue during the previous forward pass and form the next batch.
    batch_wait_s: float = 0.0
    request_timeout_s: float = 60.0  # a model call that takes longer answers 503

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise OptionsError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        if "checkpoint" not in args:
            raise OptionsError("the `checkpoint` option is required (a checkpoint or run dir)")
        options = cls(**args)
        options.validate()
        return options

    def validate(self) -> None:
        for name in ("max_n", "max_steps", "max_upload_bytes", "max_pixels", "max_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OptionsError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_steps < 2:
            raise OptionsError("max_steps must be >= 2")
        if self.device not in ("auto", "cpu", "cuda"):
            raise OptionsError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OptionsError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_strength <= 0 or self.batch_wait_s < 0 or self.request_timeout_s <= 0:
            raise OptionsError("max_strength and request_timeout_s must be > 0, batch_wait_s >= 0")

    def to_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
