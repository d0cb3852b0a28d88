"""The live progress view: counts and time left from fake Tune events, the board actor on a real
Ray, the closing lines of an interrupted sweep, and Ctrl-C on a real sweep."""

import io
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import ray
from ray import tune
from rich.console import Console
from tensorboardX.summary import hparams

from study import metrics as m
from study.sweep.board import progress_sender, quiet_ray, start_board
from study.sweep.cli import closing_summary, options_from_args, parse_args, resume_command
from study.sweep.progress import LINE_SECONDS, SweepProgress, trial_label
from study.sweep.space_file import load_space
from study.train.trainer import EpochProgress

from helpers import sweep_args


@pytest.fixture(autouse=True)
def ray_tune_logger_as_it_was():
    """A view adds a filter to Ray Tune's logger until it is closed; most tests here leave theirs open."""
    logger = logging.getLogger("ray.tune.tune")
    before = list(logger.filters)
    yield
    logger.filters[:] = before


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, max_grad_norm: float, status: str = "PENDING", epoch: int | None = None):
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        config={"max_grad_norm": max_grad_norm, "lr_decay": 0.5, "seed": 0},
        last_result={} if epoch is None else {m.EPOCH: epoch},
        path=f"/results/{trial_id}",
        error_file=None,  # Ray's error.txt in the trial's local folder, once it has failed
    )


def tracker(mode: str, clock: Clock, **kwargs) -> tuple[SweepProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=150, force_terminal=mode == "live", color_system=None)
    options = dict(
        total_trials=4, epochs=4, brackets=[(1.0, (2,))], reduction_factor=2, seconds_per_epoch=50.0, concurrency=2
    )
    options.update(kwargs)
    space = load_space("grad_clip")
    label = SweepProgress.for_sweep(space, 13, 1, None, None, None, console=console).label
    view = SweepProgress(**options, label=label, mode=mode, console=console, clock=clock)
    view.setup()
    return view, out


def epoch_result(epoch: int, seconds: float = 100.0) -> dict:
    return {m.EPOCH: epoch, m.VALID_PPL: 150.0 - epoch, m.EPOCH_SECONDS: seconds}


def test_view_shows_running_trials_inside_their_epoch_and_the_study_counts():
    clock = Clock()
    view, _ = tracker("quiet", clock)
    a, b = trial("a", 0.25), trial("b", 5.0)
    view.on_step_begin(0, [a, b])
    for t in (a, b):
        view.on_trial_start(0, [a, b], t)
    view.on_trial_result(0, [a, b], a, epoch_result(1))
    view.apply({"a": (2, 0.4, 3500.0), "b": (1, 0.7, 3400.0), "gone": (1, 0.5, 1.0)})
    clock.now += 30
    text = render(view)
    assert "max_grad_norm=0.25, lr_decay=0.5, seed=0" in text and "40% of epoch 2/4, 3,500 words/s" in text
    assert "70% of epoch 1/4, 3,400 words/s" in text
    # Expected: 4 trials x (2 + 2/2) epochs = 12; 1 done; 2 running, none finished, 2 never seen.
    assert "1/~12 trial-epochs | 2 running, 0 done, 2 waiting | 30 s in" in text
    # Left: 12 - 1 done - 1.1 under way = 9.9 trial-epochs x 100 s (the observed epoch, not the plan's 50) / 2 at once.
    assert view.seconds_left() == pytest.approx(9.9 * 100 / 2)


def render(view: SweepProgress) -> str:
    console = Console(file=io.StringIO(), width=150, color_system=None)
    console.print(view.render())
    return console.file.getvalue()


def test_time_left_is_refitted_as_asha_stops_trials():
    clock = Clock()
    view, _ = tracker("quiet", clock, total_trials=2)
    a, b = trial("a", 1.0), trial("b", 2.0)
    for t in (a, b):
        view.on_trial_start(0, [a, b], t)
        for epoch in (1, 2):
            view.on_trial_result(0, [a, b], t, epoch_result(epoch, seconds=60))
    assert view.expected_total() == pytest.approx(8)  # still running after the rung at 2: both go on to 4
    b.last_result = {m.EPOCH: 2}
    view.on_trial_complete(0, [a, b], b)  # ASHA stopped b at its rung
    assert view.expected_total() == pytest.approx(4 + 2)  # a runs its last 2 epochs (past its only rung)
    assert view.seconds_left() == pytest.approx(2 * 60 / 1)  # one trial left: one at a time
    assert view.interrupted


