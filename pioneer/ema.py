"""Exponential moving average of the decoder's weights, the decoder used after training.

The average is defined by a half-life in images seen with a ramp-up (as stylegan3's
ema_kimg / ema_rampup), not a fixed per-step decay: a fixed 0.999 per step lags far behind
a fast-moving decoder in a short CPU run, and is too short for a long GPU run.
"""

from __future__ import annotations

import torch

from pioneer.model import Decoder, power_iterate


def ema_beta(images_seen: int, batch: int, halflife_images: float, rampup: float) -> float:
    """Per-step decay so that the average's half-life is `halflife_images` images.

    With rampup > 0 the half-life is at most rampup * images_seen, so early weights (from
    random init) are forgotten quickly.
    """
    halflife = halflife_images
    if rampup > 0:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


@torch.no_grad()
def update_ema(decoder_ema: Decoder, decoder: Decoder, beta: float) -> None:
    """Average the weights, then one power iteration on the averaged weights themselves."""
    live = dict(decoder.named_parameters())
    for name, param in decoder_ema.named_parameters():
        param.lerp_(live[name], 1.0 - beta)
    power_iterate(decoder_ema, iterations=1)


@torch.no_grad()
def copy_block(decoder_ema: Decoder, decoder: Decoder, phase: int) -> None:
    """A newly grown block's EMA starts from its live weights (and their u/v)."""
    decoder_ema.blocks[phase].load_state_dict(decoder.blocks[phase].state_dict())
    decoder_ema.to_rgb[phase].load_state_dict(decoder.to_rgb[phase].state_dict())
