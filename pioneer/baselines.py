"""What every evaluation is compared with: the model, the mean face and a whitened PCA.

All three are `Subject`s: encode images to unit latents, decode unit latents to images. So
each metric runs on each of them the same way, on the same images, in the same run.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from pioneer.progress import ProgressBar
from pioneer.sampling import sample_latents


class Subject(Protocol):
    name: str  # the report's key
    resolution: int
    latent_size: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) in [-1, 1] -> (N, latent_size) unit codes."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_size) -> (N, 3, R, R) in [-1, 1]."""


def batched(
    function, x: torch.Tensor, batch: int, device: torch.device, label: str | None = None
) -> torch.Tensor:
    """function over x in chunks on device, results concatenated on the CPU; with a label,
    a progress bar on stderr."""
    bar = ProgressBar(label, len(x)) if label else None
    out, done = [], 0
    for chunk in x.split(batch):
        out.append(function(chunk.to(device)).float().cpu())
        done += len(chunk)
        if bar:
            bar.show(done, final=done == len(x))
    return torch.cat(out)


def reconstruct(
    subject: Subject, x: torch.Tensor, batch: int, device: torch.device, label: str | None = None
) -> torch.Tensor:
    return batched(lambda c: subject.decode(subject.encode(c)), x, batch, device, label)


def generate(
    subject: Subject,
    n: int,
    seed: int,
    batch: int,
    device: torch.device,
    label: str | None = None,
) -> torch.Tensor:
    """n images decoded from latents uniform on the sphere (the same latents for all subjects)."""
    z = sample_latents(n, subject.latent_size, torch.Generator().manual_seed(seed))
    return batched(subject.decode, z, batch, device, label)


class ModelSubject:
    """A trained model (the EMA decoder, as after training)."""

    name = "model"

    def __init__(self, model):  # a pioneer.api.Pioneer
        self.model = model
        self.resolution = model.resolution
        self.latent_size = model.latent_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


class MeanFace:
    """Every image is the mean training image; every code is the same point."""

    name = "mean_face"

    def __init__(self, train: torch.Tensor, latent_size: int):
        self.mean = train.float().mean(dim=0)  # (3, R, R)
        self.resolution = train.shape[-1]
        self.latent_size = latent_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(len(x), self.latent_size, device=x.device)
        z[:, 0] = 1.0
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean.to(z.device).expand(len(z), -1, -1, -1).clone()


class WhitenedPCA:
    """PCA with latent_size components fitted on training images, codes whitened onto the sphere.

    encode: project, divide by each component's std, normalise to unit length (like the
    encoder's codes). decode: scale a unit code back by sqrt(k) (a whitened code's expected
    length) and each std. So its samples from random unit latents follow the training
    covariance: the "ghosts" a linear model draws.
    """

    def __init__(self, train: torch.Tensor, components: int):
        n, resolution = len(train), train.shape[-1]
        flat = train.double().flatten(1)  # (N, 3 R R)
        self.mean = flat.mean(dim=0)
        k = min(components, n - 1, flat.shape[1])
        centred = flat - self.mean
        if n * flat.shape[1] <= 5e7:
            _, s, v = torch.linalg.svd(centred, full_matrices=False)
            s, v = s[:k], v[:k]
        else:  # large images: a randomised SVD of the top k
            _, s, vt = torch.svd_lowrank(centred, q=k + 10, niter=4)
            s, v = s[:k], vt.T[:k]
        self.components = v.float()  # (k, P)
        self.std = (s / math.sqrt(n - 1)).float().clamp_min(1e-8)  # (k,)
        self.mean = self.mean.float()
        self.k = k
        self.resolution = resolution
        self.latent_size = k
        self.name = f"pca_{components}"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        codes = (x.float().flatten(1) - self.mean.to(x.device)) @ self.components.to(x.device).T
        return F.normalize(codes / self.std.to(x.device), dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        device = z.device
        scaled = F.normalize(z.float(), dim=1) * math.sqrt(self.k) * self.std.to(device)
        flat = self.mean.to(device) + scaled @ self.components.to(device)
        return flat.view(len(z), 3, self.resolution, self.resolution).clamp(-1, 1)
