"""Attribute editing by latent arithmetic (Eq. 6): z' = phi(x) + lambda (mean phi(A) - mean phi(B)).

A is a set of images with the attribute, B one without (the paper used 32-64 of each). The
vectors are saved with the identity (weights hash) of the checkpoint whose encoder made
them, and a file made for another checkpoint is refused.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pioneer import storage

FORMAT = "pioneer-attributes"
VECTORS_FILE = "attributes.pt"  # beside a checkpoint's state.pt: the default for edit()
MAX_STRENGTH = 2.0  # the paper's edits use strengths in [-2, 2]


@dataclass
class AttributeVectors:
    names: list[str]
    vectors: torch.Tensor  # (A, latent_size): mean phi(with) - mean phi(without)
    counts: torch.Tensor  # (A, 2): images used with / without
    checkpoint: str  # identity of the checkpoint that encoded them

    def vector(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise ValueError(f"unknown attribute {name!r}: known are {', '.join(self.names)}")
        return self.vectors[self.names.index(name)]

    def save(self, path: str | Path) -> str:
        """Write to a local path (atomically) or an s3:// URI."""

        payload = {
            "format": FORMAT,
            "checkpoint": self.checkpoint,
            "names": self.names,
            "vectors": self.vectors,
            "counts": self.counts,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        storage.write_bytes(path, buffer.getvalue())
        return str(path)

    @classmethod
    def load(cls, path: str | Path, expected_checkpoint: str | None = None) -> AttributeVectors:
        try:
            payload = torch.load(
                io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True
            )
        except Exception as error:  # torch.load raises many kinds for a bad file
            raise ValueError(f"cannot read attribute vectors {str(path)!r}: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a `pioneer attributes` file")
        if expected_checkpoint is not None and payload["checkpoint"] != expected_checkpoint:
            raise ValueError(
                f"attribute vectors {str(path)!r} were computed with another checkpoint "
                f"({payload['checkpoint'][:12]}, this one is {expected_checkpoint[:12]}): "
                "recompute them with `pioneer attributes`"
            )
        return cls(payload["names"], payload["vectors"], payload["counts"], payload["checkpoint"])


def attribute_vectors(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: Callable[[np.ndarray], torch.Tensor],
    labels: np.ndarray,
    names: list[str],
    per_set: int = 64,
    seed: int = 0,
    batch: int = 64,
) -> tuple[list[str], torch.Tensor, torch.Tensor, list[str]]:
    """(names used, vectors (A, D), counts (A, 2), names skipped) from labelled rows
    (+1 / -1, 0 unknown); an attribute lacking images with or without it is skipped.

    encode: images -> unit codes; images: row ids -> images in [-1, 1]. Each attribute
    takes up to per_set rows of each sign, from one seeded shuffle of the rows; every row
    used is encoded once.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = []
    for column in range(labels.shape[1]):
        values = labels[order, column]
        chosen.append((order[values > 0][:per_set], order[values < 0][:per_set]))
    rows = np.unique(np.concatenate([np.concatenate(pair) for pair in chosen] or [np.zeros(0)]))
    rows = rows.astype(np.int64)
    codes = {}
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        for row, code in zip(part.tolist(), encode(images(part)).float().cpu(), strict=True):
            codes[row] = code
    used, vectors, counts, skipped = [], [], [], []
    for name, (with_rows, without_rows) in zip(names, chosen, strict=True):
        if len(with_rows) == 0 or len(without_rows) == 0:
            skipped.append(name)
            continue
        mean_with = torch.stack([codes[r] for r in with_rows.tolist()]).mean(0)
        mean_without = torch.stack([codes[r] for r in without_rows.tolist()]).mean(0)
        used.append(name)
        vectors.append(mean_with - mean_without)
        counts.append((len(with_rows), len(without_rows)))
    if not used:
        raise ValueError(
            "every attribute needs images with and without it; none has both in these rows"
        )
    return used, torch.stack(vectors), torch.tensor(counts), skipped


def edit_codes(
    z: torch.Tensor,
    attribute: str | torch.Tensor | dict[str, float],
    strength: float,
    vectors: AttributeVectors | None,
    max_strength: float = MAX_STRENGTH,
) -> torch.Tensor:
    """Eq. 6 on codes (N, D): add strength * vector for each attribute asked for; strengths
    beyond +-max_strength are refused (the paper's range by default)."""
    edits = attribute if isinstance(attribute, dict) else {attribute: strength}
    out = z.clone()
    for key, amount in edits.items():
        if not -max_strength <= float(amount) <= max_strength:
            raise ValueError(
                f"strength must be in [-{max_strength:g}, {max_strength:g}], got {amount}"
            )
        if isinstance(key, torch.Tensor):
            direction = key.reshape(-1)
        else:
            if vectors is None:
                raise ValueError("no attribute vectors loaded")
            direction = vectors.vector(key)
        if direction.numel() != z.shape[1]:
            raise ValueError(f"attribute vector has {direction.numel()} values, codes {z.shape[1]}")
        out = out + float(amount) * direction.to(z)
    return out
