"""Tune's search algorithm for shared prefixes: a group's first trial at once, the others once it has
stored the prefix (study/sweep/prefix.py).

    tune.TuneConfig(search_alg=PrefixSearch(plan), scheduler=space.asha(epochs))

The trials are Tune's own grid, in its order (a BasicVariantGenerator inside). The first trial of
each prefix group goes out at once and trains the prefix; the group's other trials are held back
until it has reported the prefix's last epoch (it stores the prefix before reporting), diverged, or
ended in any way (stopped, or errored after its retries: the others then train the prefix
themselves). Meanwhile Tune gets the grid's next trials, so no CPU waits for a prefix. Tune asks a
search algorithm that is not its BasicVariantGenerator for one trial at a time, as it does its
model-based searchers, so the choice is made when a trial can start: released trials first.

The state (the grid's place, the trials held back) is saved with Tune's experiment state and
restored by `Tuner.restore`, so a sweep resumed after its driver was killed holds and releases as
before. A group whose prefix is stored by then is released on restore: its first trial may have
ended after the saved state was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import cloudpickle
from ray.tune.experiment import Trial
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm

from study import metrics as m
from study.storage import write_bytes
from study.sweep.prefix import SharingPlan
from study.sweep.spaces import trial_config

SEARCH_STATE_FILE = "prefix-search-state-{}.pkl"  # beside Tune's experiment state; {} is Tune's session


class PrefixSearch(SearchAlgorithm):
    def __init__(self, plan: SharingPlan):
        self.plan = plan
        self._grid = BasicVariantGenerator()
        self._training: dict[str, str] = {}  # prefix key -> id of the trial training it, until it is stored
        self._held: dict[str, list[Trial]] = {}  # prefix key -> trials waiting for it, in grid order
        self._released: set[str] = set()  # prefix keys whose trials go out at once
        self._ready: list[Trial] = []  # released trials not yet given to Tune
        self._exhausted = False  # the grid has given every trial

    # What Tune asks

    @property
    def metric(self):
        return self._grid.metric

    @property
    def total_samples(self) -> int:
        return self._grid.total_samples

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return self._grid.set_search_properties(metric, mode, config, **spec)

    def add_configurations(self, experiments) -> None:
        self._grid.add_configurations(experiments)

    def next_trial(self) -> Trial | None:
        """A released trial, else the grid's next one that needs no prefix first; None for now."""
        if self._finished:  # Tune stopped the experiment
            return None
        if self._ready:
            return self._ready.pop(0)
        while not self._exhausted:
            trial = self._grid.next_trial()
            if trial is None:
                self._exhausted = True
                break
            prefix = self.plan.prefix(trial_config(trial.config, self.plan.preset))
            if prefix is None or prefix.key in self._released:
                return trial
            if prefix.key not in self._training:
                self._training[prefix.key] = trial.trial_id
                return trial
            # A Trial pickles (with this state) only with its placement group factory, which Tune
            # makes when it adds the trial; study's configs hold no placeholders to resolve first.
            trial.create_placement_group_factory()
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
        return self._finished or (self._exhausted and not self._ready and not self._held)

    # Saved with the experiment

    def has_checkpoint(self, dirpath: str) -> bool:
        return any(Path(dirpath).glob(SEARCH_STATE_FILE.format("*")))

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        # Not whether Tune stopped the search: a resumed sweep goes on with it.
        state = {**{k: v for k, v in self.__dict__.items() if k != "_finished"}, "_grid": self._grid.get_state()}
        write_bytes(
            Path(dirpath, SEARCH_STATE_FILE.format(session_str)), cloudpickle.dumps(state)
        )  # never half a state

    def restore_from_dir(self, dirpath: str) -> None:
        # Only `--resume` gets here, inside Ray's own restore, which unpickles tuner.pkl and Tune's
        # grid state from the same folder: resuming trusts the folder (README). The report never reads it.
        newest = max(Path(dirpath).glob(SEARCH_STATE_FILE.format("*")))  # session names sort by time
        state = cloudpickle.loads(newest.read_bytes())
        self._grid.set_state(state.pop("_grid"))
        self.__dict__.update(state)
        for key in [key for key in self._training if self.plan.is_stored(key)]:
            self._release(key)

    # Internals

    def _trained_by(self, trial_id: str) -> str | None:
        return next((key for key, trainer in self._training.items() if trainer == trial_id), None)

    def _release(self, key: str) -> None:
        del self._training[key]
        self._released.add(key)
        self._ready += self._held.pop(key, [])
