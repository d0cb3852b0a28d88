"""Disks that are full, read-only or not this user's (study/storage.py, study/errors.py): every write
study makes says so in one line naming the path and the cause, exits non-zero, and leaves what was
there before whole. Real small filesystems (tmpfs) where this user may mount them (root), else the
same refusals raised by a patched writer."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from study.errors import StorageError, main_with_errors
from study.storage import replacing

from helpers import fake_experiment, read_only, tiny_text

REFUSALS = [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "read-only filesystem"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EACCES, "permission denied"),
]


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path: what "nothing lost" is checked against."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("code, cause", REFUSALS)
@pytest.mark.parametrize("remote", [False, True], ids=["local", "pyarrow"])
def test_a_refused_write_is_one_line_and_the_file_there_stays_whole(tmp_path, code, cause, remote):
    path = tmp_path / "table.parquet"
    path.write_bytes(b"the whole earlier table")
    before = hashes(tmp_path)
    filesystem = pafs.LocalFileSystem() if remote else None
    with pytest.raises(StorageError) as raised, replacing(path, filesystem) as temporary:
        Path(temporary).write_bytes(b"half a ta")
        raise OSError(code, os.strerror(code))  # what the writer meets half way
    assert str(raised.value) == f"{path}: not written ({cause}); the file there before is unchanged"
    assert raised.value.exit_status == 1 and hashes(tmp_path) == before  # no temporary left either

    new = tmp_path / "new.pt"
    with (
        pytest.raises(StorageError, match=f"{new}: not written .*; nothing was written there"),
        replacing(new, filesystem),
    ):
        raise OSError(code, os.strerror(code))
    assert hashes(tmp_path) == before


def test_other_errors_of_a_write_are_not_taken_for_a_full_disk(tmp_path):
    with pytest.raises(OSError, match="Input/output error"), replacing(tmp_path / "a"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_command_meeting_a_full_disk_anywhere_says_it_in_one_line(capsys):
    @main_with_errors
    def command() -> int:  # a write study does not wrap: Ray's, torch's
        raise OSError(errno.ENOSPC, "No space left on device", "/results/x/experiment_state.json")

    assert command() == 1
    assert (
        capsys.readouterr().err
        == "error: /results/x/experiment_state.json: not written (no space left on the device)\n"
    )

    def failing(code: int):
        @main_with_errors
        def command() -> int:
            raise OSError(code, os.strerror(code))

        return command

    for code in (errno.EIO, errno.EACCES):  # not known to be a write (a read is refused so too): as it is
        with pytest.raises(OSError):
            failing(code)()


def fill(folder: Path) -> None:
    """Take every free byte of the filesystem of `folder`."""
    with open(folder / "filler", "wb", buffering=0) as filler:  # unbuffered: closing it writes nothing more
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def tiny(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name, text in tiny_text().items():
        (folder / name).write_text(text)
    return folder


def train(tiny: Path, *args: str) -> subprocess.CompletedProcess:
    return run("study.train", "--preset", "test", "--data-dir", str(tiny), "--threads", "1", "--quiet", *args)


def test_train_on_a_full_disk_keeps_the_earlier_state_and_table(tmp_path, small_disk, tiny):
    disk = small_disk(tmp_path / "disk")
    earlier = train(tiny, "--epochs", "1", "--save", str(disk / "run.pt"), "--table", str(disk / "epochs.parquet"))
    assert earlier.returncode == 0, earlier.stderr
    fill(disk)
    before = hashes(disk)
    for flag, name in (("--save", "run.pt"), ("--table", "epochs.parquet")):
        done = train(tiny, "--epochs", "2", flag, str(disk / name))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr == (
            f"error: {disk / name}: not written (no space left on the device); the file there before is unchanged\n"
        )
        assert hashes(disk) == before


def test_train_onto_a_read_only_disk_is_refused_before_training(tmp_path, small_disk, tiny):
    disk = small_disk(tmp_path / "disk")
    (disk / "run.pt").write_bytes(b"an earlier state")
    read_only(disk)
    done = train(tiny, "--save", str(disk / "run.pt"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f"error: --save {disk / 'run.pt'}: {disk} is on a read-only filesystem; "
        "allowed: a path in a folder this user can write\n"
    )


@pytest.mark.parametrize("damage", ["full", "read-only"])
def test_a_report_onto_a_full_or_read_only_disk_keeps_the_earlier_report(tmp_path, small_disk, damage):
    disk = small_disk(tmp_path / "disk", size="2m")
    trials = [{"max_grad_norm": 1.0, "seed": 0}, {"max_grad_norm": 5.0, "seed": 0}]
    experiment = fake_experiment(disk / "exp", "  max_grad_norm: {grid: [1.0, 5.0]}", trials, epochs=3)
    assert run("study.report", str(experiment), "--quiet").returncode == 0
    fill(disk) if damage == "full" else read_only(disk)
    before = hashes(experiment)
    done = run("study.report", str(experiment))
    cause = "no space left on the device" if damage == "full" else "read-only filesystem"
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {experiment}: report not written ({cause}); the report there before is unchanged\n"
    assert hashes(experiment) == before and len(before) > 8  # the tables, plots and summary of the first report


def test_a_read_only_calibration_cache_is_a_warning_and_the_plan_goes_on(tmp_path, small_disk, tiny):
    cache = small_disk(tmp_path / "cache")
    read_only(cache)
    done = run(
        "study.sweep", "smoke", "--dry-run", "--data-dir", str(tiny), "--storage", str(tmp_path / "out"),
        env={"XDG_CACHE_HOME": str(cache), "MPLCONFIGDIR": str(tmp_path / "mpl")},
    )  # fmt: skip
    assert done.returncode == 0 and "(1 thread, cpu, timed just now)" in done.stdout, done.stderr
    assert done.stderr == (
        f"warning: {cache}/study/calibration.json: not written (read-only filesystem); nothing was written there; "
        "the next plan times again\n"
    )


@pytest.mark.slow
def test_a_sweep_whose_storage_fills_errors_its_trials_in_one_line_and_resumes_once_freed(
    ray_session, tmp_path, small_disk, tiny
):
    from ray import tune

    from study.sweep.cli import closing_summary, options_from_args, parse_args
    from study.sweep.tuner import run_sweep
    from study.train import load_corpus

    disk = small_disk(tmp_path / "disk", size="4m")
    space = tmp_path / "fills.yaml"
    space.write_text(
        "description: storage that fills\npreset: test\nfixed: {epochs: 3, max_words: 0}\n"
        "vary:\n  max_grad_norm: {grid: [1.0, 5.0]}\nseeds: [0]\nscheduler: {grace_period: 3}\n"
    )

    class FillThenFree(tune.Callback):
        """Fills the disk at the first epoch's report; frees it once every trial has errored, as a
        user would, so that Ray's last save of its state is whole."""

        errored = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not (disk / "filler").exists():
                fill(disk)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errored += 1
            if self.errored == len(trials):
                (disk / "filler").unlink()

    args = [str(space), "--storage", str(disk), "--max-failures", "0"]
    options = options_from_args(parse_args(args))
    results = run_sweep(options, load_corpus(tiny), [FillThenFree()]).results
    closing = closing_summary(options, results)
    assert "2 trials, 2 errored after their retries:" in closing, closing
    lines = closing.splitlines()[1:3]
    assert all(
        "checkpoint of epoch" in line
        and "not written (no space left on the device); its earlier checkpoints are kept" in line
        for line in lines
    ), lines
    resumed = run_sweep(options_from_args(parse_args([*args, "--resume"])), load_corpus(tiny)).results
    assert not any(result.error for result in resumed) and len(resumed) == 2
    epochs = json.loads((disk / "fills" / "study.json").read_text())["epochs"]
    assert all(result.metrics["epoch"] == epochs for result in resumed)