def test_plain_output_has_no_control_codes_and_a_modest_rate():
    clock = Clock()
    view, out = tracker("lines", clock)
    a = trial("a", 0.5)
    view.on_trial_start(0, [a], a)  # the first status line comes at once
    for second in range(1, 100):  # Tune's loop steps many times a second; no new line within LINE_SECONDS
        clock.now += 1
        view.on_step_begin(second, [a])
    view.on_trial_result(0, [a], a, epoch_result(1))
    clock.now += LINE_SECONDS
    view.on_step_begin(200, [a])
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert len(lines) == 3, lines
    assert (
        lines[0].startswith("0/~12 trial-epochs | 1 running")
        and "max_grad_norm=0.5, lr_decay=0.5, seed=0: epoch 1/4" in lines[0]
    )
    assert lines[1] == "max_grad_norm=0.5, lr_decay=0.5, seed=0: epoch 1/4, valid_ppl 149.00, 100 s"
    assert lines[2].startswith("1/~12 trial-epochs")


def test_a_perplexity_too_large_for_a_line_is_written_in_three_digits():
    """The grad_clip run's unclipped trials reach 2.8e+97 without diverging (finite): a line, not a screen."""
    view, out = tracker("lines", Clock())
    a = trial("a", 0.5)
    view.on_trial_start(0, [a], a)
    view.on_trial_result(0, [a], a, {**epoch_result(3), m.VALID_PPL: 2.7704227566597833e97})
    assert (
        "max_grad_norm=0.5, lr_decay=0.5, seed=0: epoch 3/4, valid_ppl 2.77e+97, 100 s" in out.getvalue().splitlines()
    )


def test_live_view_draws_on_a_terminal_and_leaves_its_last_frame():
    clock = Clock()
    view, out = tracker("live", clock)
    a = trial("a", 20.0)
    view.on_trial_start(0, [a], a)
    view.on_trial_result(0, [a], a, epoch_result(1))
    view.on_experiment_end([a])
    text = out.getvalue()
    assert "max_grad_norm=20, lr_decay=0.5, seed=0: epoch 1/4, valid_ppl 149.00, 100 s" in text
    assert "1/~12 trial-epochs" in text and "\x1b[" in text  # redrawn in place


def test_a_resumed_sweep_counts_the_trials_finished_before():
    clock = Clock()
    view, _ = tracker("quiet", clock, total_trials=2)
    done, waiting = trial("a", 1.0, status="TERMINATED", epoch=4), trial("b", 2.0, epoch=2)
    view.on_step_begin(0, [done, waiting])
    assert view.done_epochs == 6 and view.counts() == {"running": 0, "done": 1, "waiting": 1}
    view.on_trial_start(0, [done, waiting], waiting)
    assert view.views["b"].epochs == 2 and view.interrupted
    waiting.last_result = {m.EPOCH: 4, m.TEST_PPL: 120.0}
    view.on_trial_complete(0, [done, waiting], waiting)
    assert not view.interrupted


def test_a_resumed_sweep_counts_the_epochs_its_forks_took_from_a_prefix_as_shared():
    """Only a trial's last report reaches a resumed driver: a fork's says how many of its epochs it
    took from its shared prefix, which its leader trained and the count already has."""
    view, _ = tracker("quiet", Clock(), total_trials=3)
    leader, fork, forking = trial("a", 1.0, epoch=6), trial("b", 1.0, epoch=7), trial("c", 1.0, epoch=4)
    fork.last_result[m.SHARED_EPOCHS] = 4
    forking.last_result[m.SHARED_PREFIX] = True  # stopped right after taking its prefix
    view.on_step_begin(0, [leader, fork, forking])
    assert [(view.views[t].epochs, view.views[t].shared) for t in "abc"] == [(6, 0), (7, 4), (4, 4)]
    assert view.done_epochs == 6 + 3


def test_trials_are_labelled_as_the_report_labels_their_settings():
    grad_clip, clip_modes = load_space("grad_clip"), load_space("clip_modes")
    assert (
        trial_label({"max_grad_norm": math.inf, "lr_decay": 1.0, "seed": 1}, grad_clip)
        == "max_grad_norm=none, lr_decay=1, seed=1"
    )
    case = {"clip_mode": "none", "max_grad_norm": 5.0, "clip_percentile": 10.0}  # as Ray resolves a cases group
    assert (
        trial_label({"clip": case, "seed": 0}, clip_modes) == "none, seed=0"
    )  # no clipping: its threshold means nothing
    case = {"clip_mode": "per_tensor_norm", "max_grad_norm": 3.5, "clip_percentile": 10.0}
    assert trial_label(
        {"clip": case, "seed": 0}, clip_modes, keys=["clip_mode", "max_grad_norm", "clip_percentile"]
    ) == ("per_tensor_norm (max_grad_norm=3.5)")


