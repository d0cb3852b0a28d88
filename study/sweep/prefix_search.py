"""Tune's search algorithm for shared prefixes: a group's first trial at once, the others once it has
stored the prefix (study/sweep/prefix.py).

    tune.TuneConfig(search_alg=PrefixSearch(plan), scheduler=space.asha(epochs))

The trials are Tune's own grid, in its order (a BasicVariantGenerator inside, drawn whole when Tune
adds the experiment). The first trial of each prefix group goes out at once and trains the prefix;
the group's other trials are held back until it has reported the prefix's last epoch (it stores the
prefix before reporting), diverged, or ended in any way (stopped, or errored after its retries: the
others then train the prefix themselves). Meanwhile Tune gets the grid's next trials, so no CPU
waits for a prefix. Tune asks a search algorithm that is not its BasicVariantGenerator for one
trial at a time, as it does its model-based searchers, so the choice is made when a trial can start:
released trials first.

The state (which prefixes are being trained and which released; the trials not yet given to Tune,
held or not, as id, configuration and tag) is saved with Tune's experiment state as plain JSON,
`prefix-search-state-<session>.json`, and read back by `Tuner.restore` as data: nothing in it can
run code (an older study pickled it: such a sweep is refused, never unpickled). Restored, the trials
are made again as Tune made them, so a sweep resumed after its driver was killed holds and releases
as before. A group whose prefix is stored by then is released on restore: its first trial may have
ended after the saved state was written.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from ray.train._internal.storage import StorageContext
from ray.tune import CheckpointConfig
from ray.tune.experiment import Trial
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm

from study import metrics as m
from study.errors import UsageError
from study.storage import child_location, split_location, write_bytes
from study.sweep.prefix import SharingPlan
from study.sweep.spaces import trial_config

SEARCH_STATE_FILE = "prefix-search-state-{}.json"  # beside Tune's experiment state; {} is Tune's session
PICKLED_STATE_FILE = "prefix-search-state-{}.pkl"  # what an older study wrote: never loaded
STATE_FORMAT = "study-prefix-search/1"
STATE_LIMIT_BYTES = 1 << 26
CHECKPOINT_FIELDS = (
    "num_to_keep",
    "checkpoint_score_attribute",
    "checkpoint_score_order",
    "checkpoint_frequency",
    "checkpoint_at_end",
)


class PrefixSearch(SearchAlgorithm):
    def __init__(self, plan: SharingPlan):
        self.plan = plan
        self._grid = BasicVariantGenerator()
        self._total = 0  # trials in the grid
        self._pending: list[Trial] = []  # the grid's trials not yet given to Tune or held, in grid order
        self._training: dict[str, str] = {}  # prefix key -> id of the trial training it, until it is stored
        self._held: dict[str, list[Trial]] = {}  # prefix key -> trials waiting for it, in grid order
        self._released: set[str] = set()  # prefix keys whose trials go out at once
        self._ready: list[Trial] = []  # released trials not yet given to Tune
        self._refusal: UsageError | None = None  # a saved state that cannot be resumed (see restore_from_dir)

    # What Tune asks

    @property
    def metric(self):
        return self._grid.metric

    @property
    def total_samples(self) -> int:
        return self._total

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return self._grid.set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments) -> None:
        self._grid.add_configurations(experiments)
        while (trial := self._grid.next_trial()) is not None:  # a grid: finite, and plain data to save
            self._pending.append(trial)
        self._total = self._grid.total_samples

    def next_trial(self) -> Trial | None:
        """A released trial, else the grid's next one that needs no prefix first; None for now."""
        if self._refusal is not None:
            raise self._refusal
        if self._finished:  # Tune stopped the experiment
            return None
        if self._ready:
            return self._ready.pop(0)
        while self._pending:
            trial = self._pending.pop(0)
            prefix = self.plan.prefix(trial_config(trial.config, self.plan.preset))
            if prefix is None or prefix.key in self._released:
                return trial
            if prefix.key not in self._training:
                self._training[prefix.key] = trial.trial_id
                return trial
            self._held.setdefault(prefix.key, []).append(trial)
        return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        key = self._trained_by(trial_id)
        if key is not None and (result.get(m.EPOCH, 0) >= self.plan.groups[key].epochs or result.get(m.DIVERGED)):
            self._release(key)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self._grid.on_trial_complete(trial_id, result, error)
        key = self._trained_by(trial_id)
        if key is not None:
            self._release(key)

    def is_finished(self) -> bool:
        # What Tune asks first at every step, before it starts a trial: a refused restore ends the sweep here.
        if self._refusal is not None:
            raise self._refusal
        return self._finished or (not self._pending and not self._ready and not self._held)

    # Saved with the experiment

    def has_checkpoint(self, dirpath: str) -> bool:
        folder = Path(dirpath)
        return any(folder.glob(SEARCH_STATE_FILE.format("*"))) or any(folder.glob(PICKLED_STATE_FILE.format("*")))

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        if self._refusal is not None:  # Tune saves right after restoring: the refused state stays the newest
            return
        # Not whether Tune stopped the search: a resumed sweep goes on with it.
        waiting = [*self._ready, *(trial for trials in self._held.values() for trial in trials), *self._pending]
        state = {
            "format": STATE_FORMAT,
            "total_samples": self._total,
            "training": self._training,
            "released": sorted(self._released),
            "held": {key: [trial.trial_id for trial in trials] for key, trials in self._held.items()},
            "ready": [trial.trial_id for trial in self._ready],
            "pending": [trial.trial_id for trial in self._pending],
            "trials": {trial.trial_id: _trial_data(trial) for trial in waiting},
            "template": _template(waiting[0]) if waiting else None,
        }
        write_bytes(Path(dirpath, SEARCH_STATE_FILE.format(session_str)), json.dumps(state).encode())  # never half

    def restore_from_dir(self, dirpath: str) -> None:
        """Only `--resume` gets here, inside Ray's restore, which would swallow an error and start
        the experiment again from nothing: a state that cannot be resumed is kept as the refusal
        that `is_finished` raises at Tune's first step, before any trial starts (one line at the
        sweep's edge), and nothing is saved over it."""
        try:
            state = read_search_state(Path(dirpath), shown_in=split_location(self.plan.location)[0])
        except UsageError as refusal:
            self._refusal = refusal
            return
        self._total = state["total_samples"]
        self._training = dict(state["training"])
        self._released = set(state["released"])
        make = _trial_maker(state["template"], self.plan.location) if state["template"] else None
        self._ready = [make(state["trials"][trial_id]) for trial_id in state["ready"]]
        self._held = {key: [make(state["trials"][i]) for i in ids] for key, ids in state["held"].items() if ids}
        self._pending = [make(state["trials"][trial_id]) for trial_id in state["pending"]]
        for key in [key for key in self._training if self.plan.is_stored(key)]:
            self._release(key)

    # Internals

    def _trained_by(self, trial_id: str) -> str | None:
        return next((key for key, trainer in self._training.items() if trainer == trial_id), None)

    def _release(self, key: str) -> None:
        del self._training[key]
        self._released.add(key)
        self._ready += self._held.pop(key, [])


