"""Turn a finished (or interrupted) sweep into tidy tables, a comparison, plots and a summary.

    python -m study.report results/grad_clip                # refresh the report, print the answer
    python -m study.report results/grad_clip --provenance   # what produced the tables

The experiment folder is the one Ray Tune leaves (`<storage>/<study>/`, a local folder or a URI
such as s3://bucket/results/grad_clip); the report goes beside Ray's files:

    trials.parquet       one row per trial: status, every setting, epochs run, best/final/test perplexity
    epochs.parquet       one row per trial and epoch: the per-epoch metrics and the varied settings
    comparison.parquet   one row per setting (the varied keys but seed): mean and 95% interval over seeds
    summary.md           the answer first, then the pivots, divergence counts and the plots
    *.png                heatmap, validation curves, gradient norms and clipping, test perplexity

study.experiment_reader reads the trials from the JSON and CSV text Ray writes and never unpickles
anything (a folder someone else wrote is safe to report on), so no Ray needs to run; study.summary
writes the text of summary.md and study.plots the pictures. Every file is written under a
temporary name and renamed into place: a crash leaves the previous report whole.

How the numbers are made (also stated in summary.md):
- Status: `completed` trained every epoch; `stopped_early` ASHA (or the trainable) ended it sooner;
  `diverged` its loss became NaN/inf; `error` Ray marked it failed (or its entry in Ray's state
  cannot be read; summary.md's Errors say which); `running` started and not
  finished (still running, or interrupted: Ray saves a running trial as PENDING); `pending` not started.
- Perplexity statistics of a setting are over its `completed` and `stopped_early` trials (an
  ASHA-stopped trial counts with the best perplexity it reached); diverged trials are left out
  and counted in `n_diverged`; test perplexity is over `completed` trials only.
- The 95% interval is Student's t over the trials of a setting; with fewer than two it is empty (NaN).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

import study
from study import metrics as m
from study import plots
from study.errors import UsageError, main_with_errors
from study.experiment_reader import (
    EXPECTED,
    UNREADABLE,
    Location,
    TrialState,
    child_location,
    error_line,
    filesystem_and_path,
    locate,
    read_history,
    read_trials,
    split_location,
)
from study.comparison import SEED, Factor, Pivot, compare, factor_label, format_value, pivot
from study.tables import read_provenance, write_table

STUDY_FILE = "study.json"  # written by study.sweep beside Ray's state
TRIALS, EPOCHS, COMPARISON, SUMMARY = "trials.parquet", "epochs.parquet", "comparison.parquet", "summary.md"

PER_EPOCH = (*m.EPOCH_METRICS, m.TEST_PPL)

@dataclass(frozen=True)
class ReportPaths:
    """Where write_report put each file (local paths, or URIs for remote storage)."""

    folder: str
    trials: str
    epochs: str
    comparison: str
    summary: str
    plots: dict[str, str] = field(default_factory=dict)


@dataclass
class Experiment:
    """What the report knows about one experiment."""

    location: Location
    trials: pd.DataFrame
    epochs: pd.DataFrame
    study: dict[str, Any]  # study.json, {} when absent
    factors: list[Factor]
    errors: dict[str, str]  # trial_id -> last line of its error file


def collect(experiment_dir: str, *, storage_filesystem: pafs.FileSystem | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The experiment's (trials, epochs) tables, as trials.parquet and epochs.parquet hold them.
    `storage_filesystem`: as Ray's RunConfig's, for storage no URI describes (then the path is on it)."""
    experiment = load_experiment(experiment_dir, storage_filesystem=storage_filesystem)
    return experiment.trials, experiment.epochs


def load_experiment(experiment_dir: str | os.PathLike, *, storage_filesystem: pafs.FileSystem | None = None) -> Experiment:
    location = locate(experiment_dir, storage_filesystem)
    study_text = location.read_text(STUDY_FILE)
    try:
        study_info = json.loads(study_text) if study_text is not None else {}
    except json.JSONDecodeError as error:
        raise UsageError(f"{location.show(STUDY_FILE)}: not valid JSON ({error}), expected the file study.sweep writes") from None

    rows, frames, groups, errors = [], [], {}, {}
    for trial in sorted(read_trials(location), key=lambda t: t.trial_id):
        config, trial_groups = flatten_config(trial.config)
        for label, keys in trial_groups.items():
            groups.setdefault(label, list(dict.fromkeys([*groups.get(label, []), *keys])))
        history = _history(location, trial)
        frames.append(history.assign(trial_id=trial.trial_id))
        rows.append((trial, config, history))
        if trial.status in ("ERROR", UNREADABLE):
            errors[trial.trial_id] = error_line(location, trial)
    if not rows:
        raise UsageError(f"{location.given}: the experiment has no trials yet, {EXPECTED}")

    epochs_expected = study_info.get("epochs")
    trials = pd.DataFrame([_trial_row(trial, config, history, epochs_expected) for trial, config, history in rows])
    if epochs_expected is None and "epochs" not in trials:  # no epoch count known: the longest run is "all"
        shorter = (trials["status"] == "completed") & (trials["epochs_run"] < trials["epochs_run"].max())
        trials.loc[shorter, "status"] = "stopped_early"
    trials = _order_trial_columns(trials)

    varied = _varied_keys(trials, study_info)
    factors = _factors(varied, groups)
    epochs = _epoch_table(frames, trials, varied)
    return Experiment(location, trials, epochs, study_info, factors, errors)


