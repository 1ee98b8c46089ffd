"""The metric registry and `pioneer eval`: every metric on the model and on its baselines.

One decorated function per metric (`@register_metric`), selected by name. Each takes a
Subject (the model, the mean face, a whitened PCA) and the Evaluator (images, options, the
feature networks, cached real-image features) and returns flat named figures. Splits: the
held-out rows of the checkpoint's own run for reconstructions, PSNR, SSIM, LPIPS and the
probe's test set; for FID and MS-SWD, N generated images against N training images, next
to N other training images against the same N (the real-vs-real reference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pioneer import features
from pioneer.baselines import (
    MeanFace,
    ModelSubject,
    Subject,
    WhitenedPCA,
    batched,
    generate,
    reconstruct,
)
from pioneer.data import to_uint8, to_unit_range
from pioneer.precision import PRECISIONS
from pioneer.quality import linear_probe, ms_swd, psnr, ssim, trimmed_mean
from pioneer.sampling import sample_latents, slerp_pairs

Metric = Callable[[Subject, "Evaluator"], dict[str, float]]
METRICS: dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Register a metric under the name `--metrics` selects it by."""

    def register(function: Metric) -> Metric:
        METRICS[name] = function
        return function

    return register


class MetricUnavailable(RuntimeError):
    """A metric cannot run on this data or machine (missing weights, no attributes)."""


