"""study.report.reader on a real Ray Tune experiment of a dummy trainable: it reads what Ray's
own reader reads, and a report of a folder full of planted pickles runs none of them.

The experiment (built once per session on the local Ray of `ray_session`): two `cases` of clipping
x seeds 0, 1, 2, 3 epochs; (value, seed 2) fails at epoch 2, so Ray writes error.txt and error.pkl.
The config holds a numpy integer, which Ray's state can only pickle (params.json has it as a number).
"""

import contextlib
import json
import math
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.tune.analysis.experiment_analysis
import ray.tune.experiment.trial
import ray.tune.utils.serialization
from ray import cloudpickle, tune
from ray.tune.utils.serialization import TuneFunctionEncoder

from study import metrics as m
from study.report import reader as reader
from study.report.build import main, write_report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    {"clip_mode": "value", "max_grad_norm": 1.5},
    {"max_grad_norm": 5.0, "clip_mode": "global_norm"},  # not sorted: the report keeps this order
]
RAY_PICKLED_FIELDS = (
    "results",
    "extra_arg",
    "placement_group_factory",
    "_resources",
    "_default_placement_group_factory",
)


def dummy_trainable(config):
    c, seed = config["clip"]["max_grad_norm"], config["seed"]
    for epoch in range(1, config["epochs"] + 1):
        if config["clip"]["clip_mode"] == "value" and seed == 2 and epoch == 2:
            raise RuntimeError("planted failure at epoch 2")
        valid = 100 + c + seed + 10 / epoch
        tune.report(
            {
                m.EPOCH: epoch,
                m.LR: 1.0,
                m.TRAIN_PPL: valid - 5,
                m.VALID_PPL: valid,
                m.GRAD_NORM_P50: c / 2,
                m.DIVERGED: False,
                m.EPOCH_SECONDS: 0.25,
                **({m.TEST_PPL: valid - 1} if epoch == config["epochs"] else {}),
            }
        )


@pytest.fixture(scope="session")
def experiment(ray_session, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("reader")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module
    tune.Tuner(
        dummy_trainable,
        param_space={
            "clip": tune.grid_search(CASES),
            "seed": tune.grid_search([0, 1, 2]),
            "epochs": 3,
            "width": np.int64(16),
        },
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="exp", storage_path=str(storage), verbose=0),
    ).fit()
    return storage / "exp"


def copy_of(experiment: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(experiment, tmp_path / experiment.name))


def state_file(folder: Path) -> Path:
    return max(folder.glob("experiment_state-*.json"))


def edit_state(folder: Path, edit) -> None:
    """Replace Ray's state file by edit(state), where each trial entry is a [trial, metadata] pair of dicts."""
    path = state_file(folder)
    state = json.loads(path.read_text())
    state["trial_data"] = [[json.loads(trial), json.loads(meta)] for trial, meta in state["trial_data"]]
    edit(state)
    state["trial_data"] = [[json.dumps(trial), json.dumps(meta)] for trial, meta in state["trial_data"]]
    path.write_text(json.dumps(state))


def read(folder: Path) -> dict[str, reader.TrialState]:
    return {trial.trial_id: trial for trial in reader.read_trials(reader.locate(folder))}


def test_reader_reads_what_rays_own_reader_reads(experiment):
    analysis = tune.ExperimentAnalysis(str(experiment))  # unpickles: fine on a folder this test wrote
    trials = read(experiment)
    assert sorted(trials) == sorted(t.trial_id for t in analysis.trials) and len(trials) == 6
    location = reader.locate(experiment)
    for ray_trial in analysis.trials:
        trial = trials[ray_trial.trial_id]
        assert trial.status == ray_trial.status and trial.problem is None
        assert trial.config == ray_trial.config
        assert list(trial.config) == list(ray_trial.config) and list(trial.config["clip"]) == list(
            ray_trial.config["clip"]
        )
        assert trial.folder == ray_trial.storage.trial_dir_name
        assert trial.error_file == ray_trial.run_metadata.error_filename
        # The last result's copy of the config holds the numpy integer, pickled in the state: left out.
        ours, rays = dict(trial.last_result), dict(ray_trial.last_result)
        assert ours.pop("config") == {key: value for key, value in rays.pop("config").items() if key != "width"}
        assert ours == rays
        pd.testing.assert_frame_equal(reader.read_history(location, trial), analysis.trial_dataframes[trial.trial_id])

    failed = [t for t in trials.values() if t.status == "ERROR"]
    assert len(failed) == 1 and failed[0].config["clip"]["clip_mode"] == "value" and failed[0].config["seed"] == 2
    assert failed[0].error_file == "error.txt" and (experiment / failed[0].folder / "error.pkl").is_file()
    assert reader.trial_error_line(location, failed[0]) == "RuntimeError: planted failure at epoch 2"
    # Ray's state pickles the numpy integer; params.json, written by Ray's JSON logger, has the number.
    raw = json.loads(json.loads(state_file(experiment).read_text())["trial_data"][0][0])
    assert raw["config"]["width"]["_type"] == "CLOUDPICKLE_FALLBACK"
    assert {type(t.config["width"]) for t in trials.values()} == {int} and failed[0].config["width"] == 16