def flatten_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Ray's trial config with each `cases` group (a dict under a label) merged into the top level.
    Returns the flat config and {label: the keys its group sets}."""
    flat = {key: _scalar(value) for key, value in config.items() if not isinstance(value, dict)}
    groups = {}
    for label, group in config.items():
        if isinstance(group, dict):
            groups[label] = list(group)
            flat.update({key: _scalar(value) for key, value in group.items()})  # a case overrides a plain value
    return flat, groups


def _scalar(value: Any) -> Any:
    """A value a Parquet column and a groupby can hold: lists and the like become JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str, np.generic)) else json.dumps(value, default=str)


def _history(location: Location, trial: TrialState) -> pd.DataFrame:
    """The trial's reports, one row per epoch, the last report of an epoch winning (a resumed
    trial re-reports the epochs after its last checkpoint)."""
    frame = read_history(location, trial)
    if frame.empty:
        return pd.DataFrame({**{name: pd.Series(dtype=float) for name in PER_EPOCH}, m.SHARED_PREFIX: pd.Series(dtype=bool)})
    if m.EPOCH not in frame and "training_iteration" in frame:
        frame = frame.assign(**{m.EPOCH: frame["training_iteration"]})
    for name in PER_EPOCH:
        if name not in frame:
            frame[name] = np.nan
    # Reports from before prefixes were shared have no flag: every epoch was trained by its trial.
    frame[m.SHARED_PREFIX] = frame[m.SHARED_PREFIX].eq(True) if m.SHARED_PREFIX in frame else False
    frame = frame.drop_duplicates(m.EPOCH, keep="last").sort_values(m.EPOCH, kind="stable")
    keep = [*PER_EPOCH, m.SHARED_PREFIX, *(name for name in ("node_id",) if name in frame)]
    return frame[keep].reset_index(drop=True)


def _trial_row(trial: TrialState, config: dict[str, Any], history: pd.DataFrame, epochs_expected: int | None) -> dict[str, Any]:
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
        "test_ppl": float(test.iloc[-1]) if status == "completed" and len(test) else np.nan,
        "seconds": float(seconds),
    }


def trial_status(ray_status: str, epochs_run: int, epochs_expected: int | None, diverged: bool) -> str:
    """One of STATUSES. Ray writes a running trial into its state as PENDING, so a PENDING trial
    with reports is `running` (started, not finished), one without is `pending`."""
    if ray_status in ("ERROR", UNREADABLE):
        return "error"
    if diverged:
        return "diverged"
    if ray_status == "RUNNING" or (ray_status in ("PENDING", "PAUSED") and epochs_run):
        return "running"
    if ray_status in ("PENDING", "PAUSED"):
        return "pending"
    if epochs_expected is None or epochs_run >= epochs_expected:
        return "completed"
    return "stopped_early"


def _order_trial_columns(trials: pd.DataFrame) -> pd.DataFrame:
    results = ["epochs_run", "best_valid_ppl", "final_valid_ppl", "best_epoch", "test_ppl", "seconds"]
    config = [c for c in trials.columns if c not in ("trial_id", "status", *results)]
    trials = trials[["trial_id", "status", *config, *results]].copy()
    trials["best_epoch"] = trials["best_epoch"].astype("Int64")
    return trials


