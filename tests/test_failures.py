"""Failures are loud: a sweep no node can run is refused, exit codes tell the truth, a folder killed
at any moment can be continued, and nothing already on disk changes when input is refused."""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from study.errors import UsageError
from study.sweep.capacity import Node, check_capacity, trials_at_once
from study.sweep.cli import closing_summary, exit_code, options_from_args, parse_args
from study.sweep.tuner import run_sweep
from study.train.data import load_corpus

from helpers import sweep_args, sweep_until_first_result

SPACE = """
description: failures
preset: test
fixed: {{epochs: {epochs}, max_words: 0}}
vary:
  max_grad_norm: {{grid: [1.0, 5.0]}}
seeds: [0]
scheduler: {{grace_period: {epochs}}}
resources: {{cpus_per_trial: 1}}
"""


def write_space(folder: Path, epochs: int = 2) -> Path:
    path = folder / "fail.yaml"
    path.write_text(SPACE.format(epochs=epochs))
    return path


def folder_hash(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.sweep", *args], capture_output=True, text=True, timeout=timeout)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """stderr without the lines Ray's own logger prints when a driver joins it (dated WARNING/INFO)."""
    return [line for line in done.stderr.splitlines() if line.strip() and not line[:4].isdigit()]


def assert_refused(done: subprocess.CompletedProcess, *named: str) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(name in lines[0] for name in named), lines[0]


@pytest.fixture
def earlier_results(tmp_path: Path) -> Path:
    """A storage folder that already holds another study's results."""
    storage = tmp_path / "storage"
    (storage / "other").mkdir(parents=True)
    (storage / "other" / "study.json").write_text('{"space": "other"}')
    (storage / "other" / "trials.parquet").write_bytes(b"PAR1 not really")
    return storage


def test_no_node_can_hold_a_trial_so_the_sweep_is_refused_at_once(
    ray_session, tiny_corpus_dir, tmp_path, earlier_results
):
    before = folder_hash(earlier_results)
    space = write_space(tmp_path)
    common = sweep_args(space, earlier_results, tiny_corpus_dir, ray_session)
    for flag, value, allowed in (("--gpus-per-trial", "1", "at most 0"), ("--cpus-per-trial", "64", "at most 2")):
        started = time.monotonic()
        done = cli([*common, flag, value], timeout=120)
        assert_refused(done, f"{flag} {value}", "no node of this Ray can hold one trial", allowed)
        assert time.monotonic() - started < 60
    assert folder_hash(earlier_results) == before and not (earlier_results / "fail").exists()


def test_capacity_counts_each_node_on_its_own_and_warns_when_the_cluster_can_grow():
    two = [Node(cpus=3, gpus=0), Node(cpus=3, gpus=1)]
    assert trials_at_once(2, 0, two) == 2  # 3 + 3 CPUs, but a trial of 2 cannot span two nodes
    assert trials_at_once(1, 0.25, two) == 3  # the GPU node holds 4 quarter-GPU trials, by its 3 CPUs 3
    assert check_capacity(2, 0, two, can_grow=False) is None
    with pytest.raises(
        UsageError, match=r"--gpus-per-trial 2: .*2 nodes, the largest with 3 CPUs and 1 GPUs\); allowed: at most 1"
    ):
        check_capacity(1, 2, two, can_grow=False)
    assert check_capacity(4, 0, two, can_grow=True).startswith("WARNING: --cpus-per-trial 4: no node")


@pytest.mark.parametrize("flag, value", [("--cpus-per-trial", "nan"), ("--gpus-per-trial", "inf"), ("--epochs", "-3")])
def test_resources_that_are_not_finite_numbers_are_refused(flag, value, tmp_path):
    assert_refused(cli(["smoke", flag, value, "--storage", str(tmp_path)], timeout=60), f"{flag} {value}")


def test_an_address_nothing_answers_on_fails_within_seconds(tiny_corpus_dir, tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    done = cli(
        [
            "smoke",
            "--address",
            f"127.0.0.1:{port}",
            "--storage",
            str(tmp_path / "out"),
            "--data-dir",
            str(tiny_corpus_dir),
        ],
        timeout=60,
    )
    assert_refused(done, f"--address 127.0.0.1:{port}", "no Ray answers there")
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


class KillEveryTrial(tune.Callback):
    """SIGKILLs each trial's worker at its first result: with --max-failures 0 every trial errors."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        os.kill(result["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_says_so_and_exits_1(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, epochs=3)
    options = options_from_args(parse_args([str(space), "--storage", str(tmp_path / "out"), "--max-failures", "0"]))
    outcome = run_sweep(
        options, load_corpus(tiny_corpus_dir), [KillEveryTrial()], resume_with="python -m study.sweep … --resume"
    )
    assert exit_code(outcome) == 1
    closing = closing_summary(options, outcome.results, "python -m study.sweep … --resume")
    assert closing.startswith("2 trials, 2 errored after their retries:")
    assert "retry them from their last checkpoints: python -m study.sweep … --resume" in closing
    trials = pd.read_parquet(Path(options.experiment) / "trials.parquet")
    assert set(trials["status"]) == {"error"} and trials["num_failures"].tolist() == [1, 1]
    summary = (Path(options.experiment) / "summary.md").read_text()
    assert "2 trial(s) ended in error" in summary and "`python -m study.sweep … --resume` retries them" in summary


@pytest.mark.slow
def test_a_sweep_killed_in_its_first_moments_can_be_continued(ray_session, tiny_corpus_dir, tmp_path):
    """kill -9 as soon as the experiment folder appears (study.json may exist, Ray's tuner.pkl not
    yet), then --resume: the sweep runs to its end."""
    space = write_space(tmp_path)
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    process = subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    experiment = tmp_path / "out" / "fail"
    deadline = time.monotonic() + 120
    while not experiment.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.kill()
    process.wait()
    assert experiment.exists()
    done = cli([*args, "--resume"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_parquet(experiment / "trials.parquet")
    assert sorted(trials["max_grad_norm"]) == [1.0, 5.0] and set(trials["status"]) == {"completed"}


def test_a_folder_whose_sweep_never_saved_its_state_starts_again(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, epochs=1)
    experiment = tmp_path / "out" / "fail"
    experiment.mkdir(parents=True)
    (experiment / "study.json").write_text('{"space": "fail"}')  # what a kill before tuner.pkl leaves
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    done = cli(args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped before Ray saved its state; starting it again" in done.stdout
    assert set(pd.read_parquet(experiment / "trials.parquet")["status"]) == {"completed"}
    assert_refused(cli(args), "already holds this study", "--resume")  # now it does hold one


@pytest.mark.slow
def test_a_second_ctrl_c_still_exits_130_without_a_traceback(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, epochs=50)
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    process = sweep_until_first_result(args, tmp_path / "out" / "fail", timeout=120)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and time.monotonic() - started < 60


def test_storage_that_cannot_hold_results_is_refused_before_anything_starts(tmp_path, earlier_results):
    before = folder_hash(earlier_results)
    blocker = earlier_results / "other" / "study.json"  # a file where a folder would have to go
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    cases = [
        (str(blocker / "results"), f"{blocker} is a file"),
        ("foo://bucket/results", "Unrecognized filesystem type in URI"),
        (
            f"s3://KEY:SECRET@bucket/results?endpoint_override=127.0.0.1:{closed}&scheme=http&region=us-east-1",
            "s3://***@bucket/results",
        ),
    ]
    for storage, says in cases:
        done = cli(["smoke", "--storage", storage], timeout=120)
        assert_refused(done, "--storage", says)
        assert "SECRET" not in done.stdout + done.stderr
    assert folder_hash(earlier_results) == before