def test_torn_result_line_costs_that_line_and_progress_csv_stands_in(experiment, tmp_path):
    folder = copy_of(experiment, tmp_path)
    location = reader.locate(folder)
    trial = next(t for t in read(folder).values() if t.status == "TERMINATED")
    whole = reader.read_history(location, trial)
    assert whole[m.EPOCH].tolist() == [1, 2, 3]

    with open(folder / trial.folder / "result.json", "a") as results:
        results.write('{"epoch": 4, "valid_ppl": 1')  # a worker killed mid-write
    pd.testing.assert_frame_equal(reader.read_history(location, trial), whole)

    (folder / trial.folder / "result.json").unlink()
    with open(folder / trial.folder / "progress.csv", "a") as progress:
        progress.write("4,1.0,99")  # torn as well
    from_csv = reader.read_history(location, trial)
    columns = [m.EPOCH, m.VALID_PPL, m.DIVERGED, "trial_id"]  # Ray's CSV has the columns of the first report only
    pd.testing.assert_frame_equal(from_csv[columns], whole[columns])

    (folder / trial.folder / "progress.csv").unlink()
    assert reader.read_history(location, trial).empty


def test_a_trial_entry_that_cannot_be_read_is_an_error_trial_with_the_reason(experiment, tmp_path):
    folder = copy_of(experiment, tmp_path)
    ids = sorted(read(folder))

    def edit(state):
        trials = {trial["trial_id"]: trial for trial, _ in state["trial_data"]}
        trials[ids[1]]["status"] = "EXPLODED"
        trials[ids[2]]["relative_logdir"] = "../../elsewhere"

    edit_state(folder, edit)
    state = json.loads(state_file(folder).read_text())
    torn = next(i for i, (trial, _) in enumerate(state["trial_data"]) if json.loads(trial)["trial_id"] == ids[0])
    state["trial_data"][torn][0] = '{"trial_id": "torn'
    state_file(folder).write_text(json.dumps(state))

    trials = read(folder)
    broken = {tid: t for tid, t in trials.items() if t.status == reader.UNREADABLE}
    assert len(trials) == 6 and set(broken) == {ids[1], ids[2], f"unreadable_{torn}"}
    assert "status 'EXPLODED' is none of PENDING" in broken[ids[1]].problem
    assert "'../../elsewhere' is not a folder inside the experiment" in broken[ids[2]].problem

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no plot squeezed to nothing by odd settings
        written = write_report(str(folder), quiet=True)
    table = pd.read_parquet(written.trials).set_index("trial_id")
    assert (table.loc[list(broken), "status"] == "error").all() and (table.loc[list(broken), "epochs_run"] == 0).all()
    # An unreadable entry has no config: it is an error of no setting, and makes no key look varied.
    comparison = pd.read_parquet(written.comparison)
    assert comparison["setting"].tolist() == ["global_norm (max_grad_norm=5)", "value (max_grad_norm=1.5)"]
    assert comparison["n_trials"].tolist() == [2, 1]
    summary = (folder / "summary.md").read_text()
    assert "6 trials (2 settings with 1 to 2 seeds; 3 of no known setting: their entries could not be read)" in summary
    assert (
        f"- `unreadable_{torn}`: cannot read its entry in {state_file(folder).name}: entry {torn} is not a pair of JSON objects"
        in summary
    )


def test_a_trial_saved_while_running_reads_as_pending_as_in_ray(experiment, tmp_path):
    folder = copy_of(experiment, tmp_path)
    first = min(read(folder))

    def edit(state):
        for trial, _ in state["trial_data"]:
            if trial["trial_id"] == first:
                trial["status"] = "RUNNING"

    edit_state(folder, edit)
    assert read(folder)[first].status == "PENDING"
    trials = pd.read_parquet(write_report(str(folder), quiet=True).trials).set_index("trial_id")
    assert trials.loc[first, "status"] == "running"  # it has reports: started, not finished


