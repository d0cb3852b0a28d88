"""A study's search space, validated: the trials it makes, as a Ray Tune param space and ASHA.

    space = load_space("grad_clip")        # study/sweep/space_file.py reads and checks the YAML
    tune.Tuner(trainable, param_space=space.param_space(),
               tune_config=tune.TuneConfig(scheduler=space.asha(13), num_samples=space.num_samples))

Trials = (product of the grid and cases lengths) x seeds x num_samples (sampled domains add none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from study import metrics
from study.config import TrainConfig, flatten_cases, make_config
from study.errors import UsageError
from study.train import Corpus, num_batches

GRIDS = ("grid", "cases")  # domains that multiply the trial count
SAMPLED = ("choice", "uniform", "loguniform", "randint")  # domains drawn once per trial
DECAY_KEYS = ("lr_decay", "decay_start", "lr_schedule")

_RAY_DOMAINS = {
    "grid": tune.grid_search,
    "choice": tune.choice,
    "uniform": lambda bounds: tune.uniform(*bounds),
    "loguniform": lambda bounds: tune.loguniform(*bounds),
    "randint": lambda bounds: tune.randint(*bounds),
}


@dataclass(frozen=True)
class AshaSettings:
    grace_period: int
    reduction_factor: float
    brackets: int


@dataclass(frozen=True)
class Space:
    """One validated study. `vary` holds each domain's values as TrainConfig reads them (1 -> 1.0)."""

    name: str  # the file's stem
    path: Path
    text: str  # the file as written, for provenance
    description: str
    preset: str
    fixed: dict[str, Any]  # with load_space's epochs override, if any
    vary: dict[str, dict[str, Any]]  # {key: {kind: values}}
    seeds: tuple[int, ...] | None
    num_samples: int
    scheduler: AshaSettings
    cpus_per_trial: float
    gpus_per_trial: float

    def base_config(self, epochs: int | None = None) -> TrainConfig:
        """The preset with `fixed` applied: what every trial shares before its varied settings."""
        overrides = self.fixed if epochs is None else {**self.fixed, "epochs": epochs}
        return make_config(overrides, self.preset, where=f"{self.path}: fixed")

    def param_space(self, epochs: int | None = None) -> dict[str, Any]:
        """Ray Tune's param_space: every run setting, plain where fixed, a Ray domain where varied.
        A cases group is a grid_search over complete dicts under its label; `trial_config` flattens it."""
        base = self.base_config(epochs).model_dump()
        space = dict(base)
        for key, (kind, values) in self._domains():
            if kind == "cases":
                cases = complete_cases(values, base)
                for name in cases[0]:
                    del space[name]  # the case says it; a plain value beside it would mislead
                space[key] = tune.grid_search(cases)
            else:
                space[key] = _RAY_DOMAINS[kind](list(values))
        if self.seeds:
            space["seed"] = tune.grid_search(list(self.seeds)) if len(self.seeds) > 1 else self.seeds[0]
        return space

    @property
    def draws(self) -> bool:
        """Whether a trial draws any value (a sampled domain): only then do num_samples repeats differ."""
        return any(kind in SAMPLED for _, (kind, _) in self._domains())

    def varied_keys(self) -> list[str]:
        """Run settings that take more than one value across the trials, in the file's order."""
        base = self.base_config().model_dump()
        keys: list[str] = []
        for key, (kind, values) in self._domains():
            if kind == "cases":
                cases = complete_cases(values, base)
                keys += [name for name in cases[0] if len({case[name] for case in cases}) > 1]
            elif kind not in ("grid", "choice") or len(values) > 1:
                keys.append(key)
        if self.seeds and len(self.seeds) > 1:
            keys.append("seed")
        return keys

    def trial_count(self, num_samples: int | None = None, seeds: Sequence[int] | None = None) -> int:
        """Trials Ray will run: grid and cases sizes x seeds x num_samples (sampled domains add none)."""
        grid = math.prod(
            len(values)
            for key, (kind, values) in self._domains()
            if kind in GRIDS and not (seeds is not None and key == "seed")
        )
        seed_count = len(seeds) if seeds is not None else len(self.seeds or (0,))
        return grid * seed_count * (num_samples or self.num_samples)

    def asha(self, epochs: int) -> ASHAScheduler:
        """ASHA on the per-epoch objective; max_t is the epochs every trial trains, never a separate number."""
        self._check_grace(epochs)
        return ASHAScheduler(
            time_attr=metrics.EPOCH,
            metric=metrics.OBJECTIVE,
            mode=metrics.MODE,
            max_t=epochs,
            grace_period=self.scheduler.grace_period,
            reduction_factor=self.scheduler.reduction_factor,
            brackets=self.scheduler.brackets,
        )

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which ASHA compares trials, ascending, over all brackets.

        As Ray 2.60's `_Bracket`: bracket s has milestones grace * rf ** (k + s) for k below
        int(log(max_t / grace) / log(rf) - s + 1). A trial meets a milestone at its first epoch
        >= it (so 7.26 means epoch 8); a milestone at max_t is no comparison, as ASHA stops every
        trial there anyway."""
        self._check_grace(epochs)
        grace, rf = self.scheduler.grace_period, self.scheduler.reduction_factor
        milestones = set()
        for s in range(self.scheduler.brackets):
            count = int(np.log(epochs / grace) / np.log(rf) - s + 1)  # Ray's MAX_RUNGS, same float steps
            milestones.update(grace * rf ** (k + s) for k in range(count))
        return sorted({math.ceil(m) for m in milestones if math.ceil(m) < epochs})

    def decay_warning(self, epochs: int) -> str | None:
        """A warning when an ASHA rung falls where decay settings cannot yet differ (design.md,
        "ASHA and decay"): with the zaremba schedule, runs that differ only in lr_decay share one
        curve through epoch decay_start, so a rung there stops trials at random."""
        if not set(self.varied_keys()) & set(DECAY_KEYS) or "zaremba" not in self._values("lr_schedule"):
            return None
        start = max(self._values("decay_start"))
        early = [rung for rung in self.rungs(epochs) if rung <= start]
        if not early:
            return None
        s = "s" if len(early) > 1 else ""
        fix = (
            f"set scheduler.grace_period to {start + 1} or more"
            if start + 1 <= epochs
            else f"train more than {start} epochs with a grace_period past {start}, or stop varying the decay"
        )
        return (
            f"{self.path}: ASHA compares trials at epoch{s} {', '.join(map(str, early))} "
            f"(grace_period {self.scheduler.grace_period}, reduction_factor {self.scheduler.reduction_factor:g}), "
            f"at or before decay_start {start}. Under the zaremba schedule, trials that differ only in their "
            f"decay settings have had the same learning rate, and so the same curve, through epoch {start}: "
            f"a rung there stops them at random, not on merit; {fix}."
        )

    def _domains(self) -> list[tuple[str, tuple[str, Any]]]:
        return [(key, next(iter(spec.items()))) for key, spec in self.vary.items()]

    def _values(self, name: str) -> set:
        """Every value a setting can take across the trials (a sampled float: its bounds)."""
        base = getattr(self.base_config(), name)
        for key, (kind, values) in self._domains():
            if kind == "cases" and any(name in case for case in values):
                return {case.get(name, base) for case in values}
            if key == name:
                return set(range(*values)) if kind == "randint" else set(values)
        return {base}

    def check_corpus_fits(self, corpus: Corpus) -> None:
        """Refuse (UsageError) a space with a trial whose batch shape cannot fill one epoch of the
        corpus's train or valid split: checked for the largest batch_size and num_steps and the
        fewest max_words any trial takes, before any trial starts."""
        batch_size, num_steps = max(self._values("batch_size")), max(self._values("num_steps"))
        max_words = min(self._values("max_words"), key=lambda n: n or math.inf)
        truncated = corpus.truncated(max_words)
        for name, split in (("ptb.train.txt", truncated.train), ("ptb.valid.txt", truncated.valid)):
            try:
                num_batches(len(split) // batch_size, num_steps, batch_size=batch_size)
            except UsageError as error:
                raise UsageError(
                    f"{self.path}: {name}{f' (max_words {max_words})' if max_words else ''}: {error}"
                ) from None

    def _check_grace(self, epochs: int) -> None:
        if self.scheduler.grace_period > epochs:
            raise UsageError(
                f"{self.path}: scheduler.grace_period: {self.scheduler.grace_period} is more than the "
                f"{epochs} epochs of a run, allowed: at most {epochs} (or train for more epochs)"
            )


def trial_config(tune_config: dict[str, Any], preset: str) -> TrainConfig:
    """A trial's run config from the dict Ray resolved: each cases group (a dict) merged into the top level."""
    return make_config(flatten_cases(tune_config)[0], preset, where="trial config")


def complete_cases(cases: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case with every setting any case sets, the others' from `base`: same keys, same order."""
    names = list(dict.fromkeys(name for case in cases for name in case))
    return [{name: case.get(name, base[name]) for name in names} for case in cases]