def read_search_state(folder: Path, shown_in: str | None = None) -> dict[str, Any]:
    """The newest saved state in `folder` (session names sort by time), checked to be one; a
    UsageError naming the file (as in `shown_in`, the experiment Ray copied it from) and what is
    wrong otherwise. A pickled state of an older study is refused unread."""
    saved = sorted(folder.glob(SEARCH_STATE_FILE.format("*")))
    shown = (lambda path: child_location(shown_in, path.name)) if shown_in else str
    if not saved:
        pickled = sorted(folder.glob(PICKLED_STATE_FILE.format("*")))
        raise UsageError(
            f"{shown(pickled[-1]) if pickled else folder}: the prefix search state of a sweep started by an "
            "older study, a pickle, which this version never loads (it could run code); continue the sweep with "
            "the study that started it, or start a new study with another --storage"
        )
    newest = saved[-1]
    try:
        with newest.open("rb") as stream:
            data = stream.read(STATE_LIMIT_BYTES + 1)
        state = json.loads(data) if len(data) <= STATE_LIMIT_BYTES else None
    except (OSError, ValueError, RecursionError):
        state = None
    problem = _state_problem(state)
    if problem is not None:
        raise UsageError(
            f"{shown(newest)}: not a prefix search state of this version of study ({problem}); --resume cannot "
            "continue this sweep: restore the file, or start a new study with another --storage"
        )
    return state


def _trial_data(trial: Trial) -> dict[str, Any]:
    """What tells one of the grid's trials from another."""
    return {
        "id": trial.trial_id,
        "config": trial.config,
        "tag": trial.experiment_tag,
        "evaluated_params": trial.evaluated_params,
    }