def test_finished_trials_get_the_status_the_report_gives_them():
    view, _ = tracker("quiet", Clock())
    done, stopped, diverged, failed = (trial(name, 1.0) for name in "abcd")
    done.last_result = {m.EPOCH: 4, m.TEST_PPL: 120.0}
    stopped.last_result = {m.EPOCH: 2}
    diverged.last_result = {m.EPOCH: 1, m.DIVERGED: True}
    for t in (done, stopped, diverged):
        view.on_trial_complete(0, [], t)
    view.on_trial_error(0, [], failed)
    states = {trial_id: v.state for trial_id, v in view.views.items()}
    assert states == {"a": m.COMPLETED, "b": m.STOPPED_EARLY, "c": m.DIVERGED, "d": m.ERROR}
    assert set(states.values()) <= set(m.STATUSES) and view.counts()["done"] == 4 and not view.interrupted


def test_a_failed_trial_is_its_errors_last_line_not_rays_traceback(tmp_path):
    """Ray's own traceback per failure is off in the compact view (study/sweep/board.py); the view
    says the last line of the trial's error.txt when Tune retries it and when it gives up."""
    view, out = tracker("lines", Clock())
    failing = trial("a", 1.0, status="RUNNING", epoch=2)
    failing.error_file = str(tmp_path / "error.txt")
    (tmp_path / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-12-02_14-00-00)\nTraceback (most recent call last):\n  File ...\n"
        "study.errors.StorageError: /mnt/s3://KEY:SECRET@bucket/x: checkpoint of epoch 3 not written (no space left on the device)\n"
    )
    view.on_trial_recover(0, [], failing)
    view.on_trial_error(0, [], failing)
    lines = [line for line in out.getvalue().splitlines() if "max_grad_norm=1" in line]
    cause = "(study.errors.StorageError: /mnt/s3://***@bucket/x: checkpoint of epoch 3 not written (no space left on the device))"
    assert lines[0].endswith(f": failed {cause}; retrying from its last checkpoint"), lines
    assert lines[1].endswith(f": error after its retries {cause}, see /results/a"), lines
    assert "Traceback" not in out.getvalue() and "SECRET" not in out.getvalue()


def test_interrupted_sweep_says_what_is_kept_and_lost_and_how_to_resume(tmp_path):
    clock = Clock()
    view, _ = tracker("quiet", clock)
    a, b, c = trial("a", 0.25), trial("b", 0.5), trial("c", 1.0)
    for t in (a, b, c):
        view.on_trial_start(0, [a, b, c], t)
    view.on_trial_result(0, [a, b, c], a, epoch_result(1))
    view.on_trial_result(0, [a, b, c], a, epoch_result(2))
    view.on_trial_result(0, [a, b, c], b, epoch_result(1))
    view.on_trial_complete(0, [a, b, c], a)
    view.apply({"b": (2, 0.4, 3000.0), "c": (1, 0.7, 3000.0)})
    clock.now += 40
    view.on_experiment_end([a, b, c])
    assert view.interrupted

    args = parse_args(
        ["grad_clip", "--storage", str(tmp_path / "out"), "--cpus-per-trial", "0.5", "--max-failures", "3"]
    )
    command = resume_command(args, options_from_args(args), "/data/ptb")
    assert command == (
        f"python -m study.sweep grad_clip --storage {tmp_path / 'out'} --data-dir /data/ptb "
        "--cpus-per-trial 0.5 --max-failures 3 --resume"
    )
    lines = view.interruption_lines(str(tmp_path / "out" / "grad_clip"), command)
    assert lines[0].startswith("Interrupted. Kept: 3 finished trial-epochs of 2 trials")
    assert lines[1].startswith(
        "Dropped: 2 trials were inside an epoch: 0.4 and 0.7 of an epoch lost (80 s of training)"
    )
    assert lines[2] == "1 trial has not started."
    assert lines[3] == f"Resume: {command}"
    assert parse_args(command.split()[3:]).resume  # the command parses back