@dataclass(frozen=True)
class EvalOptions:
    metrics: tuple[str, ...] = ("psnr", "ssim", "ms_swd", "probe")  # the ones needing no weights
    images: int = 4_000  # N for FID and MS-SWD, capped by the training rows / 2 (paper: 50k)
    ppl_samples: int = 2_000  # latent pairs for PPL (paper: 100k)
    ppl_epsilon: float = 1e-4  # PPL step along the great circle
    probe_images: int = 4_000  # training images the linear probe is fitted on
    probe_weight_decay: float = 1e-3  # L2 on the standardised probe weights
    batch: int = 64  # images per forward pass
    seed: int = 0  # latents, patches and directions
    baselines: bool = True  # also evaluate the mean face and a whitened PCA
    inception_weights: str | None = None  # Inception-v3 file (else env / torch hub cache)
    lpips_weights: str | None = None  # LPIPS backbone file (else env / torch hub cache)
    lpips_net: str = "alex"  # alex | vgg | squeeze
    lpips_size: int = 64  # face crops are resized to at least this for LPIPS / PPL
    device: str = "auto"  # auto: cuda when available
    precision: str = "auto"  # the model's forward passes: auto (bf16 where native) | fp32 | bf16

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}: choose from {', '.join(METRICS)}")
        if min(self.images, self.ppl_samples, self.probe_images, self.batch) < 2:
            raise ValueError("images, ppl_samples, probe_images and batch must be >= 2")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class Evaluator:
    """Images, options and lazily built feature networks shared by all subjects."""

    train: torch.Tensor  # uint8 (N, 3, R, R) training images
    holdout: torch.Tensor  # uint8 (H, 3, R, R) held-out images
    options: EvalOptions = field(default_factory=EvalOptions)
    attribute_names: list[str] = field(default_factory=list)
    train_labels: torch.Tensor | None = None  # int8 (N, A), +1 / -1, 0 unknown
    holdout_labels: torch.Tensor | None = None  # int8 (H, A)
    inception_net: torch.nn.Module | None = None  # injected, or loaded from weights on use
    lpips_net: torch.nn.Module | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choice = self.options.device
        if choice == "auto":
            choice = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(choice)
        self.n = max(1, min(self.options.images, len(self.train) // 2))

    @classmethod
    def from_dataset(
        cls,
        dataset,
        resolution: int,
        options: EvalOptions,
        attributes_file: str | None = None,
        **nets: torch.nn.Module,
    ) -> Evaluator:
        """The training rows the options need (from the first) and the held-out rows."""
        count = min(dataset.train_rows, max(2 * options.images, options.probe_images))
        train_rows = np.arange(count)
        holdout_rows = np.arange(dataset.train_rows, dataset.rows)
        names, labels = dataset.attributes(attributes_file)
        return cls(
            train=dataset.images(train_rows, resolution),
            holdout=dataset.holdout(resolution),
            options=options,
            attribute_names=names,
            train_labels=torch.from_numpy(labels[train_rows]) if names else None,
            holdout_labels=torch.from_numpy(labels[holdout_rows]) if names else None,
            inception_net=nets.get("inception"),
            lpips_net=nets.get("lpips"),
        )

    # Image sets.

    def real(self, which: str) -> torch.Tensor:
        """'a' / 'b': two disjoint sets of n training images in [-1, 1]."""
        start = 0 if which == "a" else self.n
        return to_unit_range(self.train[start : start + self.n])

    def heldout(self) -> torch.Tensor:
        return to_unit_range(self.holdout)

    # Feature networks.

    def inception(self) -> torch.nn.Module:
        if self.inception_net is None:
            self.inception_net = features.inception(self.options.inception_weights)
        return self.inception_net.to(self.device)

    def lpips(self) -> torch.nn.Module:
        if self.lpips_net is None:
            self.lpips_net = features.lpips(self.options.lpips_net, self.options.lpips_weights)
        return self.lpips_net.to(self.device)

    def inception_features(self, images: torch.Tensor, label: str) -> torch.Tensor:
        net = self.inception()
        with torch.inference_mode():
            features = batched(
                lambda chunk: net(to_uint8(chunk))[0],
                images,
                self.options.batch,
                self.device,
                f"eval {label}",
            )
        return features.double()

    def face_crop(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's face-centre crop (128 of 256: the middle half), resized for LPIPS."""
        side = images.shape[-1]
        lo, hi = side // 4, side - side // 4
        crop = images[..., lo:hi, lo:hi]
        size = max(self.options.lpips_size, crop.shape[-1])
        return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)

    def lpips_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS of face-centre crops, (N,)."""
        net = self.lpips()
        out = []
        with torch.inference_mode():
            for a, b in zip(x.split(self.options.batch), y.split(self.options.batch), strict=True):
                d = net(self.face_crop(a).to(self.device), self.face_crop(b).to(self.device))
                out.append(d.flatten().double().cpu())
        return torch.cat(out)

    # The run.

    def run(self, subjects: list[Subject]) -> dict[str, Any]:
        """{subjects: {name: {figure: value}}, reference: {...}, errors: {metric: message}}."""
        self.options.validate()
        report: dict[str, Any] = {"subjects": {s.name: {} for s in subjects}, "errors": {}}
        for metric in self.options.metrics:
            started = time.perf_counter()
            try:
                for subject in subjects:
                    values = METRICS[metric](subject, self)
                    report["subjects"][subject.name].update(values)
            except (MetricUnavailable, features.WeightsMissing) as error:
                report["errors"][metric] = str(error)
            report.setdefault("seconds", {})[metric] = round(time.perf_counter() - started, 2)
        report["reference"] = self._cache.get("reference", {})
        return report


def baselines(train: torch.Tensor, latent_size: int) -> list[Subject]:
    """The mean face and a whitened PCA with latent_size components, fitted on train (uint8)."""
    images = to_unit_range(train)
    return [MeanFace(images, latent_size), WhitenedPCA(images, latent_size)]


# The metrics.


def _reconstructions(subject: Subject, ev: Evaluator) -> tuple[torch.Tensor, torch.Tensor]:
    key = f"recon/{subject.name}"
    if key not in ev._cache:
        x = ev.heldout()
        label = f"eval reconstruct {subject.name}"
        ev._cache[key] = (x, reconstruct(subject, x, ev.options.batch, ev.device, label))
    return ev._cache[key]


def _samples(subject: Subject, ev: Evaluator) -> torch.Tensor:
    key = f"samples/{subject.name}"
    if key not in ev._cache:
        label = f"eval sample {subject.name}"
        ev._cache[key] = generate(
            subject, ev.n, ev.options.seed, ev.options.batch, ev.device, label
        )
    return ev._cache[key]


@register_metric("psnr")
def heldout_psnr(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """Held-out reconstruction PSNR (dB)."""
    x, x_hat = _reconstructions(subject, ev)
    return {"psnr": psnr(x, x_hat)}


@register_metric("ssim")
def heldout_ssim(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """Held-out reconstruction SSIM."""
    x, x_hat = _reconstructions(subject, ev)
    return {"ssim": ssim(x, x_hat)}


@register_metric("lpips")
def heldout_lpips(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """Held-out reconstruction LPIPS on face-centre crops (lower is better)."""
    x, x_hat = _reconstructions(subject, ev)
    return {"lpips": ev.lpips_distance(x, x_hat).mean().item()}


@register_metric("ms_swd")
def sample_ms_swd(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """MS-SWD x 1e3 of n samples against n training images (reference: n other ones)."""
    real_b = ev.real("b")
    reference = ev._cache.setdefault("reference", {})
    if "ms_swd_real" not in reference:
        reference["ms_swd_real"] = ms_swd(ev.real("a"), real_b, seed=ev.options.seed)["mean"]
    values = ms_swd(_samples(subject, ev), real_b, seed=ev.options.seed)
    out = {f"ms_swd_{k}": v for k, v in values.items() if k != "mean"}
    out["ms_swd"] = values["mean"]
    out["ms_swd_vs_real"] = values["mean"] / max(reference["ms_swd_real"], 1e-12)
    return out


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (N, D), as torch-fidelity computes it."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(f.double()) for f in (a, b)]
    return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])


@register_metric("fid")
def sample_fid(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """FID (Inception-v3 pool features) of n samples against n training images."""
    reference = ev._cache.setdefault("reference", {})
    if "inception/b" not in ev._cache:
        ev._cache["inception/b"] = ev.inception_features(ev.real("b"), "fid real")
        real_a = ev.inception_features(ev.real("a"), "fid real")
        reference["fid_real"] = frechet_distance(real_a, ev._cache["inception/b"])
    fake = ev.inception_features(_samples(subject, ev), f"fid {subject.name}")
    return {"fid": frechet_distance(fake, ev._cache["inception/b"])}


@register_metric("ppl")
def path_length(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """Perceptual path length (Karras et al.): LPIPS between decodings at t and t + eps along
    great circles between random latents, over eps^2, 1% / 99% outliers rejected."""
    options = ev.options
    generator = torch.Generator().manual_seed(options.seed + 1)
    z0 = sample_latents(options.ppl_samples, subject.latent_size, generator)
    z1 = sample_latents(options.ppl_samples, subject.latent_size, generator)
    t = torch.rand(options.ppl_samples, generator=generator) * (1 - options.ppl_epsilon)
    a = batched(subject.decode, slerp_pairs(z0, z1, t), options.batch, ev.device, "eval ppl")
    b = batched(
        subject.decode, slerp_pairs(z0, z1, t + options.ppl_epsilon), options.batch, ev.device
    )
    distances = ev.lpips_distance(a, b) / options.ppl_epsilon**2
    return {"ppl": trimmed_mean(distances)}


@register_metric("probe")
def latent_probe(subject: Subject, ev: Evaluator) -> dict[str, float]:
    """Held-out accuracy of a logistic regression on codes, per attribute, vs the majority rate."""
    if ev.train_labels is None or not ev.attribute_names:
        raise MetricUnavailable(
            "probe needs attribute labels: a prepared dataset with attributes, or --attributes FILE"
        )
    count = min(ev.options.probe_images, len(ev.train))
    train_x = to_unit_range(ev.train[:count])
    codes = batched(
        subject.encode, train_x, ev.options.batch, ev.device, f"eval probe {subject.name}"
    )
    held = batched(subject.encode, ev.heldout(), ev.options.batch, ev.device)
    accuracy, majority = linear_probe(
        codes,
        ev.train_labels[:count].float(),
        held,
        ev.holdout_labels.float(),
        weight_decay=ev.options.probe_weight_decay,
    )
    out = {"probe_accuracy": accuracy.mean().item(), "probe_majority": majority.mean().item()}
    for name, acc in zip(ev.attribute_names, accuracy.tolist(), strict=True):
        out[f"probe_{name}"] = acc
    return out


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    attributes: str | None = None,
    options: EvalOptions = EvalOptions(),
    **nets: torch.nn.Module,
) -> dict[str, Any]:
    """Load a checkpoint and its data split, run the chosen metrics on it and the baselines."""
    from pioneer.api import Pioneer
    from pioneer.dataset import open_run_data

    options.validate()
    model = Pioneer.from_checkpoint(checkpoint, precision=options.precision)
    dataset = open_run_data(model.config.data, data, model.resolution)
    ev = Evaluator.from_dataset(dataset, model.resolution, options, attributes, **nets)
    subjects: list[Subject] = [ModelSubject(model)]
    if options.baselines:
        subjects += baselines(ev.train[: dataset.train_rows], model.latent_size)
    report = ev.run(subjects)
    report.update(
        checkpoint=str(checkpoint),
        images_seen=model.images_seen,
        resolution=model.resolution,
        precision=model.precision,
        data=data or model.config.data.path,
        n=ev.n,
        holdout=dataset.holdout_rows,
        metrics=list(options.metrics),
    )
    if not math.isfinite(sum(v for s in report["subjects"].values() for v in s.values())):
        report["warning"] = "some figures are not finite"
    return report
