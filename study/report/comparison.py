"""The comparison of settings: one row per setting with its seed statistics, and its pivot.

    python -m study.report results/grad_clip     # writes comparison.parquet from this module's tables

A setting is one combination of the varied keys except the seed; `compare` pools a setting's trials
(its seeds) and `pivot` lays the settings out as a grid (max_grad_norm down, the rest across). While a
sweep runs, Ray has created the trials of only some settings: given the planned ones
(study.report.planned), the pivot shows the others too, as settings of no trial ("not started").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from study import metrics as m
from study.labels import case_label, setting_label, value_label
from study.report.anova import SeedNoise, seed_noise

SEED = "seed"
DRAWN = ("uniform", "loguniform", "randint")  # study.sweep.spaces' domains drawn from a range


@dataclass(frozen=True)
class Factor:
    """One axis of the comparison: a varied setting, or a `cases` group whose keys vary together."""

    name: str  # the setting, or the cases label ("clip")
    keys: tuple[str, ...]
    is_case: bool = False


def setting_keys(factors: list[Factor]) -> list[str]:
    return [key for factor in factors for key in factor.keys]


def sampled_keys(study: dict[str, Any]) -> set[str]:
    """The settings the space draws per trial from a range (uniform, loguniform, randint), read from
    study.json's space text: their values do not repeat, so seeds cannot give them intervals."""
    try:
        vary = (yaml.safe_load(study.get("space_text") or "") or {}).get("vary") or {}
    except (yaml.YAMLError, AttributeError):
        return set()
    return {key for key, spec in vary.items() if isinstance(spec, dict) and set(spec) & set(DRAWN)}


def factor_label(factor: Factor, row: pd.Series | dict[str, Any], bare: bool = True) -> str:
    """How one axis value is printed (study.labels): '5', 'none' (inf); a case as 'global_norm (max_grad_norm=5)'.
    With bare=False a plain setting is 'key=value'."""
    if factor.is_case:
        return case_label(row, factor.keys)
    text = value_label(row[factor.keys[0]])
    return text if bare else f"{factor.keys[0]}={text}"