@pytest.mark.slow
def test_a_sweep_whose_storage_is_still_full_at_its_end_is_one_line_and_resumes_once_freed(
    ray_session, tmp_path, small_disk, tiny
):
    """The disk fills two epochs into the trials and stays full: the trials error, and Ray's last
    uploads of its state tear its files. One line (exit 1, no traceback); then, with space again,
    --resume continues the same trials from their checkpoints, as study's whole copy of Ray's state
    names them, instead of starting the sweep over."""
    disk = small_disk(tmp_path / "disk", size="4m")
    # Epochs of a second, not milliseconds (40 times the tiny corpus): on a loaded machine the second
    # trial's worker can take 15 s to start, and a trial of 16 tiny epochs had ended before the other
    # trained its second, so that one trial completed instead of erroring.
    train = tiny / "ptb.train.txt"
    train.write_text(train.read_text() * 40)
    space = tmp_path / "full.yaml"
    space.write_text(
        "description: storage that stays full\npreset: test\nfixed: {epochs: 10, max_words: 0}\n"
        "vary:\n  max_grad_norm: {grid: [1.0, 5.0]}\nseeds: [0]\nscheduler: {grace_period: 10}\n"
        "resources: {cpus_per_trial: 1}\n"
    )
    args = [str(space), "--storage", str(disk), "--data-dir", str(tiny), "--address", ray_session]
    experiment = disk / "full"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args, "--max-failures", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while sweep.poll() is None and time.monotonic() < deadline:
        logs = [path.read_text() for path in experiment.glob("train_trial_*/result.json")]
        if len(logs) == 2 and all(log.count("\n") >= 2 for log in logs):  # uploaded with their checkpoints
            break
        time.sleep(0.05)
    fill(disk)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]  # Ray's own for each failed trial included
    said = [line for line in out.splitlines() if "error after its retries (" in line]
    assert len(said) == 2 and all("(no space left on the device)" in line for line in said), out[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {experiment}"), err[-3000:]
    assert "(no space left on the device)" in errors[0] and errors[0].endswith("--resume"), errors[0]
    trials = sorted(path.name for path in experiment.glob("train_trial_*"))

    (disk / "filler").unlink()
    resumed = run("study.sweep", *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    assert sorted(path.name for path in experiment.glob("train_trial_*")) == trials  # the same trials, not new ones
    table = pd.read_parquet(experiment / "trials.parquet")
    assert set(table["status"]) == {"completed"} and table["epochs_run"].tolist() == [10, 10]
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).tolist() == [list(range(1, 11))] * 2
    for trial in trials:  # went on from a checkpoint: its first epochs were not trained again
        reports = [json.loads(line) for line in (experiment / trial / "result.json").read_text().splitlines()]
        assert [report["epoch"] for report in reports].count(1) == 1, trial
