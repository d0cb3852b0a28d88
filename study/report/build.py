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

study.report.reader reads the trials from the JSON and CSV text Ray writes and never unpickles
anything (a folder someone else wrote is safe to report on), so no Ray needs to run;
study.report.summary writes the text of summary.md and study.report.plots the pictures. Every file
is written under a temporary name and renamed into place: a crash leaves the previous report whole.

How the numbers are made (also stated in summary.md):
- Status: one of study.metrics.STATUSES (`completed`, `stopped_early`, `diverged`, `error`,
  `running`, `pending`; summary.md says what each means, its Errors section why a trial failed).
- Perplexity statistics of a setting are over its `completed` and `stopped_early` trials (an
  ASHA-stopped trial counts with the best perplexity it reached); diverged trials are left out
  and counted in `n_diverged`; test perplexity is over `completed` trials only.
- The 95% interval of a setting's mean uses the seed noise of all settings when they share it
  (study.report.anova: Bartlett's test of equal within-setting variances not rejected at 5%, or not
  testable): mean ± t(97.5%, df) x pooled SD / sqrt(n), the pooled within-setting SD and its df
  (trials minus settings, over the settings with two or more trials), so a setting with one trial
  has an interval too. When their seed noise differs, it is Student's t over the setting's own
  trials (n - 1 df), empty (NaN) below two. `<metric>_ci_method` in comparison.parquet says which.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from study import metrics as m
from study.errors import StorageError, main_with_errors
from study.labels import value_label
from study.redact import redact
from study.report import plots
from study.report.collect import Experiment, load_experiment
from study.report.comparison import Pivot, compare, factor_label, pivot, sampled_keys
from study.report.planned import planned_settings
from study.report.provenance import print_provenance, provenance
from study.report.publish import publish, staging
from study.report.summary import Summary, summary
from study.tables import COMPARISON, EPOCHS, SUMMARY, TRIALS, write_table


@dataclass(frozen=True)
class ReportPaths:
    """Where write_report put each file (local paths, or URIs for remote storage)."""

    folder: str
    trials: str
    epochs: str
    comparison: str
    summary: str
    plots: dict[str, str] = field(default_factory=dict)


def write_report(
    experiment_dir: str, *, quiet: bool = False, storage_filesystem: pafs.FileSystem | None = None
) -> ReportPaths:
    """Refresh every report file of the experiment and publish them as a whole (study.report.publish).
    The tables come first: when the plots or the summary fail, the tables are still published with
    a summary.md that says what failed, and ReportFailed is raised after."""
    experiment = load_experiment(experiment_dir, storage_filesystem=storage_filesystem)
    location = experiment.location
    comparison = compare(experiment.placed, experiment.factors)
    grid = pivot(comparison, experiment.factors, planned_settings(experiment.study))
    prov = provenance(experiment)
    failure = None
    with staging(location) as stage:
        for frame, name in ((experiment.trials, TRIALS), (experiment.epochs, EPOCHS), (comparison, COMPARISON)):
            write_table(frame, stage / name, prov)
        try:
            pictures = plots.write_all(stage, _plot_data(experiment, comparison, grid))
            written = summary(experiment, comparison, grid, pictures)
            text = written.text
        except StorageError:  # a full or read-only disk is no failure of the pictures: the report stops
            raise
        except Exception as error:  # any failure of the pictures or the text: the tables stay published
            failure = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
            pictures = {}
            text = f"# {location.show('')}\n\nThe report's plots and summary failed ({failure}); the tables beside this file are current.\n"
        (stage / SUMMARY).write_text(redact(text), encoding="utf-8")
        stale = [name for name in plots.FILES.values() if name not in pictures.values()]
        publish(stage, [TRIALS, EPOCHS, COMPARISON, *pictures.values()], SUMMARY, stale, location)
    paths = ReportPaths(
        folder=location.show("").rstrip("/"),
        trials=location.show(TRIALS),
        epochs=location.show(EPOCHS),
        comparison=location.show(COMPARISON),
        summary=location.show(SUMMARY),
        plots={kind: location.show(name) for kind, name in pictures.items()},
    )
    if failure:
        raise ReportFailed(f"{paths.folder}: the plots and summary failed ({failure}); the tables were written")
    if not quiet:
        print(redact(_console_answer(written)))
        print(redact(f"Report: {paths.summary} (tables {TRIALS}, {EPOCHS}, {COMPARISON}; {len(pictures)} plots)"))
    return paths


