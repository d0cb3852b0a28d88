"""LogsKept: a trial restarted after its worker died finds its whole log in storage (the real
restart, with every epoch kept: tests/test_sweep.py's killed worker)."""

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs

from study.sweep.trial_logs import LogsKept


def restarted_trial(staging: Path, storage: Path) -> SimpleNamespace:
    """What LogsKept reads of Tune's Trial: its driver-side folder and its folder in storage."""
    folder = storage / "study" / "train_trial_00000"
    store = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(folder))
    return SimpleNamespace(trial_id="00000", local_path=str(staging), storage=store)


def test_the_drivers_log_replaces_storages_older_copy_even_before_ray_made_the_folder(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    (staging / "progress.csv").write_text("epoch\n1\n2\n3\n")
    trial = restarted_trial(staging, tmp_path / "storage")
    LogsKept().on_trial_recover(0, [], trial)  # no folder in storage yet: Ray had not uploaded the trial
    stored = Path(trial.storage.trial_fs_path)
    assert (stored / "result.json").read_text() == (staging / "result.json").read_text()
    assert (stored / "progress.csv").read_text() == "epoch\n1\n2\n3\n"
    (staging / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epoch": 4}\n')
    LogsKept().on_trial_recover(0, [], trial)  # storage's copy is older: replaced
    assert (stored / "result.json").read_text().count("epoch") == 4
    assert sorted(path.name for path in stored.iterdir()) == ["progress.csv", "result.json"]  # no temporary left


def test_storage_that_refuses_the_upload_is_a_warning_and_the_sweep_goes_on(tmp_path, caplog):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "result.json").write_text('{"epoch": 1}\n')
    (tmp_path / "storage").write_text("a file where the storage folder should be")
    LogsKept().on_trial_recover(0, [], restarted_trial(staging, tmp_path / "storage"))
    assert "trial 00000: its log was not uploaded before its restart" in caplog.text
