"""Read a Ray Tune experiment folder from the JSON and CSV text Ray writes; nothing is ever unpickled.

    python -m study.report results/grad_clip    # reads the experiment through this module

Ray's own reader (ExperimentAnalysis) rebuilds every trial from its state with cloudpickle, so a
crafted state file would run code the moment a report is made, and a report may read a folder that
someone else wrote (a shared bucket). This module reads only text:

    experiment_state-<newest>.json   "trial_data": one [trial JSON, run-metadata JSON] pair per trial
    <trial folder>/params.json       the config again, with the values the state could only pickle
    <trial folder>/result.json       one JSON line per report (else progress.csv)
    <trial folder>/error.txt         the traceback of a failed trial

From a trial's JSON it takes `trial_id`, `status`, `config` and `relative_logdir` (its folder), from
the run metadata `error_filename` and `last_result`: all plain JSON. Ray pickles the rest: `results`,
`placement_group_factory`, `_resources`, ... as hex strings (never read here), and any value JSON
cannot hold as {"_type": "CLOUDPICKLE_FALLBACK", "value": hex} (the trial's storage, a function in
a config, a numpy integer), which counts as absent. params.pkl, error.pkl, tuner.pkl and
basic-variant-state-*.json (a pickle despite its name) are never opened.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from study.errors import UsageError
from study.storage import child_location, filesystem_and_path

EXPECTED = "expected the folder of one Ray Tune experiment as study.sweep leaves it (<storage>/<study>/ with experiment_state-*.json)"
RESULT_FILE, PROGRESS_FILE, PARAMS_FILE = "result.json", "progress.csv", "params.json"
RAY_STATUSES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")
UNREADABLE = "UNREADABLE"  # the status of a trial whose entry in the state file cannot be read
_PICKLED = "CLOUDPICKLE_FALLBACK"  # ray.tune.utils.serialization's marker of a pickled value


@dataclass(frozen=True)
class Location:
    """An experiment folder on some filesystem; `local` when it is on this machine."""

    given: str
    fs: pafs.FileSystem
    root: str
    local: Path | None

    def show(self, name: str) -> str:
        return str(self.local / name) if self.local else child_location(self.given, name)

    def read_text(self, name: str) -> str | None:
        path = f"{self.root}/{name}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as stream:
            return stream.readall().decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TrialState:
    """What the state file and the trial's folder say about one trial."""

    trial_id: str
    status: str  # Ray's (PENDING, PAUSED, TERMINATED, ERROR; RUNNING reads as PENDING, as in Ray), or UNREADABLE
    config: dict[str, Any]
    folder: str | None  # the trial's folder inside the experiment (Ray's relative_logdir); None before it starts
    error_file: str | None  # the text error file Ray names (error.txt), None when it names none
    last_result: dict[str, Any]
    problem: str | None = None  # why the trial's entry cannot be read (status UNREADABLE)
    num_failures: int = 0  # times its worker failed (Ray retried it after each, up to max_failures)


def locate(experiment_dir: str | os.PathLike, storage_filesystem: pafs.FileSystem | None = None) -> Location:
    """Check that the folder holds a Ray experiment; each way it can fail is a one-line UsageError."""
    given = str(experiment_dir)
    try:
        fs, root = (storage_filesystem, given.rstrip("/")) if storage_filesystem else filesystem_and_path(given)
        info = fs.get_file_info(root)
        entries = fs.get_file_info(pafs.FileSelector(root)) if info.type == pafs.FileType.Directory else []
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UsageError(f"{given}: cannot open ({str(error).splitlines()[0]}), {EXPECTED}") from None
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"{given}: no such folder, {EXPECTED}")
    if info.type != pafs.FileType.Directory:
        raise UsageError(f"{given}: not a folder, {EXPECTED}")
    if not entries:
        raise UsageError(f"{given}: the folder is empty, {EXPECTED}")
    if not any(is_state_file(entry.base_name) for entry in entries):
        inside = [
            entry.base_name
            for entry in entries
            if entry.type == pafs.FileType.Directory
            and any(is_state_file(e.base_name) for e in fs.get_file_info(pafs.FileSelector(entry.path)))
        ]
        hint = f"; experiments inside it: {', '.join(sorted(inside))}" if inside else ""
        raise UsageError(f"{given}: no Ray Tune experiment state (experiment_state-*.json) here, {EXPECTED}{hint}")
    local = Path(root) if isinstance(fs, pafs.LocalFileSystem) else None
    return Location(given, fs, root, local)


def is_state_file(name: str) -> bool:
    return name.startswith("experiment_state-") and name.endswith(".json")


