"""An experiment folder as two tidy tables: one row per trial, one row per trial and epoch.

    python -c "from study.report.collect import collect; print(collect('results/smoke')[0])"

Reads through study.report.reader (JSON and CSV only, nothing unpickled). Each trial gets one of
the statuses of study.metrics.STATUSES (`completed`, `stopped_early`, `diverged`, `error`,
`running`, `pending`), decided by `trial_status` from Ray's state and the trial's reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from study import metrics as m
from study.config import flatten_cases
from study.errors import UsageError
from study.report.comparison import SEED, Factor
from study.report.reader import (
    UNREADABLE,
    Location,
    TrialState,
    locate,
    read_history,
    read_trials,
    trial_error_line,
)
from study.tables import STUDY_FILE

PER_EPOCH = (*m.EPOCH_METRICS, m.TEST_PPL)


@dataclass
class Experiment:
    """What the report knows about one experiment."""

    location: Location
    trials: pd.DataFrame
    epochs: pd.DataFrame
    study: dict[str, Any]  # study.json, {} when absent
    factors: list[Factor]
    errors: dict[str, str]  # trial_id -> last line of its error file
    unreadable: frozenset[str] = frozenset()  # trials whose state entry could not be read: no config, so no setting

    @property
    def placed(self) -> pd.DataFrame:
        """The trials with a setting: all but the unreadable, which count as errors and belong to none."""
        return self.trials[~self.trials["trial_id"].isin(self.unreadable)]


def collect(
    experiment_dir: str, *, storage_filesystem: pafs.FileSystem | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The experiment's (trials, epochs) tables, as trials.parquet and epochs.parquet hold them.
    `storage_filesystem`: as Ray's RunConfig's, for storage no URI describes (then the path is on it)."""
    experiment = load_experiment(experiment_dir, storage_filesystem=storage_filesystem)
    return experiment.trials, experiment.epochs


def load_experiment(
    experiment_dir: str | os.PathLike, *, storage_filesystem: pafs.FileSystem | None = None
) -> Experiment:
    location = locate(experiment_dir, storage_filesystem)
    study_text = location.read_text(STUDY_FILE)
    try:
        study_info = json.loads(study_text) if study_text is not None else {}
    except json.JSONDecodeError as error:
        raise UsageError(
            f"{location.show(STUDY_FILE)}: not valid JSON ({error}), expected the file study.sweep writes"
        ) from None

    rows, frames, groups, errors = [], [], {}, {}
    for trial in sorted(read_trials(location), key=lambda t: t.trial_id):
        config, trial_groups = flatten_config(trial.config)
        for label, keys in trial_groups.items():
            groups.setdefault(label, list(dict.fromkeys([*groups.get(label, []), *keys])))
        history = _history(location, trial)
        frames.append(history.assign(trial_id=trial.trial_id))
        rows.append((trial, config, history))
        if trial.status in ("ERROR", UNREADABLE):
            errors[trial.trial_id] = trial_error_line(location, trial)

    epochs_expected = study_info.get("epochs")
    trials = pd.DataFrame([_trial_row(trial, config, history, epochs_expected) for trial, config, history in rows])
    if not rows:  # no trial yet: empty tables with the columns they will have
        columns = ["trial_id", "status", *(key for key in study_info.get("varied") or [] if key != SEED), *RESULTS]
        trials = pd.DataFrame(
            {
                column: pd.Series(dtype=str if column in ("trial_id", "status", "node_ids") else float)
                for column in columns
            }
        )
    if epochs_expected is None and "epochs" not in trials:  # no epoch count known: the longest run is "all"
        shorter = (trials["status"] == m.COMPLETED) & (trials["epochs_run"] < trials["epochs_run"].max())
        trials.loc[shorter, "status"] = m.STOPPED_EARLY
    trials = _order_trial_columns(trials)

    unreadable = frozenset(trial.trial_id for trial, _, _ in rows if trial.status == UNREADABLE)
    varied = _varied_keys(trials[~trials["trial_id"].isin(unreadable)], study_info)
    factors = _factors(varied, groups)
    epochs = _epoch_table(frames, trials, varied)
    return Experiment(location, trials, epochs, study_info, factors, errors, unreadable)