def test_the_closing_lines_name_errors_and_leave_the_best_setting_to_the_report(tmp_path):
    """The report prints the one Best line (in its labels); the closing lines do not rank again, and
    never call Ray's get_best_result (it warns when no trial has a finite value)."""

    def result(max_grad_norm, seed, valid, error=None):
        history = pd.DataFrame({m.EPOCH: range(1, len(valid) + 1), m.VALID_PPL: valid})
        return SimpleNamespace(
            config={"max_grad_norm": max_grad_norm, "lr_decay": 0.5, "seed": seed},
            error=error,
            path=f"/out/t{max_grad_norm}-{seed}",
            metrics=history.iloc[-1].to_dict() if valid else {},
            metrics_dataframe=history,
        )

    options = options_from_args(parse_args(["grad_clip", "--storage", str(tmp_path)]))
    results = [
        result(5.0, 0, [200.0, 120.0]),
        result(1.0, 0, [100.0], error=RuntimeError("worker died\nOSError: disk full")),
    ]
    lines = closing_summary(options, results, "python -m study.sweep grad_clip --resume").splitlines()
    assert lines[:3] == [
        "2 trials, 1 errored after their retries:",
        "  t1.0-0: OSError: disk full",
        "Once the cause is fixed, retry them from their last checkpoints: python -m study.sweep grad_clip --resume",
    ]
    assert not any(line.startswith("Best") for line in lines)
    assert "No trial finished an epoch" in closing_summary(options, [result(5.0, 0, [])])


def test_the_view_pickles_as_a_plain_callback():
    """Ray keeps the RunConfig with its callbacks in tuner.pkl: a live display must not go there."""
    view, _ = tracker("live", Clock())
    view.close()
    restored = pickle.loads(pickle.dumps(view))
    assert type(restored) is tune.Callback


def test_quiet_ray_drops_only_the_messages_the_view_replaces(monkeypatch, caplog):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "5")
    names = ("ray.tune.tune", "ray._private.authentication.authentication_token_setup", "tensorboardX.x2num")
    loggers = [logging.getLogger(name) for name in names]
    before = [list(logger.filters) for logger in loggers]
    for logger in loggers:  # as in a fresh process: an earlier in-process sweep may have quieted them already
        logger.filters[:] = []
    record = lambda logger, text: logger.makeRecord(logger.name, logging.WARNING, __file__, 1, text, (), None)
    tune_log, token, board = loggers
    with caplog.at_level(logging.WARNING):  # what quiet_ray keeps off the console, before it does
        hparams(hparam_dict={"max_grad_norm": math.inf}, metric_dict={"valid_ppl": 1.0})
    assert [r.getMessage() for r in caplog.records] == ["NaN or Inf found in input tensor."]
    caplog.clear()
    try:
        quiet_ray()
        assert not tune_log.filter(
            record(tune_log, "Experiment has been interrupted, but the most recent state was saved.")
        )
        assert tune_log.filter(record(tune_log, "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."))
        # A local Ray's own token, announced at every start; the warning of a Ray without one stays.
        assert not token.filter(
            record(token, "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        )
        assert token.filter(
            record(token, "Token authentication is disabled for this Ray cluster. Anyone with network access")
        )
        # max_grad_norm=inf written as an hparam at every trial's end (Ray's TensorBoard logger).
        assert not board.filter(record(board, "NaN or Inf found in input tensor."))
        with caplog.at_level(logging.WARNING):
            hparams(hparam_dict={"max_grad_norm": math.inf}, metric_dict={"valid_ppl": 1.0})
        assert not caplog.records
    finally:
        for each, filters in zip(loggers, before):
            each.filters[:] = filters


def test_trials_send_progress_to_the_board_without_waiting(ray_session):
    @ray.remote
    def report(trial_id: str) -> bool:
        send = progress_sender(trial_id)
        if send is not None:
            send(EpochProgress(epoch=3, fraction=0.5, perplexity=200.0, words_per_sec=4200.0))
        return send is not None

    assert not ray.get(report.remote("before"))  # no board: a trial trains without a display
    board = start_board()
    try:
        assert ray.get(report.remote("t1"))
        clock = Clock()
        view, _ = tracker("quiet", clock, board=board)
        view.on_trial_start(0, [], trial("t1", 5.0, epoch=2))
        deadline = time.time() + 30
        while view.views["t1"].fraction == 0 and time.time() < deadline:
            clock.now += 2
            view.on_step_begin(0, [])  # asks the board, takes its answer at a later step
            time.sleep(0.05)
        assert (view.views["t1"].fraction, view.views["t1"].words_per_sec) == (0.5, 4200.0)
    finally:
        ray.kill(board)


SPACE = """
description: a sweep to interrupt
preset: test
fixed: {epochs: 30, max_words: 0, clip_mode: none}
vary:
  max_grad_norm: {grid: [0.5, 1, 2, 5]}
seeds: [0]
scheduler: {grace_period: 10, reduction_factor: 2}
"""


@pytest.mark.slow
def test_ctrl_c_on_a_real_sweep_prints_the_resume_command_and_exits_130(ray_session, tiny_corpus_dir, tmp_path):
    space = tmp_path / "stop.yaml"
    space.write_text(SPACE)
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    process = subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},  # the calibration is timed on the tiny corpus
    )
    try:
        deadline = time.time() + 120
        while (
            not any(p.stat().st_size for p in (tmp_path / "out" / "stop").glob("*/result.json"))
            and time.time() < deadline
        ):
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-3000:]
    assert "\x1b" not in output  # not a terminal: plain lines
    assert "trial-epochs: 120 for the full grid (4 x 30)" in output and "\n  time: " in output
    assert "trial-epochs |" in output and "valid_ppl" in output  # the status and epoch lines
    assert "Trial status" not in output and "Tuner.restore" not in output  # Ray's own output is replaced
    resume = next(line for line in output.splitlines() if line.startswith("Resume: "))
    assert resume == "Resume: " + " ".join(
        [
            "python",
            "-m",
            "study.sweep",
            *args[:3],
            "--data-dir",
            str(tiny_corpus_dir),
            "--address",
            ray_session,
            "--resume",
        ]
    )
    assert Path(tmp_path / "out" / "stop").is_dir()


