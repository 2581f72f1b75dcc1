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