class ReportFailed(Exception):
    """The tables were published, the plots or the summary were not."""


def _console_answer(written: Summary) -> str:
    """What the console shows of summary.md: the headline, the answer and the notes on a partial
    or single-seed experiment, without the markdown's bold."""
    return "\n".join([written.headline, written.answer, *written.notes]).replace("**", "")


def _plot_data(experiment: Experiment, comparison: pd.DataFrame, grid: Pivot) -> plots.PlotData:
    """The heatmap shows every setting of the grid, planned ones Ray has not created too; the
    curves and the test plot only the settings that have trials."""
    trials = experiment.placed
    epochs = experiment.epochs[experiment.epochs["trial_id"].isin(trials["trial_id"])]
    created = grid.created
    shown = set(created["_col"])  # the columns of settings with trials: one panel each
    colour = grid.rows  # max_grad_norm where it varies on its own
    panels = grid.columns if len(grid.columns) >= 1 and len(shown) <= 6 else []
    lines = epochs[
        ["trial_id", m.EPOCH, m.VALID_PPL, m.DIVERGED, m.GRAD_NORM_P50, m.GRAD_NORM_P90, m.CLIP_FRACTION]
    ].copy()
    colour_of = {row["trial_id"]: factor_label(colour, row) if colour else "all" for _, row in trials.iterrows()}
    panel_of = {
        row["trial_id"]: ", ".join(factor_label(f, row, bare=len(panels) == 1) for f in panels)
        for _, row in trials.iterrows()
    }
    lines["colour"] = lines["trial_id"].map(colour_of)
    lines["panel"] = lines["trial_id"].map(panel_of)
    lines["status"] = lines["trial_id"].map(dict(zip(trials["trial_id"], trials["status"])))  # curves mark ASHA stops
    colour_order = list(dict.fromkeys(created["_row"])) if colour else ["all"]
    thresholds = {}
    if colour is not None and colour.name == "max_grad_norm" and not colour.is_case:
        modes = set(trials["clip_mode"]) if "clip_mode" in trials else {"global_norm"}
        if modes == {"global_norm"}:  # a norm threshold is comparable with the global norm only
            thresholds = {value_label(v): float(v) for v in trials["max_grad_norm"].unique() if math.isfinite(v)}
    numeric_x = colour is not None and not colour.is_case and pd.api.types.is_numeric_dtype(comparison[colour.keys[0]])
    return plots.PlotData(
        grid_mean=grid.grid("best_valid_ppl_mean"),
        grid_low=grid.grid("best_valid_ppl_ci95_low"),
        grid_high=grid.grid("best_valid_ppl_ci95_high"),
        grid_diverged=grid.grid("n_diverged"),
        grid_trials=grid.grid("n_trials"),
        grid_errors=grid.grid(f"n_{m.ERROR}"),
        row_title=grid.row_title or "setting",
        column_title=grid.column_title,
        study=experiment.study.get("space") or Path(experiment.location.root).name,
        epochs=lines,
        colour_title=colour.name if colour else "",
        colour_order=colour_order,
        panel_order=[c for c in grid.column_order() if c in shown] if panels else [""],
        panel_title=", ".join(f.name for f in panels),
        thresholds=thresholds,
        test=created.assign(x=created[colour.keys[0]] if numeric_x else created["_row"]),
        colour_numeric=numeric_x,
        sampled=colour is not None and bool(set(colour.keys) & sampled_keys(experiment.study)),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.report", allow_abbrev=False, description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "experiment",
        help="the experiment folder, <storage>/<study> (a path or a URI such as s3://bucket/results/grad_clip)",
    )
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="print the provenance stored in the report's tables instead of refreshing them",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing when the report is written")
    return parser.parse_args(argv)


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.provenance:
        print_provenance(args.experiment)
        return 0
    try:
        write_report(args.experiment, quiet=args.quiet)
    except ReportFailed as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 1
    return 0
