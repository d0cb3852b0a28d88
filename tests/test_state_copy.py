"""Ray's state on storage that fills (study/sweep/state_copy.py): the whole copy beside it follows
Ray's saves, a torn state or log is put back from it before a resume, a torn state without a copy
is one line instead of a sweep started over, and so is a restore that Ray itself fails. Without
Ray: a staging folder and an experiment folder as Ray's driver and its upload leave them."""

import errno
import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

import study.sweep.state_copy as state_copy
from study.errors import StorageError
from study.sweep.state_copy import COPY_FILE, StateCopy, StateLost, plan_repair, read_copy, restore_whole_state

STATE = "experiment_state-2026-01-01_00-00-00.json"
TRIAL = "train_trial_00000_0_max_grad_norm=1.0000"
RESUME = "python -m study.sweep fills.yaml --storage /mnt/small --resume"


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def save(staging: Path, epochs: int, iteration: int = 1) -> None:
    """What Ray's driver has written by a save after `epochs` reports of its one trial."""
    trial = [json.dumps({"trial_id": "00000", "status": "RUNNING"}), json.dumps({"epochs": epochs})]
    state = {"trial_data": [trial], "runner_data": {"_iteration": iteration}, "stats": {}}
    (staging / TRIAL).mkdir(parents=True, exist_ok=True)
    (staging / STATE).write_text(json.dumps(state))
    (staging / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(b"\x80\x04 a pickle of the search")
    (staging / TRIAL / "params.json").write_text('{"max_grad_norm": 1.0}')
    (staging / TRIAL / "result.json").write_text("".join(f'{{"epoch": {e}}}\n' for e in range(1, epochs + 1)))
    (staging / TRIAL / "progress.csv").write_text("epoch\n" + "".join(f"{e}\n" for e in range(1, epochs + 1)))


def upload(staging: Path, experiment: Path) -> None:
    """Ray's upload of the staging folder: every file rewritten."""
    for path in staging.rglob("*"):
        if path.is_file():
            (experiment / path.relative_to(staging)).parent.mkdir(parents=True, exist_ok=True)
            (experiment / path.relative_to(staging)).write_bytes(path.read_bytes())


def tear(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.fixture
def sweep(tmp_path):
    """(staging, experiment, the trials Tune hands its callbacks, a StateCopy) after two epochs,
    saved, uploaded and copied."""
    staging, experiment = tmp_path / "staging", tmp_path / "storage" / "fills"
    staging.mkdir()
    experiment.mkdir(parents=True)
    storage = SimpleNamespace(
        storage_filesystem=pafs.LocalFileSystem(),
        experiment_driver_staging_path=str(staging),
        experiment_fs_path=str(experiment),
    )
    trials = [SimpleNamespace(storage=storage)]
    keeper = StateCopy(str(experiment))
    save(staging, epochs=2)
    upload(staging, experiment)
    keeper.on_step_end(0, trials)
    return staging, experiment, trials, keeper


def full_disk(monkeypatch):
    """The storage refuses every write of study's (Ray's own writes are torn by the tests)."""

    def refuse(path, data, filesystem=None):
        raise StorageError.about(path, "no space left on the device")

    monkeypatch.setattr(state_copy, "write_bytes", refuse)


def test_the_copy_follows_rays_saves_that_change_something(sweep, monkeypatch):
    staging, experiment, trials, keeper = sweep
    with tarfile.open(experiment / COPY_FILE) as archive:
        assert sorted(archive.getnames()) == sorted(
            str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()
        )
    written = []
    monkeypatch.setattr(state_copy, "write_bytes", lambda path, data, fs=None: written.append(path))
    keeper.on_step_end(1, trials)  # no save since
    save(staging, epochs=2, iteration=2)  # a save that changed only Ray's step counter
    keeper.on_step_end(2, trials)
    assert written == []
    save(staging, epochs=3, iteration=3)
    keeper.on_step_end(3, trials)
    assert written == [f"{experiment}/{COPY_FILE}"]


def test_a_torn_state_is_put_back_from_the_copy(sweep, monkeypatch):
    staging, experiment, trials, keeper = sweep
    copied = hashes(experiment)
    save(staging, epochs=3, iteration=2)  # the disk fills: Ray's upload tears its files, study's copy is refused
    upload(staging, experiment)
    tear(experiment / STATE)
    tear(experiment / TRIAL / "result.json", keep=0.9)  # inside its third line
    (experiment / TRIAL / "params.json").write_bytes(b"")
    with monkeypatch.context() as patch:
        full_disk(patch)
        keeper.on_step_end(1, trials)
    assert keeper.refused is not None and keeper.refused.cause == "no space left on the device"

    note = restore_whole_state(str(experiment))  # space freed, --resume
    assert note.startswith(f"{experiment}: Ray's last save of the sweep's state was cut short ({STATE}: ")
    assert note.endswith("(1 trials, each at the last checkpoint it names)")
    # The state, search state, params and logs of the copy's moment; a log that is whole and longer stays.
    after, progress = hashes(experiment), f"{TRIAL}/progress.csv"
    assert after.pop(progress) != copied.pop(progress) and (experiment / progress).read_text() == "epoch\n1\n2\n3\n"
    assert after == copied
    assert restore_whole_state(str(experiment)) is None  # nothing torn any more


def test_a_checkpoint_deleted_after_the_copy_gets_an_empty_stand_in_for_rays_next_rotation(sweep):
    """The copy names checkpoints 1 and 2; Ray then took checkpoint 3 and deleted 1 before its state
    upload tore. Restored from the copy, Ray's next rotation deletes checkpoint 1 again: it must be there."""
    _, experiment, _, _ = sweep
    for index in (2, 3):
        (experiment / TRIAL / f"checkpoint_00000{index}").mkdir()
        (experiment / TRIAL / f"checkpoint_00000{index}" / "state.pt").write_bytes(b"run")
    (experiment / "train_trial_00001_1").mkdir()
    (experiment / "train_trial_00001_1" / "checkpoint_000000").mkdir()  # its first: nothing below
    tear(experiment / STATE)
    restore_whole_state(str(experiment))
    assert sorted(path.name for path in (experiment / TRIAL).glob("checkpoint_*")) == [
        "checkpoint_000001",
        "checkpoint_000002",
        "checkpoint_000003",
    ]
    assert not any((experiment / TRIAL / "checkpoint_000001").iterdir())
    assert [path.name for path in (experiment / "train_trial_00001_1").iterdir()] == ["checkpoint_000000"]


def test_with_a_whole_state_only_the_torn_logs_are_mended(sweep):
    _, experiment, _, _ = sweep
    (experiment / TRIAL / "progress.csv").write_bytes(b"")  # torn to nothing: the copy's lines come back
    result = experiment / TRIAL / "result.json"
    result.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')  # more than the copy: cut at its last line
    search = experiment / "basic-variant-state-2026-01-01_00-00-00.json"
    search.write_bytes(b"a newer search state")  # Ray's whole state goes with it: left alone
    note = restore_whole_state(str(experiment))
    assert note == f"{experiment}: 2 of Ray's logs were cut short; put back from study's whole copy"
    assert (experiment / TRIAL / "progress.csv").read_text() == "epoch\n1\n2\n"
    assert result.read_text() == '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'
    assert search.read_bytes() == b"a newer search state"


def test_a_torn_state_without_a_whole_copy_is_one_line_and_nothing_changes(sweep):
    _, experiment, _, _ = sweep
    tear(experiment / STATE)
    (experiment / COPY_FILE).unlink()
    before = hashes(experiment)
    with pytest.raises(StateLost) as lost:
        plan_repair(str(experiment))  # what --resume checks before anything starts
    line = str(lost.value)
    assert line.startswith(f"{experiment}: Ray's saved state of the sweep is cut short ({STATE}: ")
    assert "no whole copy of it is kept, so --resume cannot continue it" in line and "\n" not in line
    assert lost.value.exit_status == 1  # the storage's doing, not the input's
    with pytest.raises(StateLost):
        restore_whole_state(str(experiment))
    assert hashes(experiment) == before


def test_a_copy_that_names_a_file_outside_the_experiment_is_not_used(sweep, tmp_path):
    _, experiment, _, _ = sweep
    tear(experiment / STATE)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for name, data in ((STATE, b'{"trial_data": []}'), ("../../outside.txt", b"planted")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    (experiment / COPY_FILE).write_bytes(buffer.getvalue())
    before = hashes(tmp_path)
    with pytest.raises(StateLost, match=r"ray-state-copy.tar, study's copy of it, holds '\.\./\.\./outside\.txt'"):
        restore_whole_state(str(experiment))
    assert hashes(tmp_path) == before and not (tmp_path / "outside.txt").exists()


def test_the_end_of_a_sweep_on_a_full_disk_is_one_line_naming_the_storage_and_the_cause(sweep, monkeypatch):
    staging, experiment, trials, keeper = sweep
    assert keeper.check_saved(RESUME) is None and keeper.check_saved(RESUME, EOFError()) is None  # all whole
    save(staging, epochs=3, iteration=2)
    upload(staging, experiment)
    with monkeypatch.context() as patch:
        full_disk(patch)
        keeper.on_experiment_end(trials)
        assert keeper.check_saved(RESUME) is None  # Ray's state whole, results read: the report goes on
        with pytest.raises(StorageError) as refused:  # its state whole, but its results torn
            keeper.check_saved(RESUME, EOFError("Ran out of input"))
        assert str(refused.value) == (
            f"{experiment}: Ray's last files of the sweep not written (no space left on the device); its state "
            f"there is whole: free space, then continue the sweep with: {RESUME}"
        )
        tear(experiment / STATE)
        for failure in (None, EOFError("Ran out of input")):  # Tuner.fit returned, or its results' torn error.pkl
            with pytest.raises(StorageError) as refused:
                keeper.check_saved(RESUME, failure)
            assert str(refused.value) == (
                f"{experiment}: Ray's state of the sweep not written (no space left on the device); its finished "
                f"epochs and study's last whole copy of the state are kept: free space, then continue the sweep "
                f"with: {RESUME}"
            )
            assert refused.value.exit_status == 1
    keeper.on_experiment_end(trials)  # space again by the end: the copy holds the last save, put back at once
    note = keeper.check_saved(RESUME)
    assert note.startswith(f"{experiment}: Ray's last save of the sweep's state was cut short")
    assert (experiment / STATE).read_bytes() == (staging / STATE).read_bytes()


def test_a_restore_that_ray_fails_ends_the_run_instead_of_starting_it_over(sweep, caplog):
    _, experiment, trials, keeper = sweep
    log = logging.getLogger("ray.tune.execution.tune_controller")
    with keeper.watching_ray(), caplog.at_level(logging.INFO):
        try:
            raise ValueError("unpickling the search state: pickle data was truncated")
        except ValueError:
            log.exception("Failed to restore the run state.")
        log.info("Restarting experiment.")
        with pytest.raises(
            StateLost, match=r"Ray could not restore the sweep's saved state \(.*pickle data was truncated\)"
        ):
            keeper.on_step_begin(0, trials)
    assert caplog.records == []  # said in study's line, not as Ray's traceback
    keeper = StateCopy(str(experiment.parent / "never-saved"))  # killed before Ray's first save: Ray starts over
    with keeper.watching_ray(), caplog.at_level(logging.INFO):
        try:
            raise ValueError("no experiment state file")
        except ValueError:
            log.exception("Failed to restore the run state.")
        keeper.on_step_begin(0, trials)
    assert [record.getMessage() for record in caplog.records] == ["Failed to restore the run state."]


def test_rays_refused_uploads_are_left_to_the_closing_line(sweep, caplog):
    _, _, _, keeper = sweep
    log = logging.getLogger("ray.tune.execution.experiment_state")
    with keeper.watching_ray(), caplog.at_level(logging.INFO):
        for error in (OSError(errno.ENOSPC, "Error writing bytes to file"), OSError(errno.EIO, "I/O error")):
            try:
                raise error
            except OSError:
                log.error(
                    "Saving experiment state to storage at '/mnt/small/fills' failed with exception: ", exc_info=True
                )
    assert [record.exc_info[1].errno for record in caplog.records] == [errno.EIO]  # not a full disk: Ray says it


def test_an_error_that_rays_last_save_left_out_is_written_into_it_and_the_copy(sweep):
    """Ray saves a trial whose worker died before Tune stopped it as RUNNING, without its failure
    (CI saw the report call such a trial running); Tune's on_trial_error says what it is."""
    _, experiment, trials, keeper = sweep
    errored = [json.dumps({"trial_id": "00000", "status": "ERROR"}), json.dumps({"num_failures": 1})]
    keeper.on_trial_error(3, trials, SimpleNamespace(trial_id="00000", get_json_state=lambda: tuple(errored)))
    keeper.on_experiment_end(trials)
    for saved in ((experiment / STATE).read_bytes(), read_copy(pafs.LocalFileSystem(), str(experiment))[STATE]):
        state = json.loads(saved)
        assert state["trial_data"] == [errored] and state["runner_data"] == {"_iteration": 1}


def test_trials_an_interrupted_sweep_leaves_running_and_errors_ray_saved_stay_as_saved(sweep):
    staging, experiment, trials, keeper = sweep
    before = (experiment / STATE).read_bytes()
    keeper.on_experiment_end(trials)  # interrupted: Tune reported no error, its trial stays RUNNING
    assert (experiment / STATE).read_bytes() == before
    saved = json.loads(before)
    saved["trial_data"][0][0] = json.dumps({"trial_id": "00000", "status": "ERROR"})
    (staging / STATE).write_text(json.dumps(saved))
    upload(staging, experiment)
    errored = [saved["trial_data"][0][0], json.dumps({"num_failures": 1, "written": "later"})]
    keeper.on_trial_error(3, trials, SimpleNamespace(trial_id="00000", get_json_state=lambda: tuple(errored)))
    keeper.on_experiment_end(trials)  # Ray saved the error itself: nothing rewritten
    assert json.loads((experiment / STATE).read_bytes()) == saved
