"""Every schedule of the loop reads Progress: a fraction of the way, in any unit."""

import pytest

from selfsup.config import ScheduleConfig
from selfsup.train.schedule import LRSchedule, Progress


def test_progress_fraction_is_clamped_to_one():
    assert Progress(3, 12).fraction == 0.25
    assert Progress(20, 12).fraction == 1.0
    assert Progress(0, 0).fraction == 1.0


@pytest.mark.parametrize("unit", [1, 0.5])
def test_lr_schedule_is_a_function_of_progress_in_any_unit(unit):
    """Seconds instead of steps (a time budget) give the same curve at the same fractions."""
    cfg = ScheduleConfig(name="cosine", final_lr_fraction=0.1)
    steps = LRSchedule(cfg, peak=2.0, warmup=10)
    scaled = LRSchedule(cfg, peak=2.0, warmup=10 * unit)
    for done in range(0, 100, 7):
        expected = steps.multiplier(Progress(done, 100))
        assert scaled.multiplier(Progress(done * unit, 100 * unit, step=unit)) == pytest.approx(
            expected
        )
    assert steps.multiplier(Progress(0, 100)) == pytest.approx(0.1)  # first step: 1/warmup
    assert steps.multiplier(Progress(100, 100)) == pytest.approx(0.1)  # the floor at the end


def test_linear_decay_falls_in_a_straight_line_from_the_peak_to_the_floor():
    """After the warm-up the linear schedule loses the same lr per unit and ends at the floor;
    cosine, at the same points, stays above the line in its first half and below it after."""
    linear = LRSchedule(ScheduleConfig(name="linear", final_lr_fraction=0.2), peak=1.0, warmup=10)
    cosine = LRSchedule(ScheduleConfig(name="cosine", final_lr_fraction=0.2), peak=1.0, warmup=10)
    points = [linear.multiplier(Progress(done, 110)) for done in range(10, 111, 10)]
    assert points[0] == pytest.approx(1.0)
    assert points[-1] == pytest.approx(0.2)
    drops = [a - b for a, b in zip(points, points[1:], strict=False)]
    assert drops == pytest.approx([0.08] * 10)
    assert cosine.multiplier(Progress(35, 110)) > linear.multiplier(Progress(35, 110))
    assert cosine.multiplier(Progress(85, 110)) < linear.multiplier(Progress(85, 110))
    assert linear.multiplier(Progress(0, 110)) == pytest.approx(0.1)  # the warm-up is shared
