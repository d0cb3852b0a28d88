"""Shared prefixes (study/sweep/prefix.py, study/sweep/prefix_search.py): the schedules' guarantee, the prefix
store, the search algorithm's holding back, and real sweeps with sharing against the same sweep
without it: bit for bit the same curves, with workers and the driver killed along the way."""

import json
import math
import os
import pickle
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune
from ray.tune.experiment import Experiment

import study
from study import metrics as m
from study.config import make_config
from study.errors import UsageError
from study.report.collect import collect
from study.sweep.cli import main, options_from_args, parse_args, resume_command
from study.sweep.prefix import (
    PREFIX_REFUSED,
    REPORTS,
    PrefixGroup,
    SharingPlan,
    TrialPrefix,
    epochs_saved,
    prefix_groups,
    prefix_of,
)
from study.sweep.prefix_search import PrefixSearch
from study.sweep.space_file import load_space
from study.sweep.spaces import trial_config
from study.sweep.tuner import run_sweep
from study.train.data import DATA_ENV, load_corpus
from study.train.schedules import LateSettings, late_settings
from study.train.state import StateError
from study.train.trainer import Trainer

from helpers import fake_experiment, finish, run_cli, tiny_text

TIMING = (m.WORDS_PER_SEC, m.EPOCH_SECONDS)  # the only metrics that differ between identical runs
COMPARED = (m.LR, m.TRAIN_PPL, m.VALID_PPL, m.TEST_PPL, *m.GRAD_METRICS, m.DIVERGED)