@pytest.mark.parametrize("text, reason", [("{", "Expecting property name"), ('{"trial_data": 3}', "no list of trials")])
def test_a_state_file_that_is_not_rays_json_is_a_one_line_error(experiment, tmp_path, capsys, text, reason):
    folder = copy_of(experiment, tmp_path)
    older = folder / "experiment_state-2000-01-01_00-00-00.json"
    older.write_text("an older state file: never read")
    assert len(read(folder)) == 6  # the newest one is read
    newer = folder / "experiment_state-2999-01-01_00-00-00.json"
    newer.write_text(text)
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{newer}: cannot read Ray's experiment state ({reason}" in err


class Plant:
    """Unpickling this creates `marker` (pickle calls open(marker, "w"))."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_everywhere(folder: Path, marker: Path) -> int:
    """Put the payload in every pickled field of Ray's state (as Ray's TuneFunctionEncoder writes
    a pickled value, or as a hex string where Ray pickles a trial's fields), in the config and the
    last result, and over every pickle file of the folder. Returns the number of planted fields."""
    fallback = TuneFunctionEncoder().default(Plant(marker))  # {"_type": "CLOUDPICKLE_FALLBACK", "value": hex}
    planted = 0

    def plant(value):
        nonlocal planted
        if isinstance(value, dict) and value.get("_type") == "CLOUDPICKLE_FALLBACK":
            planted += 1
            return dict(fallback)
        if isinstance(value, dict):
            return {key: plant(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plant(item) for item in value]
        return value

    def edit(state):
        state["runner_data"] = plant(state["runner_data"])
        for i, (trial, meta) in enumerate(state["trial_data"]):
            trial, meta = plant(trial), plant(meta)
            for name in RAY_PICKLED_FIELDS:
                trial[name] = fallback["value"]
            for holder in (
                trial["config"],
                *(v for v in trial["config"].values() if isinstance(v, dict)),
                meta["last_result"],
            ):
                holder["planted"] = dict(fallback)
            state["trial_data"][i] = [trial, meta]

    edit_state(folder, edit)
    payload = cloudpickle.dumps(Plant(marker))
    for path in [*folder.glob("*.pkl"), *folder.glob("*/*.pkl"), *folder.glob("basic-variant-state-*.json")]:
        path.write_bytes(payload)
    for trial_folder in (p for p in folder.iterdir() if (p / "result.json").is_file()):
        (trial_folder / "error.pkl").write_bytes(payload)
    return planted


def test_report_of_a_folder_full_of_planted_pickles_runs_none_of_them(experiment, tmp_path):
    folder = copy_of(experiment, tmp_path / "bucket")
    marker = tmp_path / "pwned"
    planted = plant_everywhere(folder, marker)
    assert planted >= 6 * 3  # at least each trial's storage, checkpoint manager and numpy config value

    # `python -m study.report DIR`, with an audit hook that sees every global any unpickler looks up.
    script = (
        "import runpy, sys\n"
        "found = []\n"
        "sys.addaudithook(lambda event, args: found.append(args) if event == 'pickle.find_class' else None)\n"
        "try:\n"
        "    runpy.run_module('study.report', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('unpickled:', found, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unpickled: []" in done.stderr and not marker.exists()
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["status"]) == ["completed"] * 5 + ["error"] and "planted" not in trials.columns
    assert (trials["width"] == 16).all() and "RuntimeError: planted failure at epoch 2" in (
        folder / "summary.md"
    ).read_text()

    # The payload is live, and where Ray's reader (the report's reader before) would run it.
    check = tmp_path / "live"
    pickle.loads(bytes.fromhex(TuneFunctionEncoder().default(Plant(check))["value"])).close()
    assert check.exists()
    with contextlib.suppress(Exception):  # whatever Ray then makes of an open file in place of its objects
        tune.ExperimentAnalysis(str(folder))
    assert marker.exists()


def test_the_report_calls_no_unpickler(experiment, tmp_path, monkeypatch):
    folder = copy_of(experiment, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the report unpickled something")

    for owner, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (cloudpickle, "loads"),
        (cloudpickle, "load"),
        (ray.tune, "ExperimentAnalysis"),
        (ray.tune.analysis.experiment_analysis, "ExperimentAnalysis"),
        (ray.tune.utils.serialization, "_loads_with_cloudpickle"),
        (ray.tune.experiment.trial.Trial, "from_json_state"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    paths = write_report(str(folder), quiet=True)
    trials = pd.read_parquet(paths.trials)
    assert len(trials) == 6 and sorted(trials["status"]) == ["completed"] * 5 + ["error"]
    assert len(pd.read_parquet(paths.epochs)) == 5 * 3 + 1
    assert math.isclose(trials.loc[trials["status"] == "error", "best_valid_ppl"].item(), 100 + 1.5 + 2 + 10)
