"""Pretrained feature networks for FID (Inception-v3) and LPIPS / PPL (AlexNet, VGG16, SqueezeNet).

Nothing is downloaded here. Weights are looked up, in order: the path given (a CLI flag or
EvalOptions field), an environment variable, then torch hub's cache
(`$TORCH_HOME/hub/checkpoints/`, where `torch.hub` and torchvision put the same files when
they can download). When none exists the metric fails with `WeightsMissing`, saying which
file to fetch and where to put it; random weights are never substituted silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class WeightsMissing(RuntimeError):
    """A metric's pretrained network is not on this machine."""


@dataclass(frozen=True)
class WeightsFile:
    what: str  # which network, for messages
    filename: str  # the file name torch hub caches it under
    url: str  # where to download it on a machine with internet
    env: str  # environment variable with a path to it
    flag: str  # the CLI flag with a path to it


INCEPTION = WeightsFile(
    "Inception-v3 (FID, torch-fidelity's port of the TF FID graph)",
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    "PIONEER_INCEPTION_WEIGHTS",
    "--inception-weights",
)
LPIPS_BACKBONES = {
    "alex": WeightsFile(
        "AlexNet (LPIPS, PPL)",
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "PIONEER_LPIPS_WEIGHTS",
        "--lpips-weights",
    ),
    "vgg": WeightsFile(
        "VGG16 (LPIPS, PPL)",
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "PIONEER_LPIPS_WEIGHTS",
        "--lpips-weights",
    ),
    "squeeze": WeightsFile(
        "SqueezeNet 1.1 (LPIPS, PPL)",
        "squeezenet1_1-b8a52dc0.pth",
        "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        "PIONEER_LPIPS_WEIGHTS",
        "--lpips-weights",
    ),
}


def find_weights(spec: WeightsFile, explicit: str | None = None) -> Path:
    """The weights file for spec, or WeightsMissing naming every place that was tried."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / spec.filename
    tried = []
    for source, value in (
        (spec.flag, explicit),
        (f"${spec.env}", os.environ.get(spec.env)),
        ("torch hub cache", str(cache)),
    ):
        if not value:
            continue
        if Path(value).is_file():
            return Path(value)
        tried.append(f"{source}: {value}")
    raise WeightsMissing(
        f"{spec.what} needs pretrained weights {spec.filename}, not found "
        f"({'; '.join(tried)}). Download {spec.url} where there is internet and put it in "
        f"{cache.parent}/, or pass {spec.flag} PATH, or set {spec.env}=PATH."
    )


def inception(weights: str | None = None) -> nn.Module:
    """torch-fidelity's Inception-v3: uint8 (N, 3, H, W) -> (N, 2048) pool features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = find_weights(INCEPTION, weights)
    try:
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        )
    except Exception as error:  # torch.load and load_state_dict raise many kinds
        raise WeightsMissing(f"{path} is not a usable {INCEPTION.what} file: {error}") from None


def lpips(net: str = "alex", weights: str | None = None) -> nn.Module:
    """The lpips package's LPIPS with its shipped linear heads and a backbone from a file."""
    import lpips as lpips_package
    import torchvision

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_BACKBONES)}, got {net!r}")
    path = find_weights(LPIPS_BACKBONES[net], weights)
    factory = {
        "alex": torchvision.models.alexnet,
        "vgg": torchvision.models.vgg16,
        "squeeze": torchvision.models.squeezenet1_1,
    }[net]
    backbone = factory()
    try:
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # torch.load and load_state_dict raise many kinds
        raise WeightsMissing(f"{path} is not a usable {net} backbone file: {error}") from None
    model = lpips_package.LPIPS(net=net, pnet_rand=True, verbose=False)  # no download
    load_backbone(model, backbone.features)
    return model.eval().requires_grad_(False)


def load_backbone(model: nn.Module, features: nn.Sequential) -> None:
    """Copy torchvision `features[i]` into the lpips net's slices (children named by i)."""
    for name, module in model.net.named_children():
        if not name.startswith("slice"):
            continue
        for index, layer in module.named_children():
            layer.load_state_dict(features[int(index)].state_dict())
