"""Encoder phi and decoder theta: symmetric conv nets grown 4x4 -> 8x8 -> ... (paper Sec. 3).

Layout follows the paper's official code. Decoder: z as (latent, 1, 1) -> 4x4 conv with
padding 3 -> 3x3 conv; each later block upsamples x2 (nearest) then runs two 3x3 convs. The
encoder mirrors it with 2x average pooling and ends in a 3x3 conv and a 4x4 valid conv to
(latent, 1, 1). A 1x1 to_rgb / from_rgb per resolution carries the fade-in.

Balanced mode puts spectral norm on every block conv of both nets (Sec. 3.2); the 1x1
to_rgb / from_rgb convs stay plain as in the official code, unless
`model.rgb_spectral_norm` (measured here: with it, training collapsed at 8x8). Baseline
PIONEER keeps spectral norm in the encoder but uses equalized learning rate and pixel norm
in the decoder, so the two can be compared.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from pioneer.config import ModelConfig


class EqualizedLR(nn.Module):
    """Weight parametrization of PGGAN: N(0, 1) weights scaled by He's constant at run time."""

    def __init__(self, fan_in: int, gain: float = math.sqrt(2.0)):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit RMS (PGGAN), baseline decoder only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization, always computed in fp32: under a GPU's bf16
    autocast its matrix-vector products would otherwise run in bf16 (8 mantissa bits),
    and sigma, hence every layer's gain, would carry that error."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float())


def make_conv(in_ch: int, out_ch: int, kernel: int, padding: int, norm: str) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding)
    if norm == "spectral":  # as torch.nn.utils.parametrizations.spectral_norm, dim 0
        parametrize.register_parametrization(conv, "weight", SpectralNorm(conv.weight))
    elif norm == "plain":
        nn.init.kaiming_normal_(conv.weight)
        nn.init.zeros_(conv.bias)
    elif norm == "equalized":
        nn.init.normal_(conv.weight)
        nn.init.zeros_(conv.bias)
        parametrize.register_parametrization(conv, "weight", EqualizedLR(in_ch * kernel**2))
    else:
        raise ValueError(f"unknown weight normalisation {norm!r}")
    return conv


class ConvLayer(nn.Sequential):
    """conv -> LeakyReLU(0.2) [-> pixel norm]."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int, norm: str, pixel_norm):
        layers = [make_conv(in_ch, out_ch, kernel, padding, norm), nn.LeakyReLU(0.2)]
        if pixel_norm:
            layers.append(PixelNorm())
        super().__init__(*layers)


def resolution_of(phase: int) -> int:
    return 4 * 2**phase


class Decoder(nn.Module):
    """theta: unit latent (N, latent) -> image (N, 3, R, R) in about [-1, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        baseline = config.mode == "baseline"
        norm = "equalized" if baseline else "spectral"
        rgb_norm = norm if baseline or config.rgb_spectral_norm else "plain"
        widths = config.channels
        self.latent_size = config.latent_size
        self.blocks = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for index, width in enumerate(widths):
            if index == 0:
                first = ConvLayer(config.latent_size, width, 4, 3, norm, baseline)  # 1x1 -> 4x4
            else:
                first = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    ConvLayer(widths[index - 1], width, 3, 1, norm, baseline),
                )
            self.blocks.append(nn.Sequential(first, ConvLayer(width, width, 3, 1, norm, baseline)))
            self.to_rgb.append(make_conv(width, 3, 1, 0, rgb_norm))

    @property
    def phases(self) -> int:
        return len(self.blocks)

    def forward(self, z: torch.Tensor, phase: int, alpha: float = 1.0) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise ValueError(
                f"decoder expects (N, {self.latent_size}) latents, got {tuple(z.shape)}"
            )
        if not 0 <= phase < self.phases:
            raise ValueError(f"phase {phase} outside 0..{self.phases - 1}")
        # A unit z has coordinates ~1/sqrt(D); spectral norm caps each layer's gain near 1, so
        # such a signal would drown under the biases. Unit-RMS coordinates, as PGGAN's
        # normalised latent has, keep it alive (measured: without this nothing is learned).
        h = z[:, :, None, None] * math.sqrt(self.latent_size)  # (N, latent, 1, 1)
        previous = h
        for block in self.blocks[: phase + 1]:
            previous = h
            h = block(h)
        image = self.to_rgb[phase](h)
        if phase > 0 and alpha < 1.0:
            # Fade-in: blend with the upsampled output of the previous resolution.
            skip = F.interpolate(self.to_rgb[phase - 1](previous), scale_factor=2, mode="nearest")
            image = alpha * image + (1.0 - alpha) * skip
        return image


