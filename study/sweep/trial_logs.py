"""A restarted trial keeps every epoch of its log: the driver's copy goes to storage before the restart.

    results = tuner(callbacks=[..., LogsKept()]).fit()

Ray's driver writes each trial's log (result.json, progress.csv) in its staging folder and uploads
the folder to the storage at its saves (at most every 10 s, or when a trial has checkpointed
`num_to_keep` times since the last). When a trial's worker dies and Tune restarts the trial from
its last checkpoint, Ray's loggers first copy the log back from storage over the driver's own,
which drops every line written since that upload, checkpointed epochs among them: the report
would lose those epochs of the trial for good (the restart re-reports only the epochs after its
checkpoint). `LogsKept`, a Tune callback, uploads the trial's driver-side logs when Tune decides
to restart it, before the loggers copy them back. A log storage refuses stays as Ray uploaded it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray import tune

from study.errors import StorageError
from study.storage import write_bytes

LOGS = ("result.json", "progress.csv")  # the files Ray's JSON and CSV loggers copy back on a restart

log = logging.getLogger(__name__)


class LogsKept(tune.Callback):
    """Uploads a trial's driver-side logs to its folder in storage when Tune restarts it after a failure."""

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        storage = trial.storage
        logs = [Path(trial.local_path, name) for name in LOGS]
        try:
            # A trial restarted before Ray's first upload of it has no folder in storage yet.
            storage.storage_filesystem.create_dir(storage.trial_fs_path, recursive=True)
            for local in filter(Path.is_file, logs):
                write_bytes(f"{storage.trial_fs_path}/{local.name}", local.read_bytes(), storage.storage_filesystem)
        except (StorageError, OSError) as refused:  # the restart reads Ray's older copy, as without this callback
            log.warning("trial %s: its log was not uploaded before its restart (%s)", trial.trial_id, refused)