def _varied_keys(trials: pd.DataFrame, study_info: dict[str, Any]) -> list[str]:
    """The settings that differ between trials: study.json's list, else inferred from the configs."""
    if study_info.get("varied") is not None:
        return [key for key in study_info["varied"] if key in trials]
    results = {"trial_id", "status", "epochs_run", "best_valid_ppl", "final_valid_ppl", "best_epoch", "test_ppl", "seconds"}
    return [c for c in trials.columns if c not in results and trials[c].nunique(dropna=False) > 1]


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
    extra = [c for c in ("node_id",) if c in epochs]
    epochs = epochs[[*columns, *extra]].sort_values(["trial_id", m.EPOCH], kind="stable").reset_index(drop=True)
    epochs[m.EPOCH] = epochs[m.EPOCH].astype(int)
    epochs[m.DIVERGED] = epochs[m.DIVERGED].fillna(False).astype(bool)
    return epochs


def provenance(experiment: Experiment) -> dict[str, Any]:
    """What produced the tables: the study's space file and data, the code and library versions."""
    study_info = experiment.study
    described = space_description(study_info.get("space_text"))
    versions = study_info.get("versions") or code_versions()
    return {
        "experiment": experiment.location.given,
        "space": study_info.get("space"),
        "description": described,
        "preset": study_info.get("preset"),
        "epochs": study_info.get("epochs"),
        "varied": study_info.get("varied"),
        "trials": len(experiment.trials),
        "space_text": study_info.get("space_text"),
        "data_sha256": study_info.get("data_sha256"),
        "versions": versions,
        "versions_from": "study.json (sweep time)" if study_info.get("versions") else "report time",
        **({key: study_info.get(key) for key in ("git_commit", "git_dirty")} if study_info.get("git_commit") else git_state()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def code_versions() -> dict[str, str | None]:
    """Versions of the code that trains and reports: study, torch, Ray, Python, pandas."""
    return {
        "study": study.__version__,
        "torch": _version("torch"),
        "ray": _version("ray"),
        "python": platform.python_version(),
        "pandas": pd.__version__,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """HEAD of the checkout the study code runs from (else of the current folder), and whether its
    tracked files had changes; None for both without git or outside a checkout."""
    for folder in (Path(study.__file__).resolve().parent, Path.cwd()):
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
            if head.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            break
        return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    return {"git_commit": None, "git_dirty": None}


def space_description(space_text: str | None) -> str | None:
    if not space_text:
        return None
    import yaml

    try:
        parsed = yaml.safe_load(space_text)
    except yaml.YAMLError:
        return None
    description = parsed.get("description") if isinstance(parsed, dict) else None
    return " ".join(str(description).split()) if description else None


def write_report(experiment_dir: str, *, quiet: bool = False, storage_filesystem: pafs.FileSystem | None = None) -> ReportPaths:
    """Refresh every report file of the experiment; each replaces its previous version whole."""
    from study.summary import summary  # summary.py reads this module's types: imported at use, not at import

    experiment = load_experiment(experiment_dir, storage_filesystem=storage_filesystem)
    location = experiment.location
    comparison = compare(experiment.trials, experiment.factors)
    grid = pivot(comparison, experiment.factors)
    prov = provenance(experiment)
    with _staging(location) as stage:
        write_table(experiment.trials, stage / TRIALS, prov)
        write_table(experiment.epochs, stage / EPOCHS, prov)
        write_table(comparison, stage / COMPARISON, prov)
        pictures = plots.write_all(stage, _plot_data(experiment, comparison, grid))
        text = summary(experiment, comparison, grid, pictures)
        _write_text(stage / SUMMARY, text)
        names = [TRIALS, EPOCHS, COMPARISON, *pictures.values(), SUMMARY]  # the summary last: it links the rest
        _publish(stage, names, location)
    paths = ReportPaths(
        folder=location.show("").rstrip("/"),
        trials=location.show(TRIALS), epochs=location.show(EPOCHS), comparison=location.show(COMPARISON),
        summary=location.show(SUMMARY), plots={kind: location.show(name) for kind, name in pictures.items()},
    )
    if not quiet:  # the answer, and the notes on a partial or single-seed experiment
        paragraphs = text.split("\n\n")
        shown = paragraphs[1:3] + [p for p in paragraphs[3:4] if p.startswith(">")]
        print("\n".join(shown).replace("**", ""))
        print(f"Report: {paths.summary} (tables {TRIALS}, {EPOCHS}, {COMPARISON}; {len(pictures)} plots)")
    return paths


@contextlib.contextmanager
def _staging(location: Location):
    """A fresh folder to write the report into: inside the experiment when it is local (so that
    the final renames stay on one filesystem), else a local temporary folder. Removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=".report-", dir=location.local))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _publish(stage: Path, names: list[str], location: Location) -> None:
    """Move each finished file into place: a rename locally, one whole-object upload elsewhere
    (object stores make an upload visible only once it is complete)."""
    for name in names:
        if location.local is not None:
            os.replace(stage / name, location.local / name)
        else:
            pafs.copy_files(str(stage / name), f"{location.root}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=location.fs)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _plot_data(experiment: Experiment, comparison: pd.DataFrame, grid: Pivot) -> plots.PlotData:
    epochs, trials = experiment.epochs, experiment.trials
    colour = grid.rows  # max_grad_norm where it varies on its own
    panels = grid.columns if 1 <= len(grid.columns) and grid.frame["_col"].nunique() <= 6 else []
    lines = epochs[["trial_id", m.EPOCH, m.VALID_PPL, m.DIVERGED, m.GRAD_NORM_P50, m.GRAD_NORM_P90, m.CLIP_FRACTION]].copy()
    colour_of = {row["trial_id"]: factor_label(colour, row) if colour else "all" for _, row in trials.iterrows()}
    panel_of = {
        row["trial_id"]: ", ".join(factor_label(f, row, bare=len(panels) == 1) for f in panels) for _, row in trials.iterrows()
    }
    lines["colour"] = lines["trial_id"].map(colour_of)
    lines["panel"] = lines["trial_id"].map(panel_of)
    colour_order = list(dict.fromkeys(grid.frame["_row"])) if colour else ["all"]
    thresholds = {}
    if colour is not None and colour.name == "max_grad_norm" and not colour.is_case:
        modes = set(trials["clip_mode"]) if "clip_mode" in trials else {"global_norm"}
        if modes == {"global_norm"}:  # a norm threshold is comparable with the global norm only
            thresholds = {format_value(v): float(v) for v in trials["max_grad_norm"].unique() if math.isfinite(v)}
    numeric_x = colour is not None and not colour.is_case and pd.api.types.is_numeric_dtype(comparison[colour.keys[0]])
    return plots.PlotData(
        grid_mean=grid.grid("best_valid_ppl_mean"),
        grid_low=grid.grid("best_valid_ppl_ci95_low"),
        grid_high=grid.grid("best_valid_ppl_ci95_high"),
        grid_diverged=grid.grid("n_diverged"),
        grid_trials=grid.grid("n_trials"),
        row_title=grid.row_title or "setting",
        column_title=grid.column_title,
        study=experiment.study.get("space") or Path(experiment.location.root).name,
        epochs=lines,
        colour_title=colour.name if colour else "",
        colour_order=colour_order,
        panel_order=grid.column_order() if panels else [""],
        panel_title=", ".join(f.name for f in panels),
        thresholds=thresholds,
        test=grid.frame.assign(x=grid.frame[colour.keys[0]] if numeric_x else grid.frame["_row"]),
        colour_numeric=numeric_x,
    )


def print_provenance(target: str) -> None:
    """Print the provenance of a report table (a .parquet file, or trials.parquet of a folder)."""
    table = target if split_location(target)[1].endswith(".parquet") else child_location(target, TRIALS)
    try:
        fs, path = filesystem_and_path(table)
        found = fs.get_file_info(path).type == pafs.FileType.File
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UsageError(f"{table}: cannot open ({str(error).splitlines()[0]})") from None
    if not found:
        raise UsageError(f"{table}: no such table, expected a report table: run `python -m study.report {target}` first")
    try:
        prov = read_provenance(path, filesystem=fs)
    except (pa.ArrowException, OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{table}: not a readable Parquet table ({str(error).splitlines()[0]})") from None
    if not prov:
        raise UsageError(f"{table}: the table carries no provenance, expected a table written by study.report")
    print(format_provenance(prov))


def format_provenance(prov: dict[str, Any]) -> str:
    lines = []
    for key, value in prov.items():
        if key == "space_text":
            continue
        if isinstance(value, dict) and any(len(str(v)) > 20 for v in value.values()):
            lines.append(f"{key}:")
            lines.extend(f"    {k}  {v}" for k, v in value.items())
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"{key}: {value}")
    if prov.get("space_text"):
        lines.append("space file:")
        lines.extend("    " + line for line in prov["space_text"].rstrip("\n").splitlines())
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.report", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="the experiment folder, <storage>/<study> (a path or a URI such as s3://bucket/results/grad_clip)")
    parser.add_argument("--provenance", action="store_true", help="print the provenance stored in the report's tables instead of refreshing them")
    parser.add_argument("--quiet", action="store_true", help="print nothing when the report is written")
    return parser.parse_args(argv)


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.provenance:
        print_provenance(args.experiment)
    else:
        write_report(args.experiment, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
