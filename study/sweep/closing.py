"""The lines a sweep ends with, and its exit status: the trials' summary, what an interruption
kept and dropped, and how to go on.

    python -m study.sweep smoke --data-dir ../shared/data/ptb     # prints them when it ends

Exit status: 0 when every trial finished (completed, stopped by ASHA or diverged), also for a
resumed sweep that had nothing left to run; 1 when a trial ended in error after its retries, no
trial finished an epoch, or the report failed; 130 (SIGINT) or 143 (SIGTERM) when stopped; 2 is
bad input only, refused before anything started.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ray import tune

from study import metrics as m
from study.redact import redact
from study.sweep.estimate import format_duration

if TYPE_CHECKING:
    from study.sweep.progress import SweepProgress
    from study.sweep.tuner import SweepOptions, SweepResult


def exit_code(outcome: SweepResult) -> int:
    """1 when a trial ended in error after its retries, no trial finished an epoch, or the report's
    plots or summary failed; else 0."""
    results = outcome.results
    failed = any(result.error for result in results) or outcome.report_failure
    return 1 if failed or not any(result.metrics for result in results) else 0


def exception_line(error: BaseException) -> str:
    """The last line of an exception (a trial's error): for a StateError, the refusal naming the checkpoint."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def latest_error(trial) -> str:
    """The last line of the trial's latest error, from the error.txt Ray keeps in its local folder
    (text: its pickled twin is never loaded); the traceback stays there."""
    path = trial.error_file
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1]) if lines else "no error text kept"


def finished_status(trial) -> str:
    """The status (study.metrics.STATUSES) of a trial that Tune has finished, as the report will name it."""
    last = trial.last_result or {}
    if trial.status == "ERROR":
        return m.ERROR
    if last.get(m.DIVERGED):
        return m.DIVERGED
    return m.COMPLETED if m.TEST_PPL in last else m.STOPPED_EARLY


def closing_summary(options: SweepOptions, results: tune.ResultGrid, resume_with: str | None = None) -> str:
    """The lines printed when the sweep ends: errors and where the results are. The best setting is
    the report's to name (printed just before, in its labels, ranked as its tables rank settings)."""
    errored = [result for result in results if result.error]
    lines = [f"{len(results)} trials, {len(errored)} errored" + ("." if not errored else " after their retries:")]
    lines += [f"  {Path(result.path).name}: {exception_line(result.error)}" for result in errored]
    if errored and resume_with:
        lines.append(f"Once the cause is fixed, retry them from their last checkpoints: {resume_with}")
    if results and not any(result.metrics for result in results):
        lines.append("No trial finished an epoch: there is nothing to compare.")
    lines.append(
        f"Tables and summary: {options.experiment} (trials.parquet, epochs.parquet, comparison.parquet, summary.md)"
    )
    lines.append(f"TensorBoard: tensorboard --logdir {options.experiment}")
    return "\n".join(lines)


def interruption_lines(view: SweepProgress, experiment: str, resume: str) -> list[str]:
    """What an interrupted sweep kept and dropped, from the progress `view`, and the command that resumes it."""
    now = view.ended if view.ended is not None else view.clock()
    inside = [trial for trial in view.views.values() if trial.state == m.RUNNING]
    per_epoch = sum(view.epoch_seconds) / len(view.epoch_seconds) if view.epoch_seconds else view.seconds_per_epoch
    lost = []
    for trial in inside:
        fraction = trial.fraction or (min((now - trial.started) / per_epoch, 1.0) if per_epoch else 0.0)
        lost.append(f"{fraction:.1f}" if fraction >= 0.05 else "under 0.1")
    unstarted = view.total_trials - len(inside) - view.counts()["done"]
    trained = sum(trial.epochs > 0 for trial in view.views.values())
    lines = [
        f"Interrupted. Kept: {view.done_epochs} finished trial-epochs of {trained} trial{'s' * (trained != 1)}, "
        f"each trial's last finished epoch as its checkpoint in {experiment}.",
    ]
    if inside:
        wasted = format_duration(sum(now - trial.started for trial in inside)).removeprefix("about ")
        were = "trial was" if len(inside) == 1 else "trials were"
        lines.append(
            f"Dropped: {len(inside)} {were} inside an epoch: {' and '.join(lost) if len(lost) < 3 else ', '.join(lost)} "
            f"of an epoch lost ({wasted} of training); resuming reruns {'it' if len(inside) == 1 else 'them'} from the last checkpoint."
        )
    else:
        lines.append("Dropped: nothing; no trial was inside an epoch.")
    if unstarted > 0:
        lines.append(f"{unstarted} trial{'s have' if unstarted != 1 else ' has'} not started.")
    lines.append(f"Resume: {resume}")
    return lines
