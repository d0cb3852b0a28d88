"""Shared prefixes: trials that differ only in settings that act late train their first epochs once.

    python -m study.sweep grad_clip --dry-run     # the plan: 832 trial-epochs, 592 with ASHA, 400 sharing prefixes

With the zaremba schedule, trials that differ only in lr_decay are identical, bit for bit, through
epoch decay_start (study.train.schedules.late_settings says which settings act late, and from when). Such
trials form a group under one prefix key, a hash of every other setting and the prefix's length.
The first of them to train the prefix stores the run state after its last epoch, and the reports of
its epochs, in `<experiment>/prefixes/<key>.pt` (a folder or a URI every node reaches, s3:// too);
a trial that starts without a checkpoint of its own and finds its prefix stored loads it, reports
the stored epochs again marked `shared_prefix`, and trains on. A prefix that diverged is stored at
its last epoch: the trials that take it report the same diverged curve and stop, as if they had
trained it. A prefix is a cache: a trial that finds none (its first trial errored) or one that fails
its checks trains the epochs itself, with the same result, and stores them. study.sweep.prefix_search
holds a group's other trials back until its first trial has stored the prefix.

A prefix ends before ASHA's first rung, so that ASHA never stops a trial inside it and every rung
judges epochs that differ between the trials of a group; and before the last epoch.
Only grid spaces share prefixes: with a sampled domain every trial draws its own values.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from study import metrics as m
from study.config import TrainConfig
from study.redact import redact
from study.storage import child_location, filesystem_and_path, write_bytes
from study.sweep.spaces import SAMPLED, Space, trial_config
from study.train import StateError, decode_state, encode_state, late_settings

# In a trial's report after it refused its stored shared prefix (corrupted, or another run's) and
# trained the epochs itself: the refusal, one line with credentials masked (the console says it).
PREFIX_REFUSED = "prefix_refused"

FOLDER = "prefixes"  # inside the experiment folder
REPORTS = "prefix_reports"  # in a trial's checkpoint: its reports of the prefix epochs, until it stores them


@dataclass(frozen=True)
class Prefix:
    """The first `epochs` epochs of every run with these settings (the run's, less the late ones)."""

    settings: dict[str, Any]
    epochs: int

    @property
    def key(self) -> str:
        text = json.dumps({"settings": self.settings, "epochs": self.epochs}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def identity(self, data_sha256: dict[str, str]) -> dict[str, Any]:
        """What a stored prefix must match, as study.train.state.check_identity reads it."""
        return {"config": {**self.settings, "prefix_epochs": self.epochs}, "data_sha256": dict(data_sha256)}


def prefix_of(config: TrainConfig, first_rung: int | None) -> Prefix | None:
    """The prefix `config` shares with runs that differ from it only in late settings; None when
    its schedule has none, or they act from the first epoch."""
    late = late_settings(config)
    epochs = min(late.epochs, config.epochs - 1, first_rung - 1 if first_rung else config.epochs)
    if not late.keys or epochs < 1:
        return None
    settings = {key: value for key, value in config.model_dump().items() if key not in late.keys}
    return Prefix(settings, epochs)


@dataclass(frozen=True)
class PrefixGroup:
    trials: int  # that share the prefix, two or more
    epochs: int  # of the prefix


def prefix_groups(space: Space, epochs: int, num_samples: int | None = None) -> dict[str, PrefixGroup]:
    """The prefixes that two or more of the space's trials share, by key. A space that draws
    samples has none: Ray draws every trial's values anew, so no two trials agree on them."""
    if any(next(iter(domain)) in SAMPLED for domain in space.vary.values()):
        return {}
    from ray.tune.search.variant_generator import generate_variants  # the grid exactly as Tune expands it

    first_rung = min(space.rungs(epochs), default=None)
    repeats = num_samples or space.num_samples
    counts: Counter[str] = Counter()
    lengths = {}
    for _, config in generate_variants(space.param_space(epochs)):
        prefix = prefix_of(trial_config(config, space.preset), first_rung)
        if prefix is not None:
            counts[prefix.key] += repeats
            lengths[prefix.key] = prefix.epochs
    return {key: PrefixGroup(count, lengths[key]) for key, count in counts.items() if count > 1}


def epochs_saved(space: Space, epochs: int, num_samples: int | None = None) -> int:
    """Trial-epochs that sharing prefixes saves: each group trains its prefix once, not per trial
    (grad_clip: 16 groups of 4 trials with a 4-epoch prefix, 16 x 3 x 4 = 192). ASHA's first rung
    comes after every prefix, so the saving is the same with ASHA."""
    return sum((group.trials - 1) * group.epochs for group in prefix_groups(space, epochs, num_samples).values())


@dataclass(frozen=True)
class SharingPlan:
    """A sweep's shared prefixes: which, and where they are stored."""

    preset: str
    first_rung: int | None  # ASHA's first rung, in epochs; None without one
    groups: dict[str, PrefixGroup]
    location: str  # <experiment>/prefixes, a folder or a URI

    @classmethod
    def for_sweep(cls, space: Space, epochs: int, num_samples: int, experiment: str) -> SharingPlan | None:
        """The plan of a sweep of `space` into `experiment`; None when no two trials share a prefix."""
        groups = prefix_groups(space, epochs, num_samples)
        if not groups:
            return None
        return cls(space.preset, min(space.rungs(epochs), default=None), groups, child_location(experiment, FOLDER))

    def prefix(self, config: TrainConfig) -> Prefix | None:
        """The prefix a trial with `config` shares with others; None if it shares none."""
        prefix = prefix_of(config, self.first_rung)
        return prefix if prefix is not None and prefix.key in self.groups else None

    def is_stored(self, key: str) -> bool:
        filesystem, path = filesystem_and_path(self._file(key))
        return filesystem.get_file_info(path).type == pafs.FileType.File

    def store(self, key: str, stored: dict[str, Any], identity: dict[str, Any]) -> None:
        """Write the prefix whole: to a temporary name, then renamed (on object stores the upload
        becomes visible only once complete). Trials of a group store the same state; the last wins."""
        filesystem, path = filesystem_and_path(self._file(key))
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        write_bytes(path, encode_state(stored, identity), filesystem)

    def load(self, key: str, identity: dict[str, Any], fits=None) -> dict[str, Any] | None:
        """The stored prefix: {"run": its run state, "reports": its epochs' reports, "trial": the
        id of the trial that trained it}; None when none is stored. StateError when it is corrupted,
        another run's, incomplete, or (with `fits`, a Trainer) its run state is not shaped as the trainer's."""
        where = self._file(key)
        filesystem, path = filesystem_and_path(where)
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with filesystem.open_input_stream(path) as stream:
            stored, _ = decode_state(stream.readall(), where, identity, fits, run_entry="run")
        state, reports = stored.get("run"), stored.get("reports")
        if not isinstance(state, dict) or not isinstance(reports, list) or len(reports) != state.get("epoch"):
            raise StateError(f"{where}: holds no run state with a report for each of its epochs; not used")
        return stored

    def _file(self, key: str) -> str:
        return child_location(self.location, f"{key}.pt")


class TrialPrefix:
    """One trial's side of its shared prefix: take it from the store, or train it and store it.

    prefix = TrialPrefix(plan, plan.prefix(config), corpus.sha256, trial_id)
    reports = prefix.take(trainer)             # a fresh trial: [] when none is stored
    report = prefix.noted(report)              # each trained epoch's: says a refused stored prefix, once
    extra = prefix.after_epoch(trainer, report)   # after each trained epoch; into the checkpoint
    """

    def __init__(self, plan: SharingPlan, prefix: Prefix, data_sha256: dict[str, str], trial_id: str):
        self.plan, self.prefix, self.trial_id = plan, prefix, trial_id
        self.identity = prefix.identity(data_sha256)
        self.reports: list[dict[str, Any]] = []  # this trial's reports of the prefix epochs it trained
        self.replace = False  # the stored prefix failed its checks: store this trial's instead
        self.refused: str | None = None  # why, one line with credentials masked, until a report says it
        self.taken = 0  # epochs taken from the stored prefix: SHARED_EPOCHS in each later report and checkpoint

    def take(self, trainer) -> list[dict[str, Any]]:
        """Load the stored prefix into `trainer` and return its epochs' reports, `shared_prefix`
        unless this very trial trained them (it stored them, then lost its checkpoint: a resumed
        sweep); [] with `trainer` untouched when none is stored or it fails its checks (then this
        trial trains it, and its next report says why: see `noted`)."""
        try:
            found = self.plan.load(self.prefix.key, self.identity, fits=trainer)
        except StateError as error:
            # The location may be s3://KEY:SECRET@…: masked here, in the worker's log and on the console.
            self.refused = redact(f"{error}: training the prefix instead")
            warnings.warn(self.refused, stacklevel=2)
            self.replace = True
            return []
        if found is None:
            return []
        trainer.load_state_dict(found["run"])
        shared = found.get("trial") != self.trial_id
        self.taken = len(found["reports"]) if shared else 0
        return [{**report, m.SHARED_PREFIX: shared} for report in found["reports"]]

    def noted(self, report: dict[str, Any]) -> dict[str, Any]:
        """`report` with the epochs taken from the stored prefix (SHARED_EPOCHS), and with the
        refusal of the stored prefix under PREFIX_REFUSED in the first report after `take` refused
        it: the driver's console prints it (study/sweep/progress.py), where the warning reaches only
        Ray's worker logs. The report's tables leave both keys out."""
        if self.taken:
            report = {**report, m.SHARED_EPOCHS: self.taken}
        if self.refused is None:
            return report
        refused, self.refused = self.refused, None
        return {**report, PREFIX_REFUSED: refused}

    def resume(self, state: dict[str, Any]) -> None:
        """A trial restored from its own checkpoint takes back its reports of the prefix so far, or
        the count of the epochs it took from the stored one."""
        self.reports = list(state.get(REPORTS, []))
        self.taken = int(state.get(m.SHARED_EPOCHS, 0))

    def after_epoch(self, trainer, report: dict[str, Any]) -> dict[str, Any]:
        """Keep the report of an epoch inside the prefix; after its last one (or a divergence),
        store the prefix unless another trial has. Returns what the trial's checkpoint must hold
        besides the run state, so that a retry from it can still store the prefix."""
        if trainer.epoch > self.prefix.epochs:
            return {m.SHARED_EPOCHS: self.taken} if self.taken else {}
        # Not the refusal: the trials that fork from this prefix refused nothing.
        self.reports.append({key: value for key, value in report.items() if _plain(value) and key != PREFIX_REFUSED})
        if trainer.epoch < self.prefix.epochs and not trainer.diverged:
            return {REPORTS: list(self.reports)}
        # Only a trial that reported every prefix epoch itself (not one restored from a checkpoint
        # written without sharing) holds the reports that the prefix must carry.
        if len(self.reports) == trainer.epoch and (self.replace or not self.plan.is_stored(self.prefix.key)):
            stored = {"run": trainer.state_dict(), "reports": self.reports, "trial": self.trial_id}
            self.plan.store(self.prefix.key, stored, self.identity)
        return {}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
