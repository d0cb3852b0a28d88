"""The study as planned (study.report.planned): study.json's counts as the sweep writes them, the
same counts from the space text of a study.json that predates them, and odd values read from disk."""

import json
from types import SimpleNamespace

import pytest

from study.report.planned import Plan, study_plan
from study.sweep.space_file import available_spaces, load_space
from study.sweep.tuner import SweepOptions, plan, saved_by_sharing, write_study_file

COUNTS = ("planned_trials", "planned_settings", "planned_trial_epochs", "expected_trial_epochs")


def study_file(tmp_path, space_name: str, **overrides) -> dict:
    """study.json as write_study_file writes it for `space_name` (no corpus read: its checksums are made up)."""
    space = load_space(space_name, seeds=overrides.pop("seeds", None))
    options = SweepOptions(
        space, space.base_config().epochs, str(tmp_path), 1, 0, overrides.pop("num_samples", space.num_samples)
    )
    write_study_file(options, SimpleNamespace(sha256={"ptb.train.txt": "0" * 64}))
    return json.loads((tmp_path / space.name / "study.json").read_text())


@pytest.mark.parametrize("name", available_spaces())
def test_the_report_counts_the_sweeps_plan_with_or_without_its_recorded_counts(tmp_path, name):
    study = study_file(tmp_path, name)
    recorded = study_plan(study)
    assert recorded.trials == study["planned_trials"] and recorded.trial_epochs == study["planned_trial_epochs"]
    older = study_plan({key: value for key, value in study.items() if key not in COUNTS})
    assert (older.trials, older.settings, older.trial_epochs) == (
        recorded.trials,
        recorded.settings,
        recorded.trial_epochs,
    )


def test_grad_clip_is_planned_as_the_sweeps_plan_prints_it(tmp_path):
    study = study_file(tmp_path, "grad_clip")
    assert study_plan(study) == Plan(trials=64, settings=32, trial_epochs=832, expected_trial_epochs=400.0)
    space = load_space("grad_clip")
    options = SweepOptions(space, 13, str(tmp_path), 1, 0, 1)
    printed = plan(options, None, shared_epochs_saved=saved_by_sharing(options))
    assert "trials: 64," in printed and "832 for the full grid" in printed and "400 with shared prefixes" in printed


def test_seeds_and_samples_given_on_the_command_line_are_the_plans(tmp_path):
    study = study_file(tmp_path, "smoke", seeds=[3, 4, 5])
    assert study_plan(study).trials == study_plan({k: v for k, v in study.items() if k not in COUNTS}).trials == 18
    assert study_plan(study).per_setting == 3


def test_a_drawn_space_has_trials_but_no_settings_to_count():
    text = "description: d\nvary:\n  learning_rate: {uniform: [0.5, 1.5]}\n  max_grad_norm: {grid: [1, 5]}\nseeds: [0, 1]\n"
    drawn = study_plan({"space_text": text, "epochs": 3, "num_samples": 4})
    assert drawn == Plan(trials=16, settings=None, trial_epochs=48, expected_trial_epochs=None)
    assert drawn.per_setting is None


@pytest.mark.parametrize(
    "study",
    [
        {},  # no space text: nothing to count
        {"space_text": "description: [unclosed"},
        {"space_text": "- a list"},
        {"space_text": "vary: {max_grad_norm: {grid: 5}}"},
        {"space_text": "vary: {max_grad_norm: {grid: []}}"},
        {"space_text": "vary: {max_grad_norm: 5}"},
        {"space_text": "seeds: 3"},
        {"planned_trials": "64"},
        {"planned_trials": True},
        {"planned_trials": -1},
        {"planned_trials": 2.5},
    ],
)
def test_a_study_file_that_says_too_little_or_nonsense_has_no_plan(study):
    assert study_plan({"epochs": 4, **study}) is None


def test_odd_recorded_counts_are_left_out_not_trusted():
    study = {"planned_trials": 8, "planned_settings": "4", "epochs": 2, "expected_trial_epochs": float("nan")}
    assert study_plan(study) == Plan(trials=8, settings=None, trial_epochs=16, expected_trial_epochs=None)
