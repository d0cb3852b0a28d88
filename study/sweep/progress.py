"""Live progress of a sweep: each running trial inside its epoch, the study's epochs and time left.

    python -m study.sweep smoke --data-dir ../shared/data/ptb      # shows it; --verbose: Ray's own output

Trials send `(trial_id, epoch, fraction, words_per_sec)` at their progress points (9 per epoch) to
a small named Ray actor, the board, without waiting for an answer; this works on every node of a
cluster. The driver's `SweepProgress`, a `tune.Callback`, polls the board without blocking Tune's
loop and draws one line per running trial and a study line with `rich`; on a terminal that is a
live view, elsewhere (CI, `ray job submit` logs) plain lines: one per finished epoch or trial and a
status line every two minutes. The time left is re-fitted as epochs finish: the trial-epochs still
expected (ASHA's expectation from where each trial stands) x the mean seconds of the epochs seen
(the plan's calibration until then) / the trials run at once.

At Ctrl-C the view says at once, in a line of its own above the view, that the sweep is stopping
(Ray's own warning would land inside the live line); after it, `interruption_lines` says what the
checkpoints keep, what unfinished epochs were dropped, and the command that resumes the sweep.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from study import metrics as m
from study.config import flatten_cases
from study.labels import setting_label
from study.redact import redact
from study.report import ppl_text
from study.sweep.closing import finished_status, interruption_lines, latest_error
from study.sweep.estimate import Calibration, brackets, expected_epochs, format_duration
from study.sweep.prefix import PREFIX_REFUSED
from study.sweep.spaces import Space, trial_config

POLL_SECONDS = 1.0  # how often the driver asks the board
REFRESH_SECONDS = 0.5  # live view redraws at most this often
LINE_SECONDS = 120.0  # plain output: a status line this often
BAR_WIDTH = 12  # characters
STOP_SIGNAL = ("ray.tune.tune", "Stop signal received")  # Ray Tune's logger and its warning at Ctrl-C
STOPPING = (
    "Stopping ({how}): Ray ends the trials and saves the sweep's state one last time, then the report is "
    "written; wait for the closing lines (a second {how} skips that save)."
)


def trial_label(config: dict[str, Any], space: Space, keys: list[str] | None = None) -> str:
    """A trial's setting as the report labels it (study.labels): its `keys` (default: the space's
    varied keys), a cases group as one case: 'max_grad_norm=none, lr_decay=0.5, seed=0'."""
    run = trial_config(config, space.preset).model_dump()
    return setting_label(run, space.varied_keys() if keys is None else keys, flatten_cases(config)[1])


@dataclass
class TrialView:
    label: str  # the trial's varied settings
    state: str = m.PENDING  # a status of study.metrics: pending, running, then one of FINISHED
    epochs: int = 0  # epochs finished
    shared: int = 0  # of them, taken from a shared prefix (trained by another trial)
    started: float = 0.0  # clock when its current epoch began
    fraction: float = 0.0  # of the current epoch, from the board
    words_per_sec: float = 0.0

    def restore(self, last: dict[str, Any]) -> None:
        """Its epochs from its last report alone (a resumed sweep's): a fork's says how many it took."""
        self.epochs = last.get(m.EPOCH, 0)
        self.shared = self.epochs if last.get(m.SHARED_PREFIX) else last.get(m.SHARED_EPOCHS, 0)


class SweepProgress(tune.Callback):
    """Tracks a sweep's trials from Tune's events and the board; draws them (mode "live" or
    "lines") or only keeps count (mode "quiet", under --verbose) for the closing lines."""

    def __init__(
        self,
        total_trials: int,
        epochs: int,
        brackets: list[tuple[float, tuple[int, ...]]],  # estimate.brackets: (share, rungs)
        reduction_factor: float,
        seconds_per_epoch: float | None = None,  # the plan's calibration
        shared_epochs_saved: int = 0,  # trial-epochs the sweep takes from shared prefixes (study.sweep.prefix.epochs_saved)
        concurrency: int | None = None,
        label: Callable[[dict[str, Any]], str] = lambda config: "",
        board: Any = None,
        mode: str = "live",
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_trials, self.epochs, self.brackets, self.rf = total_trials, epochs, brackets, reduction_factor
        self.seconds_per_epoch, self.concurrency, self.label, self.board = seconds_per_epoch, concurrency, label, board
        self.shared_epochs_saved = shared_epochs_saved
        self.mode, self.clock = mode, clock
        self.console = console or Console()
        self.views: dict[str, TrialView] = {}
        self.epoch_seconds: list[float] = []  # of the epochs finished in this session
        self.trials_started = 0  # by Tune in this session (a resumed sweep that had finished starts none)
        self.began = self.ended = None
        self.stopping = False  # Ctrl-C: Ray is ending the trials
        self._live: Live | None = None
        self._asked: Any = None  # the board's answer under way
        self._last_poll = self._last_draw = self._last_line = -1e9

    @classmethod
    def for_sweep(
        cls,
        space: Space,
        epochs: int,
        num_samples: int,
        timing: Calibration | str | None,
        concurrency: int | None,
        board: Any,
        verbose: bool = False,
        console: Console | None = None,
        shared_epochs_saved: int = 0,
    ) -> SweepProgress:
        """The view of a sweep of `space`: live on a terminal, plain lines elsewhere, silent under --verbose."""
        console = console or Console()
        varied = space.varied_keys()
        return cls(
            total_trials=space.trial_count(num_samples),
            epochs=epochs,
            brackets=brackets(space, epochs),
            reduction_factor=space.scheduler.reduction_factor,
            seconds_per_epoch=timing.seconds_per_epoch if isinstance(timing, Calibration) else None,
            shared_epochs_saved=shared_epochs_saved,
            concurrency=concurrency,
            label=lambda config: trial_label(config, space, varied),
            board=board,
            mode="quiet" if verbose else "live" if console.is_terminal else "lines",
            console=console,
        )

    def __reduce__(self):
        # Ray keeps the RunConfig, callbacks included, in tuner.pkl; a display belongs to one process.
        return (tune.Callback, ())

    # Tune's events

    def setup(self, **info) -> None:
        self.began = self.clock()
        if self.mode == "live":
            self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        if self.mode != "quiet":  # under --verbose, Ray's own warning says it
            logging.getLogger(STOP_SIGNAL[0]).addFilter(self._take_stop_signal)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        for trial in trials:
            if trial.trial_id not in self.views:  # first sight; a resumed sweep's finished trials are done already
                view = self._view(trial)
                if trial.status in ("TERMINATED", "ERROR"):
                    view.state = finished_status(trial)
                view.restore(trial.last_result or {})
        self._poll()
        self._draw()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        view = self._view(trial)
        view.state, view.started, view.fraction = m.RUNNING, self.clock(), 0.0
        self.trials_started += 1
        view.epochs = (trial.last_result or {}).get(m.EPOCH, view.epochs)
        self._draw(force=True)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        view = self._view(trial)
        view.epochs, view.started, view.fraction = result.get(m.EPOCH, view.epochs + 1), self.clock(), 0.0
        if result.get(PREFIX_REFUSED):  # said on the console in every mode: Ray's worker logs are not shown
            text = f"{view.label}: {result[PREFIX_REFUSED]}"
            if self.mode == "quiet":
                self._print(text)
            else:
                self._say(text)
        if result.get(m.SHARED_PREFIX):  # trained once by another trial: neither work done here nor a timing
            view.shared += 1
            self._say(
                f"{view.label}: epoch {view.epochs}/{self.epochs} from its shared prefix, {m.VALID_PPL} {ppl_text(result.get(m.VALID_PPL, math.nan), 2)}"
            )
            return
        if m.EPOCH_SECONDS in result:
            self.epoch_seconds.append(result[m.EPOCH_SECONDS])
        self._say(
            f"{view.label}: epoch {view.epochs}/{self.epochs}, {m.VALID_PPL} {ppl_text(result.get(m.VALID_PPL, math.nan), 2)}, {result.get(m.EPOCH_SECONDS, 0):.0f} s"
        )
        self._draw(force=True)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        view = self._view(trial)
        view.state = finished_status(trial)
        how = (
            f"diverged at epoch {view.epochs}"
            if view.state == m.DIVERGED
            else f"finished, {m.TEST_PPL} {ppl_text(trial.last_result[m.TEST_PPL], 2)}"
            if view.state == m.COMPLETED
            else f"stopped by ASHA after epoch {view.epochs}"
        )
        self._say(f"{view.label}: {how}")
        self._draw(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._view(trial).state = m.ERROR
        self._say(
            f"{self._view(trial).label}: error after its retries ({latest_error(trial)}), see {redact(trial.path)}"
        )
        self._draw(force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._view(trial).state = m.PENDING  # its worker died or it raised; Tune restarts it from its checkpoint
        self._say(f"{self._view(trial).label}: failed ({latest_error(trial)}); retrying from its last checkpoint")

    def on_experiment_end(self, trials: list, **info) -> None:
        self.ended = self.clock()
        if not self.views and not self.stopping:  # a resumed sweep that had finished: Tune took no step
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._view(trial).state = finished_status(trial)
                    self._view(trial).restore(trial.last_result or {})
        if not self.stopping:
            self._poll(wait=True)
        self.close()

    def close(self) -> None:
        """Stop the live view, leaving its last frame on the screen."""
        logging.getLogger(STOP_SIGNAL[0]).removeFilter(self._take_stop_signal)
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None

    def stop_requested(self, signal_name: str = "SIGINT") -> None:
        """Say at once, in a line above the view, that the sweep is stopping and what it waits for,
        and stop promising a time left. Once per sweep, whoever tells first (a stop handler, or
        Ray Tune's own warning through `_take_stop_signal`)."""
        if self.stopping:
            return
        self.stopping = True
        self._say(STOPPING.format(how="Ctrl-C" if signal_name == "SIGINT" else signal_name))
        self._draw(force=True)

    def _take_stop_signal(self, record: logging.LogRecord) -> bool:
        """A filter on Ray Tune's logger: its stop warning would print inside the live line."""
        if not record.getMessage().startswith(STOP_SIGNAL[1]):
            return True
        self.stop_requested()
        return False

    # What it shows

    @property
    def done_epochs(self) -> int:
        """Trial-epochs trained so far: a shared prefix's epochs count once, for the trial that trained them."""
        return sum(view.epochs - view.shared for view in self.views.values())

    def counts(self) -> dict[str, int]:
        states = [view.state for view in self.views.values()]
        running, done = states.count(m.RUNNING), sum(state in m.FINISHED for state in states)
        return {"running": running, "done": done, "waiting": self.total_trials - running - done}

    def expected_total(self) -> float:
        """Trial-epochs trained plus those still expected to be, re-fitted from where each trial stands;
        less the epochs that shared prefixes save (as the plan counts them)."""
        per_trial = lambda done: sum(
            share * expected_epochs(rungs, self.rf, self.epochs, done) for share, rungs in self.brackets
        )
        unseen = self.total_trials - len(self.views)
        reported = unseen * per_trial(0) + sum(
            view.epochs if view.state in m.FINISHED else per_trial(view.epochs) for view in self.views.values()
        )
        return reported - self.shared_epochs_saved

    def seconds_left(self) -> float | None:
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else self.seconds_per_epoch
        if not per_epoch:
            return None
        running = sum(view.fraction for view in self.views.values() if view.state == m.RUNNING)
        left = max(self.expected_total() - self.done_epochs - running, 0.0)
        unfinished = self.total_trials - self.counts()["done"]
        at_once = max(1, min(self.concurrency or self.counts()["running"] or 1, unfinished))
        return left * per_epoch / at_once

    def study_text(self) -> str:
        counts, seconds = self.counts(), self.seconds_left()
        elapsed = format_duration(self.clock() - self.began).removeprefix("about ") if self.began is not None else "0 s"
        left = (
            f", {format_duration(seconds)} left" if seconds is not None and counts["done"] < self.total_trials else ""
        )
        return (
            f"{self.done_epochs}/~{self.expected_total():.0f} trial-epochs | {counts['running']} running, "
            f"{counts['done']} done, {counts['waiting']} waiting | {elapsed} in"
            + (", stopping" if self.stopping else left)
        )

    def trial_text(self, view: TrialView) -> str:
        inside = f"{view.fraction:.0%} of epoch {view.epochs + 1}/{self.epochs}"
        if not view.fraction:
            inside = f"epoch {view.epochs + 1}/{self.epochs}, begun {self.clock() - view.started:.0f} s ago"
        return inside + (f", {view.words_per_sec:,.0f} words/s" if view.words_per_sec else "")

    def render(self) -> Group:
        """The compact view: a study line, then one line per running trial."""
        study = Table.grid(padding=(0, 1))
        study.add_column(width=BAR_WIDTH)
        study.add_column()  # may wrap on a narrow terminal
        study.add_row(
            ProgressBar(total=max(self.expected_total(), 1), completed=self.done_epochs, width=BAR_WIDTH),
            self.study_text(),
        )
        trials = Table.grid(padding=(0, 1))
        trials.add_column(width=BAR_WIDTH)
        trials.add_column(no_wrap=True, overflow="ellipsis")  # one line per trial, cut on a narrow terminal
        for view in self.views.values():
            if view.state == m.RUNNING:
                trials.add_row(
                    ProgressBar(total=1.0, completed=view.fraction, width=BAR_WIDTH),
                    f"{view.label}: {self.trial_text(view)}",
                )
        return Group(study, trials)

    def interruption_lines(self, experiment: str, resume: str) -> list[str]:
        """What an interrupted sweep kept and dropped, and the command that resumes it (study/sweep/closing.py)."""
        return interruption_lines(self, experiment, resume)

    @property
    def interrupted(self) -> bool:
        """Whether the sweep ended with trials neither finished nor errored (Ctrl-C, SIGUSR1)."""
        return self.counts()["done"] < self.total_trials

    # Internals

    def _view(self, trial) -> TrialView:
        if trial.trial_id not in self.views:
            try:
                label = self.label(trial.config) or trial.trial_id
            except Exception:  # a config the label cannot read: the id still names the trial
                label = trial.trial_id
            self.views[trial.trial_id] = TrialView(label)
        return self.views[trial.trial_id]

    def _poll(self, wait: bool = False) -> None:
        """Take the board's answer if it has come (or wait for it), and ask again."""
        if self.board is None:
            return
        if self._asked is None and (wait or self.clock() - self._last_poll >= POLL_SECONDS):
            self._asked, self._last_poll = self.board.snapshot.remote(), self.clock()
        if self._asked is None:
            return
        ready, _ = ray.wait([self._asked], timeout=5 if wait else 0)
        if not ready:
            return
        try:
            latest = ray.get(ready[0])
        except ray.exceptions.RayError:  # the board died: keep going without intra-epoch progress
            latest = {}
        self._asked = None
        self.apply(latest)

    def apply(self, latest: dict[str, tuple[int, float, float]]) -> None:
        """Take the board's progress points of the running trials' current epochs."""
        for trial_id, (epoch, fraction, words_per_sec) in latest.items():
            view = self.views.get(trial_id)
            if view is not None and view.state == m.RUNNING and epoch == view.epochs + 1:
                view.fraction, view.words_per_sec = fraction, words_per_sec

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if self._live is not None and (force or now - self._last_draw >= REFRESH_SECONDS):
            self._live.update(self.render(), refresh=True)
            self._last_draw = now
        if self.mode == "lines" and now - self._last_line >= LINE_SECONDS and self.counts()["running"]:
            running = "; ".join(
                f"{view.label}: {self.trial_text(view)}" for view in self.views.values() if view.state == m.RUNNING
            )
            self._print(f"{self.study_text()} | {running}")
            self._last_line = now

    def _say(self, text: str) -> None:
        """An event line (epoch or trial finished): above the live view, or a plain line."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        elif self.mode == "lines":
            self._print(text)

    def _print(self, text: str) -> None:
        print(text, file=self.console.file, flush=True)
