"""Learning-rate schedules: the rate the trainer hands to the optimizer at each step, and reports.

    schedule = make_schedule(make_config({"lr_schedule": "plateau"}))
    lr = schedule.rate(epoch, step)        # before every optimizer step
    schedule.observe(epoch, valid_ppl)     # after every epoch's validation

`epoch` is 0-based; `step` counts optimizer steps since the run started, from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


class LearningRateSchedule(Protocol):
    """What the trainer asks of a schedule (config.py's `Schedule` is the name of one in a config)."""

    def rate(self, epoch: int, step: int) -> float: ...

    def observe(self, epoch: int, valid_ppl: float) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class _Stateless:
    """A schedule that is a pure function of (epoch, step): nothing to observe or checkpoint."""

    def observe(self, epoch: int, valid_ppl: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Constant(_Stateless):
    learning_rate: float

    def rate(self, epoch: int, step: int) -> float:
        return self.learning_rate


@dataclass
class Zaremba(_Stateless):
    """TF ptb_word_lm: the initial rate for `decay_start` epochs (TF max_epoch), then times
    `lr_decay` per epoch. Epoch i (0-based) uses lr_decay ** max(i + 1 - decay_start, 0)."""

    learning_rate: float
    lr_decay: float
    decay_start: int

    def rate(self, epoch: int, step: int) -> float:
        return self.learning_rate * self.lr_decay ** max(epoch + 1 - self.decay_start, 0)


@dataclass
class Exponential(_Stateless):
    """tf.train.exponential_decay, per optimizer step: times `lr_decay` every `decay_steps` steps,
    smoothly, or in whole steps with `staircase`."""

    learning_rate: float
    lr_decay: float
    decay_steps: int
    staircase: bool = False

    def rate(self, epoch: int, step: int) -> float:
        exponent = step // self.decay_steps if self.staircase else step / self.decay_steps
        return self.learning_rate * self.lr_decay**exponent


@dataclass
class Plateau:
    """Times `lr_decay` once validation perplexity has failed to improve (strictly beat the best so
    far) for more than `patience` epochs in a row; the count then starts again. With patience 0 and
    lr_decay 0.25 this is pytorch/examples word_language_model (divide by 4 when validation does not
    improve). A NaN or inf perplexity never improves."""

    learning_rate: float
    lr_decay: float
    patience: int = 0
    lr: float = field(init=False)  # the current rate
    best: float = field(init=False, default=math.inf)  # the lowest validation perplexity so far
    bad_epochs: int = field(init=False, default=0)  # epochs in a row without improvement since the last decay

    def __post_init__(self):
        self.lr = self.learning_rate

    def rate(self, epoch: int, step: int) -> float:
        return self.lr

    def observe(self, epoch: int, valid_ppl: float) -> None:
        if math.isfinite(valid_ppl) and valid_ppl < self.best:
            self.best, self.bad_epochs = valid_ppl, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.lr *= self.lr_decay
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]


def make_schedule(config) -> LearningRateSchedule:
    """The schedule a TrainConfig names, with its settings."""
    kind = config.lr_schedule
    if kind == "zaremba":
        return Zaremba(config.learning_rate, config.lr_decay, config.decay_start)
    if kind == "exponential":
        return Exponential(config.learning_rate, config.lr_decay, config.decay_steps, config.staircase)
    if kind == "plateau":
        return Plateau(config.learning_rate, config.lr_decay, config.plateau_patience)
    if kind == "constant":
        return Constant(config.learning_rate)
    raise ValueError(f"unknown learning-rate schedule '{kind}'")


@dataclass(frozen=True)
class LateSettings:
    """Settings that leave a run's first `epochs` epochs untouched: two runs that differ only in
    them have the same state (weights, optimizer, schedule, clipper, random generators) and the
    same metrics after those epochs, bit for bit. study.sweep.prefix trains such epochs once."""

    keys: frozenset[str] = frozenset()
    epochs: int = 0


def late_settings(config) -> LateSettings:
    """The settings that `config`'s schedule guarantees not to act before some epoch, as the
    classes above compute the rate:
    - zaremba: lr_decay enters the rate as lr_decay ** max(epoch + 1 - decay_start, 0), a power of
      0 (so 1.0 exactly) in the epochs before decay_start;
    - plateau: lr_decay multiplies the rate only once more than plateau_patience epochs in a row
      have failed to improve, which cannot happen within the first plateau_patience epochs;
    - exponential acts from the first step, constant never reads lr_decay: none."""
    if config.lr_schedule == "zaremba":
        return LateSettings(frozenset({"lr_decay"}), config.decay_start)
    if config.lr_schedule == "plateau":
        return LateSettings(frozenset({"lr_decay"}), config.plateau_patience)
    return LateSettings()
