import math

import pytest

from study.config import make_config
from study.train.schedules import make_schedule


def rates_after(schedule, valid_ppls: list[float]) -> list[float]:
    """The rate of each epoch, observing each epoch's validation perplexity at its end."""
    rates = []
    for epoch, ppl in enumerate(valid_ppls):
        rates.append(schedule.rate(epoch, step=0))
        schedule.observe(epoch, ppl)
    return rates


def test_zaremba_small_keeps_the_rate_for_decay_start_epochs_then_halves():
    # TF ptb_word_lm: epoch i uses lr_decay ** max(i + 1 - max_epoch, 0) with max_epoch = 4.
    schedule = make_schedule(make_config(preset="small"))
    assert [schedule.rate(epoch, step=1000 * epoch) for epoch in range(6)] == [1, 1, 1, 1, 0.5, 0.25]


def test_zaremba_medium_decays_by_0_8_from_epoch_6():
    schedule = make_schedule(make_config(preset="medium"))
    assert schedule.rate(5, 0) == 1.0
    assert schedule.rate(6, 0) == pytest.approx(0.8)
    assert schedule.rate(7, 0) == pytest.approx(0.64)


def test_exponential_decays_per_step():
    config = make_config({"lr_schedule": "exponential", "lr_decay": 0.5, "decay_steps": 10})
    schedule = make_schedule(config)
    rates = [schedule.rate(epoch=0, step=step) for step in (0, 5, 10, 15, 20)]
    assert rates == pytest.approx([1.0, 0.5**0.5, 0.5, 0.5**1.5, 0.25])
    assert schedule.rate(epoch=7, step=10) == 0.5  # the epoch plays no part


def test_exponential_staircase_decays_in_whole_steps():
    config = make_config({"lr_schedule": "exponential", "lr_decay": 0.5, "decay_steps": 10, "staircase": True})
    schedule = make_schedule(config)
    assert [schedule.rate(0, step) for step in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_plateau_with_patience_0_decays_after_every_epoch_without_improvement():
    schedule = make_schedule(make_config({"lr_schedule": "plateau", "lr_decay": 0.25, "plateau_patience": 0}))
    # 95 is worse than 90; 85 equal to the best is no improvement; NaN never improves.
    rates = rates_after(schedule, [100, 90, 95, 85, 85, math.nan, 80])
    assert rates == [1, 1, 1, 0.25, 0.25, 0.0625, 0.015625]
    assert schedule.rate(7, 0) == 0.015625  # 80 improved


def test_plateau_with_patience_1_waits_for_two_bad_epochs_in_a_row():
    schedule = make_schedule(make_config({"lr_schedule": "plateau", "lr_decay": 0.5, "plateau_patience": 1}))
    rates = rates_after(schedule, [100, 101, 102, 103, 99, 100, math.nan, math.inf])
    # bad epochs: 101 (1), 102 (2 -> decay, count restarts), 103 (1), 99 improves, 100 (1), NaN (2 -> decay), inf (1)
    assert rates == [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert schedule.rate(8, 0) == 0.25


def test_plateau_restored_from_its_state_continues_identically():
    config = make_config({"lr_schedule": "plateau", "lr_decay": 0.5, "plateau_patience": 1})
    original = make_schedule(config)
    rates_after(original, [100, 90, 95])  # stops with best 90 and one bad epoch counted
    restored = make_schedule(config)
    restored.load_state_dict(original.state_dict())
    rest = [96, 80, 81, 82, 83]
    assert rates_after(restored, rest) == rates_after(original, rest) == [1, 0.5, 0.5, 0.5, 0.25]


def test_constant_never_changes():
    schedule = make_schedule(make_config({"lr_schedule": "constant", "learning_rate": 0.3}))
    assert rates_after(schedule, [100, 200, math.nan]) == [0.3, 0.3, 0.3]
    assert schedule.rate(100, 10**6) == 0.3


@pytest.mark.parametrize("kind", ["zaremba", "exponential", "constant"])
def test_stateless_schedules_round_trip_an_empty_state(kind):
    schedule = make_schedule(make_config({"lr_schedule": kind}))
    schedule.load_state_dict(schedule.state_dict())
    assert schedule.state_dict() == {}