def test_epochs_from_a_shared_prefix_count_once_and_leave_the_timing_alone():
    """Two trials share a 2-epoch prefix (2 trial-epochs saved): the fork's re-reported prefix epochs
    are neither work done nor timings, and the study's total is the plan's, sharing counted."""
    clock = Clock()
    view, _ = tracker("quiet", clock, total_trials=2, brackets=[(1.0, ())], shared_epochs_saved=2)
    leader, fork = trial("a", 1.0), trial("b", 1.0)
    assert view.expected_total() == pytest.approx(2 * 4 - 2)
    view.on_trial_start(0, [leader, fork], leader)
    view.on_trial_result(0, [leader, fork], leader, epoch_result(1, seconds=100.0))
    view.on_trial_result(0, [leader, fork], leader, epoch_result(2, seconds=100.0))
    view.on_trial_start(0, [leader, fork], fork)
    for epoch in (1, 2):
        view.on_trial_result(0, [leader, fork], fork, {**epoch_result(epoch, seconds=100.0), m.SHARED_PREFIX: True})
    assert view.done_epochs == 2 and view.epoch_seconds == [100.0, 100.0]
    assert view.expected_total() == pytest.approx(6)
    # 4 trial-epochs left (2 each), at 100 s an epoch, two trials at once: 200 s.
    assert view.seconds_left() == pytest.approx(200.0)


@pytest.mark.parametrize("mode", ["live", "lines"])
def test_ctrl_c_is_said_at_once_in_a_line_of_its_own_not_inside_the_live_line(mode):
    clock = Clock()
    view, out = tracker(mode, clock)
    a = trial("a", 5.0)
    view.on_trial_start(0, [a], a)
    ray_tune, reached = logging.getLogger("ray.tune.tune"), []
    handler = logging.Handler()
    handler.emit = reached.append  # what Ray's own handler would print
    ray_tune.addHandler(handler)
    stop = "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run. This will try to checkpoint"
    try:
        ray_tune.warning(stop)  # what Ray Tune's stop handler logs, from inside the signal handler
        assert not reached  # Ray's line never reaches a handler, so it cannot land inside the live line
        view.stop_requested("SIGINT")  # a stop handler telling too: said once
        text = out.getvalue()
        assert text.count("Stopping (Ctrl-C): Ray ends the trials") == 1 and "skips that save" in text
        assert view.study_text().endswith(", stopping") and " left" not in view.study_text()
        view.close()
        ray_tune.warning(stop)  # once the view is closed, Ray's logger is as it was
        assert [record.getMessage() for record in reached] == [stop]
    finally:
        ray_tune.removeHandler(handler)