class Encoder(nn.Module):
    """phi: image (N, 3, R, R) -> unit-norm codes (N, latent), always in fp32."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = config.channels
        rgb_norm = "spectral" if config.rgb_spectral_norm else "plain"
        self.latent_size = config.latent_size
        self.blocks = nn.ModuleList()
        self.from_rgb = nn.ModuleList()
        for index, width in enumerate(widths):
            if index == 0:
                block = nn.Sequential(
                    ConvLayer(width, width, 3, 1, "spectral", False),
                    make_conv(width, config.latent_size, 4, 0, "spectral"),  # 4x4 -> 1x1
                )
            else:
                block = nn.Sequential(
                    ConvLayer(width, width, 3, 1, "spectral", False),
                    ConvLayer(width, widths[index - 1], 3, 1, "spectral", False),
                    nn.AvgPool2d(2),
                )
            self.blocks.append(block)
            self.from_rgb.append(ConvLayer(3, width, 1, 0, rgb_norm, False))

    @property
    def phases(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, phase: int, alpha: float = 1.0) -> torch.Tensor:
        if not 0 <= phase < self.phases:
            raise ValueError(f"phase {phase} outside 0..{self.phases - 1}")
        side = resolution_of(phase)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != side or x.shape[3] != side:
            raise ValueError(f"phase {phase} expects (N, 3, {side}, {side}), got {tuple(x.shape)}")
        h = self.blocks[phase](self.from_rgb[phase](x))
        if phase > 0 and alpha < 1.0:
            # Fade-in: blend with the previous resolution's input path on the pooled image.
            skip = self.from_rgb[phase - 1](F.avg_pool2d(x, 2))
            h = alpha * h + (1.0 - alpha) * skip
        for block in reversed(self.blocks[:phase]):
            h = block(h)
        codes = h.flatten(1).float()  # (N, latent); fp32 for the KL statistics
        return F.normalize(codes, dim=1)


def build_networks(config: ModelConfig) -> tuple[Encoder, Decoder]:
    return Encoder(config), Decoder(config)


@torch.no_grad()
def freeze_for_inference(module: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Fold every weight parametrization (spectral norm's W / sigma, EqLR's scale) into a
    plain weight, in place, and keep conv and linear weights in `dtype`. A parametrized
    forward recomputes W / sigma and, under bf16 autocast, casts it again on every call:
    ~18 bytes of memory traffic per weight, which at batch 1 on a CPU took ~40% of a
    full-width forward. The outputs are unchanged (the same W / sigma, rounded once).
    Only for inference: the parametrizations, and spectral norm's u and v, are gone."""
    was_training = module.training
    module.eval()  # spectral norm: no power iteration while its value is taken
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d | nn.Linear):
            sub.to(dtype)
    return module.train(was_training)


def spectral_norm_modules(module: nn.Module) -> list[nn.Module]:
    """The spectral-norm parametrizations inside `module`."""
    found = []
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            if any(isinstance(p, _SpectralNorm) for p in sub.parametrizations.weight):
                found.append(sub)
    return found


@torch.no_grad()
def power_iterate(module: nn.Module, iterations: int = 1) -> None:
    """Advance every spectral-norm u/v of `module` on its *own* weights.

    The EMA decoder needs this: its averaged weights have their own spectral norms, which
    differ from the live decoder's by 10-25% per layer, so copied u/v would be wrong.
    """
    for sub in spectral_norm_modules(module):
        norm = sub.parametrizations.weight[0]
        was_training = norm.training
        norm.train()
        for _ in range(iterations):
            norm(sub.parametrizations.weight.original)  # runs one power iteration in place
        norm.train(was_training)