def flatten_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Ray's trial config with each `cases` group (a dict under a label) merged into the top level.
    Returns the flat config and {label: the keys its group sets}."""
    flat, groups = flatten_cases(config)
    return {key: _scalar(value) for key, value in flat.items()}, groups


def _scalar(value: Any) -> Any:
    """A value a Parquet column and a groupby can hold: lists and the like become JSON text."""
    return (
        value
        if value is None or isinstance(value, (bool, int, float, str, np.generic))
        else json.dumps(value, default=str)
    )


def _history(location: Location, trial: TrialState) -> pd.DataFrame:
    """The trial's reports, one row per epoch, the last report of an epoch winning (a resumed
    trial re-reports the epochs after its last checkpoint)."""
    frame = read_history(location, trial)
    if frame.empty:
        return pd.DataFrame(
            {**{name: pd.Series(dtype=float) for name in PER_EPOCH}, m.SHARED_PREFIX: pd.Series(dtype=bool)}
        )
    if m.EPOCH not in frame and "training_iteration" in frame:
        frame = frame.assign(**{m.EPOCH: frame["training_iteration"]})
    for name in PER_EPOCH:
        if name not in frame:
            frame[name] = np.nan
    # Reports from before prefixes were shared have no flag: every epoch was trained by its trial.
    frame[m.SHARED_PREFIX] = frame[m.SHARED_PREFIX].eq(True) if m.SHARED_PREFIX in frame else False
    frame = frame.drop_duplicates(m.EPOCH, keep="last").sort_values(m.EPOCH, kind="stable")
    keep = [*PER_EPOCH, m.SHARED_PREFIX, *(name for name in m.MACHINE if name in frame)]
    return frame[keep].reset_index(drop=True)


def _trial_row(
    trial: TrialState, config: dict[str, Any], history: pd.DataFrame, epochs_expected: int | None
) -> dict[str, Any]:
    valid = history[m.VALID_PPL].astype(float)
    finite = valid[np.isfinite(valid)]
    epochs_run = int(history[m.EPOCH].max()) if len(history) else 0
    diverged = bool(history[m.DIVERGED].fillna(False).astype(bool).any()) if len(history) else False
    expected = config.get("epochs", epochs_expected)
    status = trial_status(trial.status, epochs_run, expected, diverged)
    # An epoch taken from a shared prefix counts 0 s here: the trial that trained it has its seconds.
    seconds = history[m.EPOCH_SECONDS].where(~history[m.SHARED_PREFIX], 0.0).sum(min_count=1)
    if pd.isna(seconds):
        seconds = (trial.last_result or {}).get("time_total_s", np.nan)
    test = history[m.TEST_PPL].dropna()
    return {
        "trial_id": trial.trial_id,
        "status": status,
        **config,
        "epochs_run": epochs_run,
        "best_valid_ppl": float(finite.min()) if len(finite) else np.nan,
        "final_valid_ppl": float(valid.iloc[-1]) if len(valid) else np.nan,
        "best_epoch": int(history.loc[finite.idxmin(), m.EPOCH]) if len(finite) else pd.NA,
        "test_ppl": float(test.iloc[-1]) if status == m.COMPLETED and len(test) else np.nan,
        "seconds": float(seconds),
        "num_failures": trial.num_failures,  # failures it survived, or the last of which ended it (error)
        "node_ids": ",".join(dict.fromkeys(history["node_id"].dropna())) if "node_id" in history else "",
    }


def trial_status(ray_status: str, epochs_run: int, epochs_expected: int | None, diverged: bool) -> str:
    """One of study.metrics.STATUSES. Ray writes a running trial into its state as PENDING, so a
    PENDING trial with reports is `running` (started, not finished), one without is `pending`."""
    if ray_status in ("ERROR", UNREADABLE):
        return m.ERROR
    if diverged:
        return m.DIVERGED
    if ray_status == "RUNNING" or (ray_status in ("PENDING", "PAUSED") and epochs_run):
        return m.RUNNING
    if ray_status in ("PENDING", "PAUSED"):
        return m.PENDING
    if epochs_expected is None or epochs_run >= epochs_expected:
        return m.COMPLETED
    return m.STOPPED_EARLY


# The columns of trials.parquet that are outcomes of a trial, not its settings (in this order, last).
RESULTS = (
    "epochs_run",
    "best_valid_ppl",
    "final_valid_ppl",
    "best_epoch",
    "test_ppl",
    "seconds",
    "num_failures",
    "node_ids",
)


def _order_trial_columns(trials: pd.DataFrame) -> pd.DataFrame:
    config = [c for c in trials.columns if c not in ("trial_id", "status", *RESULTS)]
    trials = trials[["trial_id", "status", *config, *RESULTS]].copy()
    trials["best_epoch"] = trials["best_epoch"].astype("Int64")
    return trials


def _varied_keys(trials: pd.DataFrame, study_info: dict[str, Any]) -> list[str]:
    """The settings that differ between `trials`: study.json's list, else inferred from their configs."""
    if study_info.get("varied") is not None:
        return [key for key in study_info["varied"] if key in trials]
    return [
        c for c in trials.columns if c not in ("trial_id", "status", *RESULTS) and trials[c].nunique(dropna=False) > 1
    ]


def _factors(varied: list[str], groups: dict[str, list[str]]) -> list[Factor]:
    """The comparison's axes: every varied setting but seed, the keys of one cases group as one axis."""
    factors, seen = [], set()
    for key in varied:
        if key == SEED or key in seen:
            continue
        label = next((label for label, keys in groups.items() if key in keys), None)
        if label is None:
            factors.append(Factor(key, (key,)))
            seen.add(key)
        else:
            keys = tuple(k for k in groups[label] if k in varied and k != SEED)
            factors.append(Factor(label, keys, is_case=True))
            seen.update(keys)
    return factors


def _epoch_table(frames: list[pd.DataFrame], trials: pd.DataFrame, varied: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    columns = ["trial_id", *varied, *PER_EPOCH, m.SHARED_PREFIX]
    if not frames:
        return pd.DataFrame({c: trials[c].iloc[:0] if c in trials else pd.Series(dtype=float) for c in columns})
    epochs = pd.concat(frames, ignore_index=True)
    epochs = epochs.merge(trials[["trial_id", *varied]], on="trial_id", how="left")
    extra = [c for c in m.MACHINE if c in epochs]
    epochs = epochs[[*columns, *extra]].sort_values(["trial_id", m.EPOCH], kind="stable").reset_index(drop=True)
    epochs[m.EPOCH] = epochs[m.EPOCH].astype(int)
    epochs[m.DIVERGED] = epochs[m.DIVERGED].fillna(False).astype(bool)
    return epochs