def interval(values: pd.Series) -> tuple[int, float, float, float, float]:
    """(n, mean, std, ci95_low, ci95_high) of the finite values: Student's t, NaN interval when n < 2."""
    values = values.astype(float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    mean = float(values.mean())
    if n < 2:
        return 1, mean, np.nan, np.nan, np.nan
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return n, mean, std, mean - half, mean + half


def compare(trials: pd.DataFrame, factors: list[Factor]) -> pd.DataFrame:
    """One row per setting (the factors' keys, seeds pooled), in the factors' order."""
    keys = setting_keys(factors)
    cases = {factor.name: factor.keys for factor in factors if factor.is_case}
    grouped = trials.groupby(keys, dropna=False, sort=False) if keys else [((), trials)]
    rows = []
    for _, group in grouped:
        first = group.iloc[0]
        ranked = group[group["status"].isin(m.RANKED)]
        completed = group[group["status"] == m.COMPLETED]
        row = {key: first[key] for key in keys}
        row["setting"] = setting_label(first, keys, cases) or "all trials"
        row["n_trials"] = len(group)
        row["n_seeds"] = int(group[SEED].nunique()) if SEED in group else len(group)
        for name, subset in (("best_valid_ppl", ranked), ("test_ppl", completed)):
            n, mean, std, low, high = interval(subset[name])
            row[count_column(name)] = n
            row.update({f"{name}_mean": mean, f"{name}_std": std, f"{name}_ci95_low": low, f"{name}_ci95_high": high})
        row["epochs_run_mean"] = float(group["epochs_run"].mean())
        for status in m.FINISHED:
            row[f"n_{status}"] = int((group["status"] == status).sum())
        row["n_unfinished"] = int(group["status"].isin(m.UNFINISHED).sum())
        rows.append(row)
    statistics = [
        part
        for name in ("best_valid_ppl", "test_ppl")
        for part in (count_column(name), f"{name}_mean", f"{name}_std", f"{name}_ci95_low", f"{name}_ci95_high")
    ]
    counts = [f"n_{status}" for status in (*m.FINISHED, "unfinished")]
    columns = [*keys, "setting", "n_trials", "n_seeds", *statistics, "epochs_run_mean", *counts]
    table = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    for name, subset in (
        ("best_valid_ppl", trials[trials["status"].isin(m.RANKED)]),
        ("test_ppl", trials[trials["status"] == m.COMPLETED]),
    ):
        table = _pooled_intervals(table, name, subset, keys)
    return _sort(table, factors)


def noise_of(trials: pd.DataFrame, keys: list[str], name: str) -> SeedNoise | None:
    """The seed noise of `name` across the settings (the `keys`) of `trials` (study.report.anova)."""
    groups = trials[keys].astype(str).agg("|".join, axis=1) if keys else pd.Series("all", index=trials.index)
    return seed_noise(trials[name], groups)


def count_column(name: str) -> str:
    """The comparison's column that counts the trials behind `name`'s mean (best_valid_ppl or test_ppl)."""
    return "n_valid" if name == "best_valid_ppl" else "n_test"


def _pooled_intervals(table: pd.DataFrame, name: str, trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each setting's 95% interval of `name` from the pooled seed noise when the settings share it
    (t with the pooled degrees of freedom), else the per-setting t interval; `<name>_ci_method` says which."""
    count = count_column(name)
    noise = noise_of(trials, keys, name) if len(trials) else None
    methods = []
    for i, row in table.iterrows():
        n = row[count]
        if noise is not None and noise.shared and n >= 1:
            half = float(stats.t.ppf(0.975, noise.df)) * noise.sd / math.sqrt(n)
            table.loc[i, [f"{name}_ci95_low", f"{name}_ci95_high"]] = (
                row[f"{name}_mean"] - half,
                row[f"{name}_mean"] + half,
            )
            methods.append(f"pooled t, {noise.df} df")
        else:
            methods.append(f"per-setting t, {n - 1} df" if n >= 2 else "none")
    table[f"{name}_ci_method"] = methods
    return table


def _ranks(frame: pd.DataFrame, factor: Factor) -> pd.Series:
    """Each row's place on the factor's axis: numbers ascending (none last), else order of appearance."""
    values = frame[factor.keys[0]]
    if not factor.is_case and pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    labels = pd.Series([factor_label(factor, row) for _, row in frame.iterrows()], index=frame.index)
    first = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    return labels.map(first).astype(float)


def _sort(frame: pd.DataFrame, factors: list[Factor]) -> pd.DataFrame:
    """`frame` ordered by the factors in turn (the first the slowest)."""
    if not factors or frame.empty:
        return frame.reset_index(drop=True)
    ranks = pd.DataFrame({i: _ranks(frame, f) for i, f in enumerate(factors)}, index=frame.index)
    order = ranks.sort_values(list(ranks.columns), kind="stable").index
    return frame.loc[order].reset_index(drop=True)


@dataclass(frozen=True)
class Pivot:
    """The comparison laid out as a grid: one factor down, the others across."""

    rows: Factor | None
    columns: list[Factor]
    row_title: str
    column_title: str
    # The comparison, ordered rows first, with "_row" and "_col" labels; and the planned settings Ray
    # has not created a trial of yet, in their places: n_trials and the other counts 0, statistics NaN.
    frame: pd.DataFrame

    @property
    def created(self) -> pd.DataFrame:
        """The frame's settings that have trials: what every statistic, curve and answer is drawn from."""
        return self.frame[self.frame["n_trials"] > 0]

    def grid(self, value: str) -> pd.DataFrame:
        table = self.frame.pivot(index="_row", columns="_col", values=value)
        return table.reindex(index=list(dict.fromkeys(self.frame["_row"])), columns=self.column_order())

    def column_order(self) -> list[str]:
        ordered = _sort(self.frame, self.columns) if self.columns else self.frame
        return list(dict.fromkeys(ordered["_col"]))


def pivot(comparison: pd.DataFrame, factors: list[Factor], planned: pd.DataFrame | None = None) -> Pivot:
    """max_grad_norm down (when it varies on its own), else the first factor; the rest across.
    `planned`: every setting of the study (study.report.planned.planned_settings), a column per key
    of the factors; those the comparison lacks join the frame as settings without trials."""
    rows = next((f for f in factors if f.name == "max_grad_norm"), factors[0] if factors else None)
    columns = [f for f in factors if f is not rows]
    frame = _with_planned(comparison, factors, planned)
    frame = _sort(frame, [f for f in (rows, *columns) if f is not None])
    frame["_row"] = [factor_label(rows, r) if rows else "all trials" for _, r in frame.iterrows()]
    frame["_col"] = [
        ", ".join(factor_label(f, r, bare=len(columns) == 1) for f in columns) or "mean" for _, r in frame.iterrows()
    ]
    return Pivot(rows, columns, rows.name if rows else "", ", ".join(f.name for f in columns), frame)


def _with_planned(comparison: pd.DataFrame, factors: list[Factor], planned: pd.DataFrame | None) -> pd.DataFrame:
    """The comparison and a row for each planned setting it lacks: no trials, so counts 0 and
    statistics NaN. The plan is read on the factors' keys (a grid of one value is no factor);
    unchanged without a plan, or with one that lacks a factor's key."""
    keys = setting_keys(factors)
    if planned is None or not keys or not set(keys) <= set(planned.columns):
        return comparison
    planned = planned[keys].copy()
    for key in keys:
        if pd.api.types.is_numeric_dtype(comparison[key]) and not pd.api.types.is_bool_dtype(comparison[key]):
            planned[key] = [_number(value) for value in planned[key]]
    # Tuples compare their numbers by value: YAML's 1 is the trials' 1.0, .inf their inf.
    created = set(comparison[keys].itertuples(index=False, name=None))
    missing = [row for row in planned.itertuples(index=False, name=None) if row not in created]
    if not missing:
        return comparison
    rows = pd.DataFrame(list(dict.fromkeys(missing)), columns=keys)  # each setting once
    rows["setting"] = [setting_label(row, keys) for _, row in rows.iterrows()]
    for column in comparison.columns.drop([*keys, "setting"]):
        if column.startswith("n_"):
            rows[column] = 0
        elif column.endswith("_ci_method"):
            rows[column] = "none"
        else:
            rows[column] = np.nan
    rows = rows[list(comparison.columns)]
    return rows if comparison.empty else pd.concat([comparison, rows], ignore_index=True)


def _number(value: Any) -> Any:
    """'1e-3', a string to YAML 1.1 (a number to the sweep's loader), as that number; any other value as is."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value
