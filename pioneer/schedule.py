"""The progressive schedule as a pure function of images seen.

Counting images rather than steps (as stylegan3 counts kimg) keeps the schedule the same
whatever the worker count or batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from pioneer.config import Phase


@dataclass(frozen=True)
class Progress:
    phase: int  # index into the schedule
    resolution: int  # pixels per side in this phase
    alpha: float  # fade-in of the newest block: 0 -> 1 over the phase's fade images
    batch: int  # global batch size
    lr: float  # Adam learning rate
    margin: float | None  # Eq. 5 bound on the KL gap; None: plain Eq. 1
    phase_start: int  # images seen when this phase began
    phase_end: int  # images seen when it ends


def total_images(schedule: tuple[Phase, ...]) -> int:
    return sum(phase.images for phase in schedule)


def progress_at(schedule: tuple[Phase, ...], images_seen: int) -> Progress:
    """Where training stands after `images_seen` images; past the end, the last phase."""
    start, margin_before = 0, None
    for index, phase in enumerate(schedule):
        end = start + phase.images
        if images_seen < end or index == len(schedule) - 1:
            into = images_seen - start
            alpha = 1.0 if phase.fade_images == 0 else min(1.0, into / phase.fade_images)
            margin = phase.margin if into >= phase.margin_after_images else margin_before
            return Progress(
                phase=index,
                resolution=phase.resolution,
                alpha=alpha,
                batch=phase.batch,
                lr=phase.lr,
                margin=margin,
                phase_start=start,
                phase_end=end,
            )
        start, margin_before = end, phase.margin
    raise ValueError("empty schedule")
