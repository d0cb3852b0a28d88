"""The study as planned: how many trials, settings and trial-epochs the sweep set out to run.

    python -c "import json; from study.report.planned import study_plan; print(study_plan(json.load(open('results/grad_clip/study.json'))))"

Ray writes a trial into its state only when it creates it, a few at a time, so a report of a sweep
interrupted early sees 3 trials of the 64 it will run. study.json holds the plan: the sweep writes
its counts (`planned_trials`, `planned_settings`, `planned_trial_epochs`, `expected_trial_epochs`);
a study.json from before those keys gives the counts from its space text, seeds and num_samples,
as the sweep counts them: (product of the grid and cases lengths) x seeds x num_samples.
`planned_settings` lists the settings themselves where every varied key is a plain grid, so that the
grids of an interim report can show the settings Ray has not created a trial of yet.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from study.report.comparison import SEED

GRIDS = ("grid", "cases")  # domains that multiply the trials (study.sweep.spaces); the others are drawn per trial


@dataclass(frozen=True)
class Plan:
    trials: int
    settings: int | None  # combinations of the varied keys but seed; None where each trial draws its own
    trial_epochs: int | None  # every trial to its last epoch; None without an epoch count
    expected_trial_epochs: float | None  # with ASHA's expected stops, less shared prefixes; None when not recorded

    @property
    def per_setting(self) -> int | None:
        """Trials of each setting (its seeds, times num_samples); None where trials draw their settings."""
        return self.trials // self.settings if self.settings else None


def study_plan(study: dict[str, Any]) -> Plan | None:
    """The plan of study.json (a dict as read from disk, so each value is checked); None when it
    says too little to count the trials."""
    epochs = _count(study.get("epochs"))
    trials = _count(study.get("planned_trials"))
    if trials is not None:
        expected = study.get("expected_trial_epochs")
        return Plan(
            trials=trials,
            settings=_count(study.get("planned_settings")),
            trial_epochs=_count(study.get("planned_trial_epochs")) or (trials * epochs if epochs else None),
            expected_trial_epochs=float(expected)
            if isinstance(expected, (int, float)) and not isinstance(expected, bool) and math.isfinite(expected)
            else None,
        )
    return _from_space(study, epochs)


def planned_settings(study: dict[str, Any]) -> pd.DataFrame | None:
    """Every setting the space of study.json plans, one row each and a column per varied key but
    seed (the cartesian product of the grids, in the space's order; values as YAML reads them: 1, inf);
    None where a key is not a plain grid of plain values (cases, a drawn domain) or the text cannot be read."""
    space = _space(study)
    if space is None:
        return None
    grids = {}
    for key, spec in (space.get("vary") or {}).items():
        [(kind, values)] = spec.items()
        if kind != "grid" or not isinstance(values, list) or not values:
            return None
        if not all(value is None or isinstance(value, (bool, int, float, str)) for value in values):
            return None  # a list or mapping as a value: no column of plain values to match the trials'
        if key != SEED:
            grids[key] = values
    if not grids:
        return None
    return pd.DataFrame(list(itertools.product(*grids.values())), columns=list(grids))


def _space(study: dict[str, Any]) -> dict[str, Any] | None:
    """The space text of study.json as YAML, each domain under `vary` one {kind: values}; None if it is not."""
    try:
        space = yaml.safe_load(study.get("space_text") or "")
    except (yaml.YAMLError, TypeError):
        return None
    if not isinstance(space, dict):
        return None
    vary = space.get("vary") or {}
    if not isinstance(vary, dict) or not all(isinstance(spec, dict) and len(spec) == 1 for spec in vary.values()):
        return None
    return space


def _from_space(study: dict[str, Any], epochs: int | None) -> Plan | None:
    """The counts of a study.json without them, from the space text it holds."""
    space = _space(study)
    if space is None:
        return None
    vary = space.get("vary") or {}
    grid, drawn, seed_grid = 1, False, None
    for key, spec in vary.items():
        [(kind, values)] = spec.items()
        if kind not in GRIDS:
            drawn = True
        elif not isinstance(values, list):
            return None
        elif key == SEED:  # seeds as a grid under vary rather than under `seeds`
            seed_grid = values
        else:
            grid *= len(values)
    # study.json's seeds are the sweep's (the command line's replace the file's); else the file's.
    seeds = study.get("seeds") if study.get("seeds") is not None else seed_grid or space.get("seeds")
    if seeds is not None and not isinstance(seeds, list):
        return None
    samples = _count(study.get("num_samples")) or _count(space.get("num_samples")) or 1
    trials = grid * len(seeds or [0]) * samples
    if not trials:
        return None
    return Plan(trials, None if drawn else grid, trials * epochs if epochs else None, None)


def _count(value: Any) -> int | None:
    """A positive integer from study.json, else None (a bool, a string, 0 or a float are not counts)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
