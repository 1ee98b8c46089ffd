import pytest

from pioneer.config import Phase, preset
from pioneer.schedule import progress_at, total_images

SCHEDULE = (
    Phase(4, 0, 100, 16, 0.001),
    Phase(8, 50, 150, 16, 0.002),
    Phase(16, 40, 60, 8, 0.003, margin=0.2),
)


def test_total_images_is_the_sum_of_phases():
    assert total_images(SCHEDULE) == 400


@pytest.mark.parametrize(
    "seen, phase, alpha, batch, lr, margin",
    [
        (0, 0, 1.0, 16, 0.001, None),
        (99, 0, 1.0, 16, 0.001, None),
        (100, 1, 0.0, 16, 0.002, None),  # a phase starts at alpha 0
        (125, 1, 0.5, 16, 0.002, None),  # half-way through the fade
        (150, 1, 1.0, 16, 0.002, None),  # fade done
        (299, 1, 1.0, 16, 0.002, None),
        (300, 2, 0.0, 8, 0.003, 0.2),  # the margin switches on with its phase
        (320, 2, 0.5, 8, 0.003, 0.2),
        (399, 2, 1.0, 8, 0.003, 0.2),
        (10_000, 2, 1.0, 8, 0.003, 0.2),  # past the end: the last phase
    ],
)
def test_progress_at_phase_boundaries(seen, phase, alpha, batch, lr, margin):
    now = progress_at(SCHEDULE, seen)
    assert (now.phase, now.batch, now.lr, now.margin) == (phase, batch, lr, margin)
    assert now.alpha == pytest.approx(alpha)
    assert now.resolution == 4 * 2**phase


def test_a_margin_can_switch_on_or_rise_inside_its_phase():
    late = (
        Phase(4, 0, 100, 16, 0.001),
        Phase(8, 50, 150, 16, 0.002, margin=0.2, margin_after_images=60),
        Phase(16, 40, 60, 8, 0.003, margin=0.4, margin_after_images=20),
    )
    margins = {seen: progress_at(late, seen).margin for seen in (159, 160, 300, 319, 320, 399)}
    assert margins == {159: None, 160: 0.2, 300: 0.2, 319: 0.2, 320: 0.4, 399: 0.4}


def test_paper_preset_switches_margin_on_after_64px_and_raises_it_at_256():
    schedule = preset("celebahq256").schedule
    assert [p.resolution for p in schedule] == [4, 8, 16, 32, 64, 128, 256]
    assert all(p.margin is None for p in schedule[:5])
    assert schedule[5].margin == 0.2 and schedule[6].margin == 0.4 and schedule[6].lr == 0.002
    assert all(p.images == 2_400_000 for p in schedule[:4])
    assert schedule[6].batch == 16