def read_trials(location: Location) -> list[TrialState]:
    """Every trial of the newest state file (the name holds its date: the largest is the newest, as
    Ray picks it). A state file that is not Ray's JSON is a one-line UsageError; a trial entry that
    cannot be read is a trial with status UNREADABLE and the reason as its `problem`."""
    names = [info.base_name for info in location.fs.get_file_info(pafs.FileSelector(location.root))]
    name = max(filter(is_state_file, names))
    text = _read(location, name)
    try:
        state = json.loads(text if text is not None else "")
        if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
            raise ValueError("no list of trials under 'trial_data'")
    except (ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{location.show(name)}: cannot read Ray's experiment state ({reason}), {EXPECTED}") from None
    return [_trial(location, entry, index, name) for index, entry in enumerate(state["trial_data"])]


def _trial(location: Location, entry: Any, index: int, state_name: str) -> TrialState:
    pair = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
    trial, meta = _json_object(pair[0]), _json_object(pair[1]) or {}

    def unreadable(trial_id: str, why: str) -> TrialState:
        return TrialState(trial_id, UNREADABLE, {}, None, None, {}, f"cannot read its entry in {state_name}: {why}")

    if trial is None:
        return unreadable(f"unreadable_{index}", f"entry {index} is not a pair of JSON objects")
    trial_id, status, folder = trial.get("trial_id"), trial.get("status"), trial.get("relative_logdir")
    if not isinstance(trial_id, str) or not trial_id:
        return unreadable(f"unreadable_{index}", f"entry {index} has no trial_id")
    if status not in RAY_STATUSES:
        return unreadable(trial_id, f"status {status!r} is none of {', '.join(RAY_STATUSES)}")
    if folder is not None and not _is_inside(folder):
        return unreadable(trial_id, f"its folder {folder!r} is not a folder inside the experiment")
    config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
    params = _json_object(_read(location, f"{folder}/{PARAMS_FILE}")) if folder else None
    last_result = meta.get("last_result")
    return TrialState(
        trial_id=trial_id,
        status="PENDING" if status == "RUNNING" else status,  # as Ray's Trial.__setstate__: running when saved
        config=_fill(config, params or {}),
        folder=folder,
        error_file=_error_file(meta.get("error_filename")),
        last_result=last_result if isinstance(last_result, dict) else {},
        num_failures=meta["num_failures"] if isinstance(meta.get("num_failures"), int) else 0,
    )


def _json_object(text: Any) -> dict[str, Any] | None:
    """The JSON object in `text` with its pickled values left out; None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        value = _plain(json.loads(text))  # no object_hook: a pickled value stays an inert dict, then goes
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _plain(value: Any) -> Any:
    """`value` without Ray's pickled values: a dict loses the key, a list holds None in its place."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if not _is_pickled(item)}
    if isinstance(value, list):
        return [None if _is_pickled(item) else _plain(item) for item in value]
    return value


def _is_pickled(value: Any) -> bool:
    return isinstance(value, dict) and value.get("_type") == _PICKLED


def _fill(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The state's config (in the space's key order) with the values it could only pickle taken
    from params.json (Ray writes both from the same dict; its JSON logger writes such a value as a
    number or as text, and sorts the keys)."""
    filled = {}
    for key, value in config.items():
        extra = params.get(key)
        filled[key] = _fill(value, extra) if isinstance(value, dict) and isinstance(extra, dict) else value
    filled.update({key: value for key, value in params.items() if key not in config})
    return filled


def _is_inside(folder: Any) -> bool:
    """Whether Ray's relative_logdir names a folder inside the experiment (a crafted one could point anywhere)."""
    if not isinstance(folder, str) or not folder or "\\" in folder:
        return False
    path = PurePosixPath(folder)
    return not path.is_absolute() and ".." not in path.parts


def _error_file(name: Any) -> str | None:
    """The error file's name when it is a plain file of the trial's folder; never the pickled one."""
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..") or name.endswith(".pkl"):
        return None
    return name


def _read(location: Location, name: str) -> str | None:
    """A trial file's text; None when it is missing or cannot be read."""
    try:
        return location.read_text(name)
    except (OSError, pa.ArrowException):
        return None


def read_history(location: Location, trial: TrialState) -> pd.DataFrame:
    """The trial's reports in the order Ray logged them, one row per report (a resumed trial
    re-reports the epochs after its checkpoint), nested values as 'a/b' columns: result.json when
    it exists (as Ray's reader: an empty one is no reports), else progress.csv (whose columns are
    those of the first report: Ray's CSV logger drops a later one such as test_ppl); empty without either.
    A line that does not parse (a worker killed mid-write tears the last one) costs that line only."""
    if trial.folder is None:
        return pd.DataFrame()
    text = _read(location, f"{trial.folder}/{RESULT_FILE}")
    if text is not None:
        rows = [row for row in map(_json_line, text.rstrip("\n").split("\n")) if row is not None]
        return pd.json_normalize(rows, sep="/") if rows else pd.DataFrame()
    text = _read(location, f"{trial.folder}/{PROGRESS_FILE}")
    if text is None:
        return pd.DataFrame()
    complete = text[: text.rfind("\n") + 1]  # a torn last line has no newline yet
    try:
        return pd.read_csv(io.StringIO(complete), dtype={"trial_id": str}, on_bad_lines="skip")
    except ValueError:  # no header, or nothing at all
        return pd.DataFrame()


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


def trial_error_line(location: Location, trial: TrialState) -> str:
    """The last line of a failed trial's error file (the exception), or why there is none."""
    if trial.problem:
        return trial.problem
    if not trial.error_file or trial.folder is None:
        return "(no error file)"
    text = _read(location, f"{trial.folder}/{trial.error_file}")
    if text is None:
        return f"(see {trial.error_file})"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty error file)"
