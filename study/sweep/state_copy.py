"""Ray's state of a sweep on storage that fills: a whole copy kept beside it, put back by --resume.

    python -m study.sweep smoke --storage /mnt/small     # fills: one line, exit 1; free space, then add --resume

Ray's driver writes its state to a staging folder (experiment_state-<session>.json, the search
state, each trial's params, result.json, progress.csv, error and event files) and after each save
uploads the whole folder to the storage with pyarrow's copy_files, which rewrites every file in
place. On a disk that fills, the upload stops inside a file and leaves it cut short: Ray's restore
then fails to read its state and starts the sweep over, and reading its results fails on a torn
error.pkl. (An object store replaces an object only once its upload is whole: s3:// is not torn.)

On a local or mounted storage `StateCopy`, a Tune callback, writes every file of the staging
folder, after each of Ray's saves that changed something, into one tar file beside them
(`ray-state-copy.tar`; uncompressed, so that a search of the folder reads what it holds), whole
under a temporary name and then renamed: a refused write leaves the copy before it. A file is torn
when its last write was cut short: the newest experiment state no longer parses; a log (result.json,
progress.csv, error.txt: Ray only appends to them) ends inside a line or holds fewer lines than the
copy. Before Ray's restore, `restore_whole_state` puts the copy back: every file of it when the state
is torn (the state, the search state and the logs of one moment), else the torn logs. Without a
copy, a torn state is said in one line (`StateLost`) instead of a sweep started over.

Ray's last save can also miss an error: it re-serialises a trial only when it marks it, and a trial
whose worker died before Tune stopped it is set to ERROR unmarked, so the state holds it RUNNING.
`StateCopy` writes the errors Tune reported into that last save at the experiment's end.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
from ray import tune

from study.errors import REFUSED_WRITES, StorageError, UsageError
from study.redact import redact
from study.storage import filesystem_and_path, write_bytes

COPY_FILE = "ray-state-copy.tar"  # in the experiment folder
STATE_FILES = "experiment_state-*.json"  # Ray's (TuneController.CKPT_FILE_TMPL); the newest name is the newest state
LOGS = ("result.json", "progress.csv", "error.txt")  # Ray appends to them, never rewrites
CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in a trial's: checkpoint_000004
TORN = ".torn"  # a torn state file is renamed to <name>.torn: out of Ray's pattern, there to look at


class StateLost(UsageError):
    """Ray's saved state of a sweep cannot be read and no whole copy of it is kept: --resume
    cannot continue the sweep. Exit status 1: the input was fine; the storage lost the state."""

    exit_status = 1


class StateCopy(tune.Callback):
    """Keeps `ray-state-copy.tar` beside Ray's state on local storage (see the module's doc):

    keeper = StateCopy(options.experiment)
    with keeper.watching_ray():                      # a failed restore of Ray's ends the run, not restarts it
        results = tuner(callbacks=[..., keeper]).fit()   # (or raises: then keeper.check_saved(command, error))
    note = keeper.check_saved(command)               # one line when Ray's state on storage is torn
    """

    def __init__(self, experiment: str):
        self.experiment = experiment
        self.refused: StorageError | None = None
        self.restore_failed: str | None = None  # why Ray could not restore the sweep's state
        self._state_stamp: tuple[int, int] | None = None  # (size, mtime) of the staging state last looked at
        self._saved: str | None = None  # the signature of what the copy holds
        self._errored: dict[str, list[str]] = {}  # trial id: its saved state, as Tune's on_trial_error saw it

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self.restore_failed is not None:  # before any trial starts over: the sweep is left as it was
            raise StateLost(self.restore_failed)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._copy(trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._errored[trial.trial_id] = list(trial.get_json_state())  # Ray sets ERROR before this call

    def on_experiment_end(self, trials: list, **info) -> None:
        if trials and self.restore_failed is None:
            self._settle_errors(trials[0].storage)
        self._copy(trials, final=True)

    def _settle_errors(self, storage) -> None:
        """Write into Ray's last save the errors it left out. Ray re-serialises a trial for its state
        only when it marks the trial, and it does not mark one whose worker was already gone when
        the trial was stopped: the save then holds that errored trial as RUNNING, without its
        failure, and the report calls it running. Only trials that Tune reported as errored are
        written, with the state Tune gave them then: the trials an interrupted sweep leaves running
        stay as saved (Tune's clean-up marks them TERMINATED in memory only after its last save)."""
        staging = Path(storage.experiment_driver_staging_path)
        states = sorted(staging.glob(STATE_FILES))
        if not self._errored or not states:
            return
        settled = settle_errors(states[-1].read_bytes(), self._errored)
        if settled is None:
            return
        states[-1].write_bytes(settled)
        try:
            write_bytes(f"{storage.experiment_fs_path}/{states[-1].name}", settled, storage.storage_filesystem)
        except StorageError as refused:  # the state there stays as Ray saved it; the closing line says why
            self.refused = refused

    def _copy(self, trials: list, final: bool = False) -> None:
        if not trials or self.restore_failed is not None:
            return
        storage = trials[0].storage
        if not isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
            return
        staging = Path(storage.experiment_driver_staging_path)
        states = sorted(staging.glob(STATE_FILES))
        if not states:
            return
        stat = states[-1].stat()
        if not final and (stat.st_size, stat.st_mtime_ns) == self._state_stamp:
            return  # no save since the last look: Ray writes its state at every save
        self._state_stamp = (stat.st_size, stat.st_mtime_ns)
        files = {
            path.relative_to(staging).as_posix(): path.read_bytes() for path in staging.rglob("*") if path.is_file()
        }
        if torn_state(files[states[-1].name]) is not None:  # the driver's own disk is full: nothing whole to keep
            return
        signature = _signature(files)
        if signature == self._saved and self.refused is None:
            return  # Ray saved again, but nothing changed beyond its step counter
        try:
            write_bytes(f"{storage.experiment_fs_path}/{COPY_FILE}", _tar(files), storage.storage_filesystem)
        except StorageError as refused:  # the copy before stays whole; Ray's next save tries again
            self.refused = refused
            return
        self.refused, self._saved = None, signature

    def check_saved(self, resume_with: str | None, failure: BaseException | None = None) -> str | None:
        """After Tuner.fit returned or raised `failure`: raise StorageError, one line naming the storage
        and the cause, when Ray's state there is torn or the storage refused the last copy of a fit
        that failed; when the state is torn but the copy holds its last save, put it back and return
        the line saying so. None when all is whole (then a `failure` is not the storage's)."""
        if isinstance(failure, UsageError):  # said in its own line already (a failed restore, say)
            return None
        filesystem, root = filesystem_and_path(self.experiment)
        newest = _newest_state(filesystem, root)
        why = torn_state(_read(filesystem, f"{root}/{newest}") or b"") if newest else None
        if why is None and (failure is None or self.refused is None):
            return None
        if why is not None and self.refused is None and failure is None:
            return restore_whole_state(self.experiment)  # the disk took the copy of the last save after all
        again = f"continue the sweep with: {resume_with}" if resume_with else "continue the sweep with --resume"
        what = "Ray's state of the sweep"
        if why is None:  # its results' files (a torn error.pkl) and study's copy were refused
            what, kept = "Ray's last files of the sweep", f"its state there is whole: free space, then {again}"
        elif _read(filesystem, f"{root}/{COPY_FILE}") is not None:
            kept = f"its finished epochs and study's last whole copy of the state are kept: free space, then {again}"
        else:
            kept = "no whole copy of it is kept, so it cannot be continued: free space, then start the study again"
        cause = self.refused.cause if self.refused else f"{newest} cut short"
        raise StorageError.about(redact(self.experiment), cause, kept, what=what) from None

    @contextlib.contextmanager
    def watching_ray(self) -> Iterator[None]:
        """Inside, Ray's log records about its state are taken where study says them itself:
        a failed restore, after which Ray would start the sweep over from nothing (`on_step_begin`
        ends the run with it in one line instead; a sweep that stopped before Ray saved any state
        is started over, as Ray does), and an upload of the state that the storage refused
        (`check_saved` says it in one line at the end), each a traceback otherwise."""
        watched = [
            (logging.getLogger("ray.tune.execution.tune_controller"), self._restore_record),
            (logging.getLogger("ray.tune.execution.experiment_state"), self._upload_record),  # each save's upload
            (logging.getLogger("ray.tune.tune"), self._upload_record),  # the last save
        ]
        for log, take in watched:
            log.addFilter(take)
        try:
            yield
        finally:
            for log, take in watched:
                log.removeFilter(take)

    def _restore_record(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to restore the run state") and record.exc_info:
            filesystem, root = filesystem_and_path(self.experiment)
            if _newest_state(filesystem, root) is None:
                return True
            error = record.exc_info[1]
            why = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            self.restore_failed = (
                f"{redact(self.experiment)}: Ray could not restore the sweep's saved state ({redact(why)}); "
                "nothing was run or changed. Its trials' checkpoints and logs are kept, but --resume cannot "
                "continue it: start the study again with another --storage"
            )
            return False
        return not (self.restore_failed and message.startswith("Restarting experiment"))

    def _upload_record(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        refused = isinstance(error, OSError) and error.errno in REFUSED_WRITES
        return not (refused and "experiment state" in record.getMessage().lower())


@dataclass(frozen=True)
class Repair:
    """What `restore_whole_state` writes: files by name inside the experiment, then the torn state
    moved aside (to <name>.torn, out of Ray's pattern) unless a file of the copy replaced it."""

    files: dict[str, bytes] = field(default_factory=dict)
    torn: str | None = None
    note: str | None = None  # the line that says it


def restore_whole_state(experiment: str) -> str | None:
    """Put the kept copy back over the files of Ray's state that are torn (see the module's doc),
    before Ray restores the sweep. Returns a line saying what it did, or None when nothing was
    torn; StateLost when the state is torn and no whole copy is kept; StorageError when the disk
    still refuses the writes (then the torn state stays in place, and the next --resume repairs it)."""
    filesystem, root = filesystem_and_path(experiment)
    repair = plan_repair(experiment)
    # The experiment states last: until one is whole again, a repair cut short is repaired anew.
    for name in sorted(repair.files, key=lambda name: fnmatch.fnmatch(name, STATE_FILES)):
        filesystem.create_dir(f"{root}/{name}".rpartition("/")[0], recursive=True)
        write_bytes(f"{root}/{name}", repair.files[name], filesystem)
    if repair.torn is not None and repair.torn not in repair.files:
        filesystem.move(f"{root}/{repair.torn}", f"{root}/{repair.torn}{TORN}")
    if repair.torn is not None:
        _stand_in_for_evicted_checkpoints(filesystem, root)
    return repair.note


def _stand_in_for_evicted_checkpoints(filesystem: pafs.FileSystem, root: str) -> None:
    """An empty folder for the checkpoint just below each trial's oldest kept one. The copy can be a
    save behind the checkpoints (its write refused, a trial's next checkpoint taken): it then names
    a checkpoint that Ray's rotation has deleted since, and Ray's next rotation fails deleting it
    again (FileNotFoundError: the trial errors). The stand-in is what that rotation deletes."""
    for trial in filesystem.get_file_info(pafs.FileSelector(root)):
        if trial.type != pafs.FileType.Directory:
            continue
        kept = [
            int(info.base_name.removeprefix(CHECKPOINT_PREFIX))
            for info in filesystem.get_file_info(pafs.FileSelector(trial.path))
            if info.type == pafs.FileType.Directory
            and info.base_name.startswith(CHECKPOINT_PREFIX)
            and info.base_name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        ]
        if kept and min(kept) > 0:
            filesystem.create_dir(f"{trial.path}/{CHECKPOINT_PREFIX}{min(kept) - 1:06d}")


def plan_repair(experiment: str) -> Repair:
    """What `restore_whole_state` would do; reads only. StateLost when the state is torn and no
    whole copy is kept."""
    filesystem, root = filesystem_and_path(experiment)
    where = redact(experiment)
    newest = _newest_state(filesystem, root)
    if newest is None:
        return Repair()  # Ray saved no state: it starts the sweep again, as before
    why = torn_state(_read(filesystem, f"{root}/{newest}") or b"")
    try:
        copy = read_copy(filesystem, root)
    except ValueError as error:
        if why is None:
            return Repair()  # Ray's state is whole, and it reads nothing else of the copy's
        raise StateLost(
            f"{where}: Ray's saved state of the sweep is cut short ({newest}: {why}) and {COPY_FILE}, "
            f"study's copy of it, {error}, so --resume cannot continue it: start the study again with another --storage"
        ) from None
    if copy is None and why is not None:
        raise StateLost(
            f"{where}: Ray's saved state of the sweep is cut short ({newest}: {why}) and no whole copy of it "
            "is kept, so --resume cannot continue it; its trials' checkpoints and logs are kept: start the "
            "study again with another --storage"
        )
    logs = {}  # each log as it must be to be whole, where it is not
    for name, data in (copy or {}).items():
        if PurePosixPath(name).name in LOGS and (whole := _whole_log(filesystem, root, name, data)) is not None:
            logs[name] = whole
    if why is None:
        note = f"{where}: {len(logs)} of Ray's logs were cut short; put back from study's whole copy" if logs else None
        return Repair(logs, note=note)
    states = sorted(name for name in copy if fnmatch.fnmatch(name, STATE_FILES))
    trials = len(json.loads(copy[states[-1]])["trial_data"])
    files = {name: data for name, data in copy.items() if PurePosixPath(name).name not in LOGS} | logs
    return Repair(
        files,
        torn=newest,
        note=f"{where}: Ray's last save of the sweep's state was cut short ({newest}: {why}); put back the "
        f"whole copy study kept{_saved_at(filesystem, root)} ({trials} trials, each at the last checkpoint it names)",
    )


def read_copy(filesystem: pafs.FileSystem, root: str) -> dict[str, bytes] | None:
    """The files of the copy by name; None when there is none; ValueError (saying why) when it is
    unreadable, holds a path outside the experiment, or holds no whole experiment state."""
    data = _read(filesystem, f"{root}/{COPY_FILE}")
    if data is None:
        return None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            files = {}
            for member in archive.getmembers():
                path = PurePosixPath(member.name)
                if not member.isfile() or path.is_absolute() or ".." in path.parts or member.name.endswith(TORN):
                    raise ValueError(f"holds {member.name!r}, not a file of the experiment")
                files[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"cannot be read ({error})") from None
    states = sorted(name for name in files if fnmatch.fnmatch(name, STATE_FILES))
    if not states or torn_state(files[states[-1]]) is not None:
        raise ValueError("holds no whole experiment state")
    return files


def settle_errors(state: bytes, errored: dict[str, list[str]]) -> bytes | None:
    """Ray's experiment state with the entries of the `errored` trials replaced where it does not
    hold them as ERROR; None when it holds every one of them so (or cannot be read)."""
    try:
        saved = json.loads(state)
        trials = [json.loads(trial) for trial, _ in saved["trial_data"]]
    except (ValueError, KeyError, TypeError):
        return None
    stale = {
        i: t["trial_id"] for i, t in enumerate(trials) if t.get("trial_id") in errored and t.get("status") != "ERROR"
    }
    for i, trial_id in stale.items():
        saved["trial_data"][i] = errored[trial_id]
    return json.dumps(saved).encode() if stale else None


def torn_state(text: bytes) -> str | None:
    """Why Ray's experiment state `text` cannot be restored (its JSON is cut short, say); None when whole."""
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as error:
        return (str(error).splitlines() or [type(error).__name__])[0]
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
        return "no list of trials under 'trial_data'"
    return None


def _newest_state(filesystem: pafs.FileSystem, root: str) -> str | None:
    """The name of the newest experiment state, as Ray picks it (the largest: the name holds the date)."""
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    names = [info.base_name for info in infos if info.type == pafs.FileType.File]
    return max(fnmatch.filter(names, STATE_FILES), default=None)


def _read(filesystem: pafs.FileSystem, path: str) -> bytes | None:
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.readall()


def _whole_log(filesystem: pafs.FileSystem, root: str, name: str, copy: bytes) -> bytes | None:
    """What a log must hold to be whole, or None when it is: of the copy's lines and those on storage
    up to its last line end, the longer (Ray only appends, so both start alike)."""
    current = _read(filesystem, f"{root}/{name}")
    lines = current[: current.rfind(b"\n") + 1] if current else b""
    best = lines if len(lines) >= len(copy) else copy
    return None if best == current else best


def _saved_at(filesystem: pafs.FileSystem, root: str) -> str:
    info = filesystem.get_file_info(f"{root}/{COPY_FILE}")
    return f" at {info.mtime.astimezone():%Y-%m-%d %H:%M:%S}" if isinstance(info.mtime, datetime) else ""


def _signature(files: dict[str, bytes]) -> str:
    """What the copy holds, less Ray's step counter and times that each save of its state changes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        if fnmatch.fnmatch(name, STATE_FILES):
            with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
                data = json.dumps(json.loads(data)["trial_data"]).encode()
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for name in sorted(files):
            member = tarfile.TarInfo(name)
            member.size = len(files[name])
            archive.addfile(member, io.BytesIO(files[name]))
    return buffer.getvalue()
