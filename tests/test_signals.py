"""What the console says and the exit status: Ctrl-C and SIGTERM stop a sweep alike (130, 143)
with the closing lines; Ctrl-C while a command loads its libraries is one line; a finished sweep resumed says
so and exits 0; a report that fails after the trials ran is exit 1, never the bad-input 2; a
refused shared prefix is said on the console."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from study import metrics as m
from study.errors import UsageError
from study.sweep import tuner
from study.sweep.cli import exit_code, options_from_args, parse_args
from study.sweep.prefix import PREFIX_REFUSED
from study.sweep.progress import SweepProgress
from study.sweep.signals import Stopped, StopRequests
from study.train.data import load_corpus

from helpers import finish, sweep, sweep_args, sweep_until_first_result

SPACE = """
description: signals
preset: test
fixed: {{epochs: {epochs}, max_words: 0}}
vary:
  max_grad_norm: {{grid: [1.0, 5.0]}}
seeds: [0]
scheduler: {{grace_period: {epochs}}}
"""


def write_space(folder, epochs):
    path = folder / "signals.yaml"
    path.write_text(SPACE.format(epochs=epochs))
    return path


def deliver(signum: int) -> None:
    """Send `signum` to this process and give Python the moment it takes to run the handler."""
    os.kill(os.getpid(), signum)
    time.sleep(0.2)


@pytest.fixture
def stops():
    requests = StopRequests()
    requests.install()
    yield requests
    requests.uninstall()


def test_outside_tunes_run_a_stop_request_interrupts_at_once_with_its_status(stops):
    with pytest.raises(Stopped) as stopped:
        deliver(signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM and stops.exit_status == 143 and stops.signal_name == "SIGTERM"


def test_inside_tunes_run_the_first_request_asks_tune_to_stop_and_the_second_interrupts(stops):
    told, asked = [], []
    stops.on_stop = told.append
    previous = signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))  # Tune's handler during fit
    try:
        stops.setup()
        deliver(signal.SIGINT)
        assert told == ["SIGINT"] and asked == [True]  # said at once; Tune saves its state and stops
        with pytest.raises(Stopped):
            deliver(signal.SIGTERM)  # a second request skips the save
        assert stops.exit_status == 130  # the first request's signal
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_after_tunes_run_a_ctrl_c_during_the_report_is_not_ignored(stops):
    stops.setup()
    stops.on_experiment_end(trials=[])
    with pytest.raises(Stopped):
        deliver(signal.SIGINT)


def test_uninstall_gives_the_signals_back():
    """The handlers from before `install`, whatever they were (an earlier in-process Tune run may
    have left its own SIGINT handler behind)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    requests = StopRequests()
    requests.install()
    assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    requests.uninstall()
    assert {signum: signal.getsignal(signum) for signum in before} == before
    assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == tune_env


def loading(process, libraries=("_multiarray_umath", "libtorch_cpu", "libarrow")):
    """Wait until `process` maps the first of the large libraries: inside the command's imports."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(name in Path(f"/proc/{process.pid}/maps").read_text() for name in libraries):
            return
        time.sleep(0.01)
    raise AssertionError("the command never loaded numpy, torch or pyarrow")


@pytest.mark.parametrize(
    "command",
    [
        ["study.sweep", "smoke", "--dry-run"],
        ["study.train", "--preset", "test"],
        ["study.report", "no-such-folder"],
        ["study.bench", "--preset", "test"],
    ],
)
def test_ctrl_c_while_a_command_loads_is_one_line_and_130(command):
    process = subprocess.Popen(
        [sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path.cwd()
    )
    loading(process)  # the imports take seconds: torch, Ray, pandas, matplotlib
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    assert out == b"" and err.decode() == "interrupted while loading the libraries; nothing was started\n"


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A script's `cmd &` starts it with SIGINT ignored: the loading guard leaves that as it is."""
    process = subprocess.Popen(
        [sys.executable, "-m", "study.sweep", "smoke", "--dry-run", "--storage", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    loading(process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and b"interrupted" not in err and b"trials" in out, err.decode()[-2000:]


def test_a_report_that_fails_after_the_trials_ran_is_exit_1_not_2(monkeypatch, tiny_corpus_dir, tmp_path, capsys):
    """A damaged state file (a disk that filled while Ray wrote it) makes the report's reader refuse
    the experiment in one line: after a sweep that is a failure of the run, not bad input."""
    options = options_from_args(parse_args(["smoke", "--storage", str(tmp_path)]))
    results = [SimpleNamespace(error=None, metrics={"epoch": 1})]
    monkeypatch.setattr(tuner, "write_study_file", lambda *args, **kwargs: None)
    monkeypatch.setattr(tuner, "build_tuner", lambda *args, **kwargs: SimpleNamespace(fit=lambda: results))

    def damaged(experiment):
        raise UsageError(f"{experiment}/experiment_state-x.json: cannot read Ray's experiment state (truncated)")

    monkeypatch.setattr(tuner, "write_report", damaged)
    outcome = tuner.run_sweep(options, load_corpus(tiny_corpus_dir))
    assert exit_code(outcome) == 1 and "cannot read Ray's experiment state" in outcome.report_failure
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow
def test_sigterm_stops_a_sweep_like_ctrl_c_with_143_and_the_closing_lines(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, epochs=50)
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    process = sweep_until_first_result(args, tmp_path / "out" / "signals", timeout=180)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=180)
    assert process.returncode == 143, output[-3000:]
    assert "Traceback" not in output and "Fatal Python error" not in output and "SIGABRT" not in output
    assert "Stopping (SIGTERM)" in output  # said at once, before the closing lines
    assert "Interrupted. Kept:" in output and "\nResume: python -m study.sweep" in output


@pytest.mark.slow
def test_resuming_a_finished_sweep_says_so_and_exits_0(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, epochs=1)
    options, _ = sweep([str(space), "--storage", str(tmp_path / "out")], load_corpus(tiny_corpus_dir))
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    done = subprocess.run(
        [sys.executable, "-m", "study.sweep", *args, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"The sweep in {options.experiment} had finished: nothing was left to run." in done.stdout
    assert "Interrupted" not in done.stdout and "not started" not in done.stdout


@pytest.mark.parametrize("mode", ["lines", "quiet"])
def test_a_refused_shared_prefix_is_said_on_the_console(mode):
    """The trial trains the prefix itself and reports why it refused the stored one; Ray's worker
    logs, where its warning goes, are not shown, so the view says it (under --verbose too)."""
    out = io.StringIO()
    view = SweepProgress(1, 2, [(1.0, ())], 2.0, mode=mode, console=Console(file=out, width=200))
    trial = SimpleNamespace(trial_id="t1", config={}, status="RUNNING", last_result={})
    line = (
        "s3://***@bucket/r/prefixes/ab12.pt: corrupted or not a saved run state (EOFError); training the prefix instead"
    )
    view.on_trial_result(0, [trial], trial, {m.EPOCH: 1, m.VALID_PPL: 300.0, PREFIX_REFUSED: line})
    assert f"t1: {line}\n" in out.getvalue()