def _template(trial: Trial) -> dict[str, Any]:
    """What every trial of the experiment shares, as Tune made it from the run's configuration; the
    storage without its filesystem, which may hold credentials (it comes back from the plan)."""
    checkpoint = trial.run_metadata.checkpoint_manager.checkpoint_config
    storage = trial.storage
    return {
        "trainable": trial.trainable_name,
        "stop": trial.stopping_criterion,
        "checkpoint": {name: getattr(checkpoint, name) for name in CHECKPOINT_FIELDS},
        "max_failures": trial.max_failures,
        "export_formats": list(trial.export_formats or []),
        "log_to_file": list(trial.log_to_file),
        # Ray stages every trial's files under the experiment's timestamp on the driver, and uploads
        # that folder: a trial made again must stage under the same one (Ray keeps it private).
        "storage": {
            "path": storage.storage_fs_path,
            "experiment": storage.experiment_dir_name,
            "timestamp": storage._timestamp,
        },
    }


def _trial_maker(template: dict[str, Any], location: str):
    """A function of a trial's saved data that makes the Trial again, as Tune's grid made it."""
    from study.sweep.tuner import ray_storage  # (tuner imports this module)

    # The filesystem the sweep gives Ray for its storage, <storage>/<study>/prefixes being the plan's.
    _, filesystem = ray_storage(split_location(split_location(location)[0])[0])
    place = template["storage"]
    storage = StorageContext(place["path"], place["experiment"], storage_filesystem=filesystem)
    storage._timestamp = place["timestamp"]

    def make(data: dict[str, Any]) -> Trial:
        return Trial(
            template["trainable"],
            config=data["config"],
            trial_id=data["id"],
            storage=storage,
            evaluated_params=data["evaluated_params"],
            experiment_tag=data["tag"],
            stopping_criterion=template["stop"],
            checkpoint_config=CheckpointConfig(**template["checkpoint"]),
            export_formats=template["export_formats"],
            log_to_file=tuple(template["log_to_file"]),
            max_failures=template["max_failures"],
        )

    return make


def _state_problem(state: Any) -> str | None:
    """What makes `state` (JSON from disk: any value) not a saved PrefixSearch state, or None."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"no JSON object of format {STATE_FORMAT}"
    checks = {
        "total_samples": lambda v: type(v) is int and v >= 0,
        "training": lambda v: isinstance(v, dict) and all(isinstance(i, str) for i in v.values()),
        "released": _names,
        "held": lambda v: isinstance(v, dict) and all(_names(ids) for ids in v.values()),
        "ready": _names,
        "pending": _names,
        "trials": lambda v: isinstance(v, dict) and all(_is_trial(key, trial) for key, trial in v.items()),
        "template": lambda v: v is None or _is_template(v),
    }
    for key, valid in checks.items():
        if key not in state or not valid(state[key]):
            return f"its {key!r} is missing or malformed"
    waiting = [*state["ready"], *state["pending"], *(i for ids in state["held"].values() for i in ids)]
    if any(trial_id not in state["trials"] for trial_id in waiting):
        return "it holds back a trial it does not describe"
    if waiting and state["template"] is None:
        return "it describes trials but not how Tune makes them"
    return None


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_trial(key: str, trial: Any) -> bool:
    return (
        isinstance(trial, dict)
        and trial.get("id") == key
        and isinstance(trial.get("tag"), str)
        and isinstance(trial.get("config"), dict)
        and isinstance(trial.get("evaluated_params"), dict)
    )


def _is_template(template: Any) -> bool:
    if not isinstance(template, dict):
        return False
    storage, checkpoint, log = template.get("storage"), template.get("checkpoint"), template.get("log_to_file")
    plain = (type(None), bool, int, float, str)
    return (
        isinstance(template.get("trainable"), str)
        and isinstance(template.get("stop"), dict)
        and type(template.get("max_failures")) is int
        and _names(template.get("export_formats"))
        and isinstance(log, list)
        and len(log) == 2
        and all(item is None or isinstance(item, str) for item in log)
        and isinstance(checkpoint, dict)
        and set(checkpoint) <= {field.name for field in fields(CheckpointConfig)} & set(CHECKPOINT_FIELDS)
        and all(isinstance(value, plain) for value in checkpoint.values())
        and isinstance(storage, dict)
        and all(isinstance(storage.get(name), str) for name in ("path", "experiment", "timestamp"))
    )