# Two prefix groups of two trials (lr_decay 0.5 and 1.0): one trains normally; one diverges in its
# first epoch, inside its 2-epoch prefix. ASHA's rung at epoch 3 comes right after the prefix.
SPACE = """
description: prefix sharing under test
preset: test
fixed: {epochs: 4, decay_start: 2, max_words: 0}
vary:
  run:
    cases:
      - {max_grad_norm: 1.0}
      - {max_grad_norm: .inf, learning_rate: 1.0e+12}
  lr_decay: {grid: [0.5, 1.0]}
seeds: [0]
scheduler: {grace_period: 3, reduction_factor: 2}
resources: {cpus_per_trial: 1}
"""
PREFIX_EPOCHS = 2  # min(decay_start 2, first rung 3 - 1)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a trial has: the tiny model's epoch takes milliseconds, not the
    seconds that two threads spinning against other work on a 2-core machine can take."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same_state(a, b, at: str = "state") -> None:
    """Assert two run states equal: every tensor torch.equal, every other value ==."""
    assert type(a) is type(b), at
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), at
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), at
        for key in a:
            same_state(a[key], b[key], f"{at}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), at
        for i, (x, y) in enumerate(zip(a, b)):
            same_state(x, y, f"{at}[{i}]")
    else:
        assert a == b, at


def untimed(reports: list[dict]) -> list[dict]:
    return [{key: value for key, value in report.items() if key not in TIMING} for report in reports]


@pytest.mark.parametrize(
    "schedule", [{"lr_schedule": "zaremba", "decay_start": 2}, {"lr_schedule": "plateau", "plateau_patience": 2}]
)
def test_late_settings_leave_the_prefix_bit_identical(tiny_corpus_dir, schedule):
    corpus = load_corpus(tiny_corpus_dir)
    configs = [make_config({**schedule, "epochs": 4, "lr_decay": decay}, preset="test") for decay in (0.5, 0.9)]
    late = late_settings(configs[0])
    assert late == LateSettings(frozenset({"lr_decay"}), 2)
    runs = [Trainer(config, corpus) for config in configs]
    reports = [[run.run_epoch() for _ in range(late.epochs)] for run in runs]
    same_state(runs[0].state_dict(), runs[1].state_dict())
    assert untimed(reports[0]) == untimed(reports[1])
    if schedule["lr_schedule"] == "zaremba":  # and the next epoch is where they part
        for run in runs:
            run.run_epoch()
        weights = [run.state_dict()["model"] for run in runs]
        assert not all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_schedules_that_read_lr_decay_from_the_start_declare_nothing_late():
    for schedule in ("exponential", "constant"):
        assert late_settings(make_config({"lr_schedule": schedule})) == LateSettings()
    assert late_settings(make_config({"decay_start": 0})).epochs == 0


def test_a_prefix_ends_before_the_first_rung_and_the_last_epoch():
    small = make_config(preset="small")  # 13 epochs, decay_start 4
    assert prefix_of(small, first_rung=6).epochs == 4
    assert prefix_of(small, first_rung=3).epochs == 2
    assert prefix_of(make_config({"decay_start": 20}), first_rung=None).epochs == 12
    assert prefix_of(small, first_rung=1) is None and prefix_of(make_config({"lr_schedule": "exponential"}), 6) is None
    # lr_decay leaves the key alone; any other setting changes it.
    assert prefix_of(small.model_copy(update={"lr_decay": 0.8}), 6).key == prefix_of(small, 6).key
    assert prefix_of(small.model_copy(update={"max_grad_norm": 1.0}), 6).key != prefix_of(small, 6).key


def test_grad_clip_shares_16_prefixes_of_4_epochs():
    space = load_space("grad_clip")
    groups = prefix_groups(space, 13)
    assert len(groups) == 16 and set(groups.values()) == {PrefixGroup(trials=4, epochs=4)}
    assert epochs_saved(space, 13) == 16 * 3 * 4
    assert epochs_saved(load_space("clip_modes"), 13) == 0  # nothing varies late there


@pytest.mark.parametrize(
    "sharing, figures",
    [
        ([], "592 expected with ASHA (1/2 go on at epochs 6, 12); 400 with shared prefixes"),
        (["--no-prefix-sharing"], "592 expected with ASHA (1/2 go on at epochs 6, 12)\n"),
    ],
)
def test_grad_clip_plan_counts_the_trial_epochs_sharing_saves(capsys, monkeypatch, tmp_path, sharing, figures):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no calibration cached, no corpus to time on
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert main(["grad_clip", "--dry-run", "--storage", str(tmp_path), *sharing]) == 0
    assert f"  trial-epochs: 832 for the full grid (64 x 13); {figures}" in capsys.readouterr().out


def test_resume_command_keeps_no_prefix_sharing(tmp_path):
    args = parse_args(["grad_clip", "--storage", str(tmp_path), "--no-prefix-sharing"])
    assert resume_command(args, options_from_args(args), "data").endswith("--no-prefix-sharing --resume")


def plan_for(config, tmp_path: Path) -> SharingPlan:
    prefix = prefix_of(config, first_rung=None)
    return SharingPlan("test", None, {prefix.key: PrefixGroup(2, prefix.epochs)}, str(tmp_path / "prefixes"))


def run_trial(config, corpus, plan: SharingPlan, trial_id: str = "trial") -> tuple[Trainer, list[dict]]:
    """What the trainable does with a fresh trial, without Ray: fork if it can, train the rest."""
    trainer = Trainer(config, corpus)
    shared = TrialPrefix(plan, plan.prefix(config), corpus.sha256, trial_id)
    reports = shared.take(trainer)
    for result in trainer.epochs():
        result = shared.noted({**result, m.SHARED_PREFIX: False})
        shared.after_epoch(trainer, result)
        reports.append(result)
    return trainer, reports


@pytest.mark.parametrize(
    "overrides", [{}, {"max_grad_norm": math.inf, "learning_rate": 1e12}], ids=["trains", "diverges"]
)
def test_a_fork_is_bit_identical_to_training_the_prefix(tiny_corpus_dir, tmp_path, overrides):
    corpus = load_corpus(tiny_corpus_dir)
    first, second = (
        make_config({**overrides, "epochs": 4, "decay_start": 2, "lr_decay": d}, preset="test") for d in (0.5, 0.9)
    )
    plan = plan_for(first, tmp_path)
    _, first_reports = run_trial(first, corpus, plan, "first")
    assert not any(report[m.SHARED_PREFIX] for report in first_reports)
    forked, reports = run_trial(second, corpus, plan, "second")
    alone = Trainer(second, corpus)
    trained = list(alone.epochs())
    shared = [report[m.SHARED_PREFIX] for report in reports]
    if overrides:  # diverged in epoch 1: the fork reports that epoch, diverged, and stops there too
        assert shared == [True] and reports[0][m.DIVERGED] and reports[0][m.VALID_PPL] == math.inf
    else:
        assert shared == [True, True, False, False]
    # Each epoch the fork trains says how many it took from the prefix: a resumed driver sees only the last.
    assert [report.get(m.SHARED_EPOCHS) for report in reports] == [None if flag else 2 for flag in shared]
    reports = [{key: value for key, value in report.items() if key != m.SHARED_EPOCHS} for report in reports]
    assert untimed(reports) == untimed([{**report, m.SHARED_PREFIX: flag} for report, flag in zip(trained, shared)])
    same_state(forked.state_dict()["model"], alone.state_dict()["model"])
    same_state(forked.state_dict()["optimizer"], alone.state_dict()["optimizer"])
    # The trial that stored the prefix, restarted without its checkpoint, takes it back as its own.
    _, again = run_trial(first, corpus, plan, "first")
    assert untimed(again) == untimed(first_reports) and not any(report[m.SHARED_PREFIX] for report in again)


def test_a_prefix_that_fails_its_checks_is_trained_and_stored_anew(tiny_corpus_dir, tmp_path):
    corpus = load_corpus(tiny_corpus_dir)
    config = make_config({"epochs": 3, "decay_start": 2}, preset="test")
    plan = plan_for(config, tmp_path)
    prefix = plan.prefix(config)
    run_trial(config, corpus, plan)
    path = tmp_path / "prefixes" / f"{prefix.key}.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn upload, say
    with pytest.warns(UserWarning, match=f"{prefix.key}.pt: corrupted") as warned:
        _, reports = run_trial(config, corpus, plan)
    assert not any(report[m.SHARED_PREFIX] for report in reports)
    # The first report says it, for the console (Ray's worker logs, where the warning goes, are not shown).
    line = reports[0].get(PREFIX_REFUSED, "")
    assert line.startswith(f"{path}: corrupted") and line.endswith("; not used: training the prefix instead")
    assert [report.get(PREFIX_REFUSED) for report in reports[1:]] == [None, None]
    assert [str(warning.message) for warning in warned] == [line]
    stored = plan.load(prefix.key, prefix.identity(corpus.sha256))  # replaced by a good one
    assert stored["run"]["epoch"] == 2 and untimed(stored["reports"]) == untimed(
        [{k: v for k, v in report.items() if k != PREFIX_REFUSED} for report in reports[:2]]
    )
    _, forked = run_trial(config.model_copy(update={"lr_decay": 0.9}), corpus, plan, "other")
    assert [report[m.SHARED_PREFIX] for report in forked] == [True, True, False]
    assert not any(PREFIX_REFUSED in report for report in forked)  # the fork refused nothing
    with pytest.raises(StateError, match="another corpus"):
        plan.load(prefix.key, prefix.identity({"ptb.train.txt": "0" * 64}))


@pytest.mark.parametrize("log", ["result.json", "progress.csv"])
def test_the_report_tables_leave_a_refusal_line_out(tmp_path, log):
    """A trial's first report may carry PREFIX_REFUSED, a string on that row only: the tables keep
    their columns and values (the console said it; the table of epochs holds metrics)."""
    trials = [{"max_grad_norm": 1.0, "seed": 0}, {"max_grad_norm": 5.0, "seed": 0}]
    plain = collect(str(fake_experiment(tmp_path / "plain", "  max_grad_norm: {grid: [1.0, 5.0]}", trials, 3)))
    experiment = fake_experiment(tmp_path / "refused", "  max_grad_norm: {grid: [1.0, 5.0]}", trials, 3)
    line = "s3://***@bucket/r/prefixes/ab12.pt: corrupted, its contents do not match; training the prefix instead"
    rows = [json.loads(row) for row in (experiment / "t00" / "result.json").read_text().splitlines()]
    rows[0][PREFIX_REFUSED] = line
    if log == "result.json":
        (experiment / "t00" / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:  # Ray's CSV logger takes its columns from the first report, which has the line
        (experiment / "t00" / "result.json").unlink()
        pd.DataFrame(rows).to_csv(experiment / "t00" / "progress.csv", index=False)
    refused = collect(str(experiment))
    assert PREFIX_REFUSED not in refused[0] and PREFIX_REFUSED not in refused[1]
    pd.testing.assert_frame_equal(refused[0], plain[0])
    pd.testing.assert_frame_equal(refused[1], plain[1], check_dtype=log == "result.json")


def test_a_stored_prefix_of_another_shape_is_trained_anew_not_loaded(tiny_corpus_dir, tmp_path):
    """Intact (its checksum matches) and this run's by its identity, but its run state is not shaped as the trial's."""
    corpus = load_corpus(tiny_corpus_dir)
    config = make_config({"epochs": 3, "decay_start": 2}, preset="test")
    plan = plan_for(config, tmp_path)
    prefix = plan.prefix(config)
    donor = Trainer(config, corpus)
    reports = [donor.run_epoch() for _ in range(2)]
    run = {**donor.state_dict(), "epoch": "2"}  # an epoch as text
    plan.store(prefix.key, {"run": run, "reports": reports, "trial": "donor"}, prefix.identity(corpus.sha256))
    with pytest.warns(UserWarning, match=r"not a run state of this run \(state.epoch='2' is str, not int\)"):
        _, trained = run_trial(config, corpus, plan)
    assert not any(report[m.SHARED_PREFIX] for report in trained) and len(trained) == 3
    assert plan.load(prefix.key, prefix.identity(corpus.sha256))["run"]["epoch"] == 2  # replaced by a good one


def test_a_trial_retried_inside_its_prefix_stores_every_epoch_of_it(tiny_corpus_dir, tmp_path):
    corpus = load_corpus(tiny_corpus_dir)
    config = make_config({"epochs": 3, "decay_start": 2}, preset="test")
    plan = plan_for(config, tmp_path)
    prefix = plan.prefix(config)
    trainer, shared = Trainer(config, corpus), TrialPrefix(plan, prefix, corpus.sha256, "trial")
    first = {**trainer.run_epoch(), m.SHARED_PREFIX: False}
    checkpoint = {**trainer.state_dict(), **shared.after_epoch(trainer, first)}  # what the trainable saves
    assert checkpoint[REPORTS] == [first] and not plan.is_stored(prefix.key)
    retried, again = Trainer(config, corpus), TrialPrefix(plan, prefix, corpus.sha256, "trial")  # a new worker
    retried.load_state_dict(checkpoint)
    again.resume(checkpoint)
    second = {**retried.run_epoch(), m.SHARED_PREFIX: False}
    assert again.after_epoch(retried, second) == {}
    assert plan.load(prefix.key, prefix.identity(corpus.sha256))["reports"] == [first, second]
    # A retry from a checkpoint without the reports (written with sharing off) stores nothing.
    (tmp_path / "prefixes" / f"{prefix.key}.pt").unlink()
    bare, blind = Trainer(config, corpus), TrialPrefix(plan, prefix, corpus.sha256, "trial")
    bare.load_state_dict(checkpoint)
    blind.after_epoch(bare, {**bare.run_epoch(), m.SHARED_PREFIX: False})
    assert not plan.is_stored(prefix.key)


def test_a_fork_retried_from_its_checkpoint_still_says_how_many_epochs_it_took(tiny_corpus_dir, tmp_path):
    corpus = load_corpus(tiny_corpus_dir)
    first, second = (make_config({"epochs": 4, "decay_start": 2, "lr_decay": d}, preset="test") for d in (0.5, 0.9))
    plan = plan_for(first, tmp_path)
    run_trial(first, corpus, plan, "first")
    trainer, fork = Trainer(second, corpus), TrialPrefix(plan, plan.prefix(second), corpus.sha256, "second")
    assert len(fork.take(trainer)) == 2
    third = fork.noted({**trainer.run_epoch(), m.SHARED_PREFIX: False})
    checkpoint = {**trainer.state_dict(), **fork.after_epoch(trainer, third)}  # what the trainable saves
    assert third[m.SHARED_EPOCHS] == checkpoint[m.SHARED_EPOCHS] == 2
    retried, again = Trainer(second, corpus), TrialPrefix(plan, plan.prefix(second), corpus.sha256, "second")
    retried.load_state_dict(checkpoint)
    again.resume(checkpoint)  # a new worker: it takes nothing from the store, but knows what it took
    fourth = again.noted({**retried.run_epoch(), m.SHARED_PREFIX: False})
    assert fourth[m.EPOCH] == 4 and fourth[m.SHARED_EPOCHS] == 2
    assert again.after_epoch(retried, fourth) == {m.SHARED_EPOCHS: 2}


def test_prefixes_are_stored_on_s3_storage(tiny_corpus_dir, s3_bucket):
    """--storage s3://…: prefixes go to the bucket every node reaches (a local moto server here)."""
    import pyarrow.fs as pafs

    bucket, query = s3_bucket
    corpus = load_corpus(tiny_corpus_dir)
    config = make_config({"epochs": 3, "decay_start": 2}, preset="test")
    prefix = prefix_of(config, first_rung=None)
    plan = SharingPlan(
        "test", None, {prefix.key: PrefixGroup(2, 2)}, f"s3://key:secret@bucket/results/study/prefixes?{query}"
    )
    _, reports = run_trial(config, corpus, plan)
    assert plan.is_stored(prefix.key)
    names = [info.base_name for info in bucket.get_file_info(pafs.FileSelector("bucket/results/study/prefixes"))]
    assert names == [f"{prefix.key}.pt"]  # and no temporary left behind
    _, forked = run_trial(config.model_copy(update={"lr_decay": 0.9}), corpus, plan, "other")
    assert untimed(forked[:2]) == untimed([{**report, m.SHARED_PREFIX: True} for report in reports[:2]])
    # A torn prefix there is refused in a line that names it without the URI's key and secret.
    stored = f"bucket/results/study/prefixes/{prefix.key}.pt"
    with bucket.open_input_stream(stored) as stream:
        whole = stream.readall()
    with bucket.open_output_stream(stored) as stream:
        stream.write(whole[: len(whole) // 2])
    with pytest.warns(UserWarning) as warned:
        _, retrained = run_trial(config, corpus, plan, "third")
    line = retrained[0][PREFIX_REFUSED]
    assert line.startswith(f"s3://***@bucket/results/study/prefixes/{prefix.key}.pt") and "corrupted" in line
    assert "key:" not in line and "secret" not in line and str(warned[0].message) == line


def noop(config):
    pass


def handed(search: PrefixSearch) -> list:
    trials = []
    while (trial := search.next_trial()) is not None:
        trials.append(trial)
    return trials


def decays(trials) -> list[tuple[float, float]]:
    return [(trial.config["run"]["learning_rate"], trial.config["lr_decay"]) for trial in trials]


def test_prefix_search_holds_a_groups_trials_until_its_prefix_is_trained(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    space = load_space(str(space_file))
    plan = SharingPlan.for_sweep(space, 4, 1, str(tmp_path / "experiment"))
    search = PrefixSearch(plan)
    search.add_configurations([Experiment("unit", run=noop, config=space.param_space(4), storage_path=str(tmp_path))])
    leaders = handed(search)
    assert decays(leaders) == [(1.0, 0.5), (1e12, 0.5)] and not search.is_finished()

    search.on_trial_result(leaders[0].trial_id, {m.EPOCH: 1, m.DIVERGED: False})
    assert handed(search) == []  # one epoch of two: still held
    search.save_to_dir(str(tmp_path), "session")  # as Tune does, then the driver dies
    assert not list(tmp_path.glob("*.pkl"))  # plain JSON: nothing to unpickle
    followers = {trial.config["run"]["learning_rate"]: trial for held in search._held.values() for trial in held}

    restored = PrefixSearch(plan)
    restored.restore_from_dir(str(tmp_path))
    restored.on_trial_result(leaders[0].trial_id, {m.EPOCH: PREFIX_EPOCHS, m.DIVERGED: False})
    released = handed(restored)
    assert decays(released) == [(1.0, 1.0)]
    assert_made_as_tune_made(released[0], followers[1.0])
    restored.on_trial_complete(leaders[1].trial_id, error=True)  # errored: its follower trains the prefix
    released = handed(restored)
    assert decays(released) == [(1e12, 1.0)] and restored.is_finished()
    assert_made_as_tune_made(released[0], followers[1e12])

    # Restored after the prefix was stored (its trial may have reported after the state was
    # saved): the group's trials go out at once; the other group's stay held.
    prefix = plan.prefix(trial_config(leaders[0].config, "test"))
    plan.store(prefix.key, {"run": {"epoch": 0}, "reports": [], "trial": leaders[0].trial_id}, prefix.identity({}))
    again = PrefixSearch(plan)
    again.restore_from_dir(str(tmp_path))
    assert decays(handed(again)) == [(1.0, 1.0)] and not again.is_finished()


def assert_made_as_tune_made(made, original) -> None:
    """A trial made again from the saved state is the one Tune's grid made, in all that Tune reads."""
    for name in ("trial_id", "config", "experiment_tag", "evaluated_params", "trainable_name", "stopping_criterion"):
        assert getattr(made, name) == getattr(original, name), name
    for name in ("max_failures", "export_formats", "log_to_file", "restore_path", "trial_dirname_creator"):
        assert getattr(made, name) == getattr(original, name), name
    checkpoints = made.run_metadata.checkpoint_manager, original.run_metadata.checkpoint_manager
    assert checkpoints[0].checkpoint_config == checkpoints[1].checkpoint_config
    for name in ("storage_fs_path", "experiment_dir_name", "experiment_fs_path", "trial_dir_name"):
        assert getattr(made.storage, name) == getattr(original.storage, name), name
    assert made.storage._timestamp == original.storage._timestamp  # the driver's staging folder (Ray's private)
    assert made.storage.storage_filesystem.type_name == original.storage.storage_filesystem.type_name


class Payload:
    """Unpickling this creates the marker file: what a planted search state would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def held_search(tmp_path: Path) -> tuple[PrefixSearch, list]:
    """A PrefixSearch over SPACE that has handed out its two leaders and holds their followers."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE)
    space = load_space(str(space_file))
    search = PrefixSearch(SharingPlan.for_sweep(space, 4, 1, str(tmp_path / "experiment")))
    search.add_configurations([Experiment("unit", run=noop, config=space.param_space(4), storage_path=str(tmp_path))])
    return search, handed(search)


def test_a_planted_pickle_beside_the_search_state_runs_nothing(tmp_path):
    search, _ = held_search(tmp_path)
    state = tmp_path / "state"
    search.save_to_dir(str(state), "2026-01-01_00-00-00")
    marker = tmp_path / "ran.txt"
    (state / "prefix-search-state-2099-01-01_00-00-00.pkl").write_bytes(pickle.dumps(Payload(marker)))
    restored = PrefixSearch(search.plan)
    assert restored.has_checkpoint(str(state))
    restored.restore_from_dir(str(state))  # the JSON is read; the newer pickle is never opened
    assert not marker.exists() and handed(restored) == [] and not restored.is_finished()

    (state / "prefix-search-state-2026-01-01_00-00-00.json").unlink()  # a pickle alone: refused, unread
    alone = PrefixSearch(search.plan)
    assert alone.has_checkpoint(str(state))
    alone.restore_from_dir(str(state))  # Ray would swallow an error here, and start the sweep anew
    alone.save_to_dir(str(state), "2100-01-01_00-00-00")  # as Ray does right after restoring: nothing
    assert sorted(path.suffix for path in state.iterdir()) == [".pkl"]
    shown = tmp_path / "experiment" / "prefix-search-state-2099-01-01_00-00-00.pkl"  # where Ray copied it from
    with pytest.raises(UsageError, match=rf"^{shown}: .* a pickle, which this version never loads"):
        alone.is_finished()  # what Tune asks first at every step, before it starts a trial
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda text: text[: len(text) // 2], "no JSON object of format study-prefix-search/1"),
        (lambda text: "[" * 100_000 + "]" * 100_000, "no JSON object of format"),
        (lambda text: text.replace('"ready": []', '"ready": ["nobody"]'), "it holds back a trial it does not describe"),
        (lambda text: text.replace('"total_samples": 4', '"total_samples": "4"'), "its 'total_samples' is missing"),
        (lambda text: text.replace('"trainable": "noop"', '"trainable": 7'), "its 'template' is missing or malformed"),
    ],
    ids=["truncated", "nested", "unknown-trial", "count-as-text", "template"],
)
def test_a_damaged_search_state_stops_the_resume_in_one_line(tmp_path, damage, says):
    search, _ = held_search(tmp_path)
    search.save_to_dir(str(tmp_path), "session")
    path = tmp_path / "prefix-search-state-session.json"
    path.write_text(damage(path.read_text()))
    restored = PrefixSearch(search.plan)
    restored.restore_from_dir(str(tmp_path))
    with pytest.raises(UsageError) as refused:
        restored.is_finished()
    shown = tmp_path / "experiment" / path.name
    assert str(refused.value).startswith(f"{shown}: not a prefix search state of this version of study ({says}")
    assert "\n" not in str(refused.value)


def test_study_unpickles_nothing():
    """No pickle or cloudpickle load in study/, and every torch.load weights-only: only Ray's own
    restore of a sweep (tuner.pkl, its experiment state) unpickles, and the README says so."""
    loads = re.compile(r"pickle\.loads?\(|\.Unpickler\(|torch\.load\(")
    found = [
        f"{path}:{number}: {line.strip()}"
        for path in sorted(Path(study.__file__).parent.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if loads.search(line) and "weights_only=True" not in line
    ]
    assert found == []


class Kill(tune.Callback):
    """SIGKILLs the worker of the first trial whose result matches, once per condition."""

    def __init__(self, *conditions):
        self.conditions, self.killed = list(conditions), []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for condition in list(self.conditions):
            if condition(result):
                self.conditions.remove(condition)
                self.killed.append(trial.trial_id)
                os.kill(result["pid"], signal.SIGKILL)
                return


def inside_prefix(result) -> bool:  # a trial that trains its prefix, one epoch into it
    return result[m.EPOCH] == 1 and not result[m.SHARED_PREFIX] and not result[m.DIVERGED]


def just_forked(result) -> bool:  # a trial that took its prefix, before it trained an epoch
    return result[m.EPOCH] == PREFIX_EPOCHS and result[m.SHARED_PREFIX]


@pytest.fixture(scope="module")
def sharing_space(tmp_path_factory) -> tuple[Path, Path]:
    """(space file, tiny corpus folder) for the sweeps of this module."""
    folder = tmp_path_factory.mktemp("prefix")
    (folder / "sharing.yaml").write_text(SPACE)
    (folder / "tiny").mkdir()
    for name, text in tiny_text().items():
        (folder / "tiny" / name).write_text(text, encoding="utf-8")
    return folder / "sharing.yaml", folder / "tiny"


def sweep(sharing_space, storage: Path, *flags: str, callbacks=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    space, data = sharing_space
    options = options_from_args(parse_args([str(space), "--storage", str(storage), *flags]))
    run_sweep(options, load_corpus(data), callbacks)
    return tables(Path(options.experiment))


def tables(experiment: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(experiment / "trials.parquet"), pd.read_parquet(experiment / "epochs.parquet")


@pytest.fixture(scope="module")
def unshared(ray_session, sharing_space, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials, epochs = sweep(sharing_space, tmp_path_factory.mktemp("unshared"), "--no-prefix-sharing")
    assert not epochs[m.SHARED_PREFIX].any()
    return trials, epochs


def curves(epochs: pd.DataFrame) -> dict[tuple, list[dict]]:
    """Each trial's epochs as records of the compared metrics, by (learning_rate, lr_decay)."""
    return {
        (rate, decay): group.sort_values(m.EPOCH)[[m.EPOCH, *COMPARED]].to_dict("records")
        for (rate, decay), group in epochs.groupby(["learning_rate", "lr_decay"])
    }


def assert_same_curves(epochs: pd.DataFrame, unshared: pd.DataFrame, trials: int = 4) -> None:
    """Every trial's curve complete and equal, bit for bit, to the unshared one through the epochs
    both ran (ASHA's rung may stop a different trial: it judges in the order trials arrive)."""
    ours, theirs = curves(epochs), curves(unshared)
    assert ours.keys() <= theirs.keys() and len(ours) == trials
    for setting, curve in ours.items():
        assert [row[m.EPOCH] for row in curve] == list(range(1, len(curve) + 1)), setting
        common = min(len(curve), len(theirs[setting]))
        assert common >= 1 and pd.DataFrame(curve[:common]).equals(pd.DataFrame(theirs[setting][:common])), setting


def assert_each_prefix_trained_once(epochs: pd.DataFrame, groups_trained: int = 2) -> None:
    """Per group (learning rate), one trial trained the prefix; the other took it."""
    inside = epochs[epochs[m.EPOCH] <= PREFIX_EPOCHS]
    assert not epochs.loc[epochs[m.EPOCH] > PREFIX_EPOCHS, m.SHARED_PREFIX].any()
    flags = inside.groupby(["learning_rate", "lr_decay"])[m.SHARED_PREFIX].agg(["all", "any"])
    assert (flags["all"] == flags["any"]).all()  # a trial took all of its prefix or none
    assert flags.groupby(level="learning_rate")["all"].sum().tolist() == [1] * groups_trained


@pytest.mark.slow
def test_sharing_sweep_equals_the_unshared_one_with_workers_killed(ray_session, sharing_space, unshared, tmp_path):
    killer = Kill(inside_prefix, just_forked)  # retried from a checkpoint inside the prefix; a fork retried
    trials, epochs = sweep(sharing_space, tmp_path, "--max-failures", "2", callbacks=[killer])
    assert len(killer.killed) == 2 and set(trials["status"]) <= {"completed", "stopped_early", "diverged"}
    assert_same_curves(epochs, unshared[1])
    assert_each_prefix_trained_once(epochs)
    assert (trials.set_index("learning_rate")["status"].loc[1e12] == "diverged").all()
    diverged = epochs[epochs["learning_rate"] == 1e12]
    assert diverged[m.EPOCH].tolist() == [1, 1] and diverged[m.SHARED_PREFIX].sum() == 1  # diverged inside its prefix
    trained = (~epochs[m.SHARED_PREFIX]).sum()
    assert trained == len(epochs) - 3 < len(unshared[1])
    # The seconds of a shared epoch count once, for the trial that trained it.
    forks = epochs[epochs[m.SHARED_PREFIX]].groupby("trial_id")
    for trial_id, _shared in forks:
        own = epochs[(epochs["trial_id"] == trial_id) & ~epochs[m.SHARED_PREFIX]][m.EPOCH_SECONDS].sum()
        assert trials.set_index("trial_id").loc[trial_id, "seconds"] == pytest.approx(own)


@pytest.mark.slow
def test_an_errored_prefix_is_trained_by_the_trial_that_waited_for_it(ray_session, sharing_space, unshared, tmp_path):
    killer = Kill(inside_prefix)
    trials, epochs = sweep(sharing_space, tmp_path, "--max-failures", "0", callbacks=[killer])
    statuses = trials.set_index("trial_id")["status"]
    assert statuses[killer.killed[0]] == "error" and (statuses.drop(killer.killed[0]) != "error").all()
    waited = epochs[(epochs["learning_rate"] == 1.0) & (epochs["trial_id"] != killer.killed[0])]
    assert len(waited) >= 3 and not waited[m.SHARED_PREFIX].any()  # trained its prefix itself
    assert_same_curves(epochs[epochs["trial_id"] != killer.killed[0]], unshared[1], trials=3)


class Refusals(tune.Callback):
    """The refusal lines of stored prefixes in the trials' reports, as the console view gets them."""

    def __init__(self):
        self.lines: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if PREFIX_REFUSED in result:
            self.lines.append(result[PREFIX_REFUSED])


@pytest.mark.slow
def test_a_torn_stored_prefix_is_said_in_a_report_and_trained_anew(ray_session, sharing_space, unshared, tmp_path):
    space, data = sharing_space
    options = options_from_args(parse_args([str(space), "--storage", str(tmp_path)]))
    folder = Path(options.experiment) / "prefixes"
    folder.mkdir(parents=True)
    for key in options.sharing().groups:  # what a torn upload of an earlier sweep left, say
        (folder / f"{key}.pt").write_bytes(b"PK\x03\x04 torn")
    refusals = Refusals()
    run_sweep(options, load_corpus(data), [refusals])
    said = {line.split(": ")[0]: line for line in refusals.lines}  # by file: each said once, by the trial training it
    assert len(refusals.lines) == len(said) == 2
    assert sorted(said) == sorted(f"{folder}/{key}.pt" for key in options.sharing().groups)
    assert all(": corrupted" in line and line.endswith(": training the prefix instead") for line in said.values())
    trials, epochs = tables(Path(options.experiment))
    assert PREFIX_REFUSED not in epochs and len(trials) == 4
    assert_same_curves(epochs, unshared[1])
    assert_each_prefix_trained_once(epochs)


@pytest.mark.slow
def test_a_sweep_resumed_after_its_driver_was_killed_shares_the_same_way(
    ray_session, sharing_space, unshared, tmp_path
):
    space, data = sharing_space
    args = [str(space), "--storage", str(tmp_path), "--data-dir", str(data), "--address", ray_session]
    prefixes = tmp_path / "sharing" / "prefixes"
    first = run_cli(args)
    deadline = time.time() + 300
    while not any(prefixes.glob("*.pt")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no chance to save anything more
    output = finish(first)
    assert first.returncode == -signal.SIGKILL, output[-3000:]

    second = run_cli([*args, "--resume"])
    output = finish(second)
    assert second.returncode == 0, output[-3000:]
    trials, epochs = tables(tmp_path / "sharing")
    assert len(trials) == 4 and set(trials["status"]) <= {"completed", "stopped_early", "diverged"}
    assert not epochs.duplicated(["trial_id", m.EPOCH]).any()
    assert_same_curves(epochs, unshared[1])
    assert_each_prefix_trained_once(epochs)
