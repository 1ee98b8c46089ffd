"""Numeric precision of the networks' forward passes.

bf16 autocast where the hardware has bf16 arithmetic (AVX512-BF16 or AMX on a CPU, bf16 on
a GPU), fp32 elsewhere. Under autocast only the convolutions and matrix products run in
bf16: weights, optimiser state, the EMA, the spectral-norm power iterations (kept out of
autocast in pioneer.model) and the loss statistics (cast up in pioneer.losses) stay fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # without them bf16 is emulated: slower than fp32


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so no bf16
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively (so autocast to bf16 pays)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(CPU_BF16_FLAGS & _cpu_flags())
    return False


def resolve(precision: str, device: torch.device) -> str:
    """fp32 or bf16: "auto" picks bf16 where the device has it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """A reusable context for the forward passes at `precision` (after resolve)."""
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
