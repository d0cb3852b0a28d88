"""The progress board: trials send their progress points to a small named Ray actor, fire and
forget, and the driver's view (study/sweep/progress.py) polls it; works on every node of a cluster.
Also what keeps Ray's own console output out of the compact view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ray

from study.train import EpochProgress

BOARD = "study-progress"  # the board actor's name in the sweep's Ray namespace

# Ray's messages that the compact view replaces or that say nothing to act on (logger -> message
# starts): its interruption note names Tuner.restore (the closing lines give the sweep's own command);
# the result grid complains about trials an interruption left unstarted; a local Ray announces the
# token it turns on by itself (the README says what it guards); and tensorboardX warns at every
# trial's end when Ray's TensorBoard logger writes max_grad_norm=inf (no clipping) as an hparam, and
# at every diverged epoch's valid_ppl=inf: infinities that are results and settings of the study.
_RAY_NOISE = {
    "ray.tune.tune": ("Experiment has been interrupted",),
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    "tensorboardX.x2num": ("NaN or Inf found in input tensor",),
}


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest progress point of every trial: {trial_id: (epoch, fraction, words_per_sec)}."""

    def __init__(self):
        self.latest: dict[str, tuple[int, float, float]] = {}

    def update(self, trial_id: str, epoch: int, fraction: float, words_per_sec: float) -> None:
        self.latest[trial_id] = (epoch, fraction, words_per_sec)

    def snapshot(self) -> dict[str, tuple[int, float, float]]:
        return dict(self.latest)


def start_board() -> Any:
    """The board of this driver's sweeps (an existing one is reused: trial ids never repeat)."""
    return ProgressBoard.options(name=BOARD, get_if_exists=True).remote()


def progress_sender(trial_id: str) -> Callable[[EpochProgress], None] | None:
    """A `Trainer` progress callback that sends to the board, fire and forget; None without a board."""
    try:
        board = ray.get_actor(BOARD)
    except ValueError:  # a sweep without a display (a test driving the trainable alone)
        return None

    def send(progress: EpochProgress) -> None:
        board.update.remote(trial_id, progress.epoch, progress.fraction, progress.words_per_sec)

    return send


def quiet_ray() -> None:
    """Silence Ray Tune's own console output, for the compact view. Ray 2.60: the legacy output
    engine (RAY_AIR_NEW_OUTPUT=0) at RunConfig(verbose=0) prints no tables, where the new one
    still prints its configuration box; the snapshot warning repeats every few seconds otherwise."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    # A trial's failure is a traceback on the console otherwise; the view says its last line, and
    # the traceback stays in the trial's error.txt.
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    for name, starts in _RAY_NOISE.items():
        logging.getLogger(name).addFilter(lambda record, starts=starts: not record.getMessage().startswith(starts))
