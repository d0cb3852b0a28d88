"""Real sweeps on a local Ray: the smoke study end to end, divergence, a killed worker, an
interrupted and resumed sweep (the multi-node cluster: tests/test_cluster.py)."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
from ray import tune

from study import metrics as m
from study.sweep.cli import main
from study.sweep.estimate import cpu_model
from study.sweep.tuner import experiment_exists, restored_run_config
from study.train.data import load_corpus

from helpers import finish, run_cli, sweep, sweep_args

pytestmark = pytest.mark.slow

TINY_SPACE = """
description: tiny sweep for tests
preset: test
fixed: {{epochs: {epochs}, max_words: 0, clip_mode: none}}
vary:
{vary}
seeds: [0]
scheduler: {{grace_period: {grace}, reduction_factor: 2}}
resources: {{cpus_per_trial: 1}}
"""


def write_space(folder: Path, name: str, vary: str, epochs: int = 3, grace: int = 2) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY_SPACE.format(epochs=epochs, vary=vary, grace=grace))
    return path


def tables(experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(Path(experiment) / "trials.parquet"), pd.read_parquet(Path(experiment) / "epochs.parquet")


def test_smoke_sweep_end_to_end(ray_session, ptb_dir, tmp_path):
    options, results = sweep(["smoke", "--storage", str(tmp_path)], load_corpus(ptb_dir))
    trials, epochs = tables(options.experiment)
    assert len(trials) == len(results) == 6 and trials["trial_id"].is_unique
    assert (trials["status"] == "stopped_early").sum() >= 1
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    assert len(epochs) == trials["epochs_run"].sum()
    assert not epochs.duplicated(["trial_id", m.EPOCH]).any()
    completed = trials[trials["status"] == "completed"]
    assert (completed["epochs_run"] == 4).all() and completed["test_ppl"].notna().all()
    assert {"max_grad_norm", "lr_decay"} <= set(epochs.columns)
    assert experiment_exists(options.experiment)
    # Each epoch names the processor it trained on; the summary says which trained how many.
    assert (epochs[m.CPU] == cpu_model()).all() and (epochs[m.DEVICE] == "cpu").all() and m.GPU not in epochs
    trained = (~epochs[m.SHARED_PREFIX]).sum()
    summary = (Path(options.experiment) / "summary.md").read_text()
    assert f": {trained} epochs on {cpu_model()}." in summary


def test_diverging_trial_is_recorded_while_the_sweep_finishes(ray_session, tiny_corpus_dir, tmp_path):
    space = write_space(tmp_path, "diverge", "  learning_rate: {grid: [1.0, 1.0e+12]}", epochs=3, grace=3)
    options, _ = sweep([str(space), "--storage", str(tmp_path / "out")], load_corpus(tiny_corpus_dir))
    trials, epochs = tables(options.experiment)
    by_rate = trials.set_index("learning_rate")["status"].to_dict()
    assert by_rate == {1.0: "completed", 1.0e12: "diverged"}
    diverged = epochs[epochs["learning_rate"] == 1.0e12]
    assert diverged[m.DIVERGED].iloc[-1] and diverged[m.VALID_PPL].iloc[-1] == math.inf


def test_sweep_into_s3_storage_writes_every_table_there(ray_session, tiny_corpus_dir, tmp_path, s3_bucket):
    """--storage s3://… against a local S3 server (moto) on 127.0.0.1: Ray's files, study.json and
    the report all land in the bucket, and `study.report` reads the experiment back from there."""
    bucket, query = s3_bucket
    space = write_space(tmp_path, "remote", "  max_grad_norm: {grid: [1.0, 5.0]}", epochs=2, grace=2)
    options, _ = sweep(
        [str(space), "--storage", f"s3://key:secret@bucket/results?{query}"], load_corpus(tiny_corpus_dir)
    )
    assert options.experiment == f"s3://key:secret@bucket/results/remote?{query}"
    names = {info.base_name for info in bucket.get_file_info(pafs.FileSelector("bucket/results/remote"))}
    assert {"study.json", "trials.parquet", "epochs.parquet", "comparison.parquet", "summary.md"} <= names
    trials = pd.read_parquet("bucket/results/remote/trials.parquet", filesystem=bucket)
    assert sorted(trials["max_grad_norm"]) == [1.0, 5.0] and set(trials["status"]) == {"completed"}
    epochs = pd.read_parquet("bucket/results/remote/epochs.parquet", filesystem=bucket)
    assert len(epochs) == 4
    done = subprocess.run(
        [sys.executable, "-m", "study.report", options.experiment, "--provenance"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "remote" in done.stdout, done.stderr
    leaks = {
        info.base_name
        for info in bucket.get_file_info(pafs.FileSelector("bucket/results", recursive=True))
        if info.type == pafs.FileType.File and b"secret" in bucket.open_input_file(info.path).read()
    }
    # Ray pickles the storage filesystem, credentials and all, into tuner.pkl and its search state
    # (README: use AWS_* variables); nothing else in the bucket and nothing printed holds them.
    assert {name for name in leaks if name != "tuner.pkl" and not name.startswith("basic-variant-state")} == set()
    assert "secret" not in done.stdout + done.stderr


class KillOnce(tune.Callback):
    """Kills the trial's worker process (SIGKILL) the first time it reports `epoch`."""

    def __init__(self, epoch: int):
        self.epoch, self.killed = epoch, False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed and result[m.EPOCH] == self.epoch:
            self.killed = True
            os.kill(result["pid"], signal.SIGKILL)


def test_killed_worker_recovers_from_its_checkpoint_with_the_same_result(
    ray_session, tiny_corpus_dir, tmp_path, monkeypatch
):
    # Ray uploads its driver's logs (result.json) to storage at its saves: here only when a trial has
    # checkpointed twice since the last (CheckpointConfig(num_to_keep=2)), after epochs 2 and 4. A
    # restarted trial's log starts from storage's copy, so the worker killed at epoch 4 leaves a copy
    # without epoch 3, whose checkpoint the trial restarts from: its line must still be there.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    space = write_space(tmp_path, "one", "  keep_prob: {grid: [0.5]}", epochs=5, grace=5)
    corpus = load_corpus(tiny_corpus_dir)
    calm, _ = sweep([str(space), "--storage", str(tmp_path / "calm")], corpus)
    killer = KillOnce(epoch=4)
    hit, _ = sweep([str(space), "--storage", str(tmp_path / "hit"), "--max-failures", "2"], corpus, [killer])
    assert killer.killed
    (calm_trials, calm_epochs), (hit_trials, hit_epochs) = tables(calm.experiment), tables(hit.experiment)
    assert hit_trials["status"].tolist() == ["completed"]
    assert hit_trials["num_failures"].tolist() == [1] and calm_trials["num_failures"].tolist() == [0]
    assert hit_trials["node_ids"].iloc[0] == hit_epochs["node_id"].iloc[0] and len(hit_trials["node_ids"].iloc[0]) == 56
    assert hit_epochs[m.EPOCH].tolist() == [1, 2, 3, 4, 5]
    assert hit_trials["test_ppl"].iloc[0] == pytest.approx(calm_trials["test_ppl"].iloc[0], abs=1e-6)
    assert hit_epochs[m.VALID_PPL].tolist() == pytest.approx(calm_epochs[m.VALID_PPL].tolist(), abs=1e-6)


def test_interrupted_sweep_resumes_without_rerunning_or_duplicating(ray_session, tiny_corpus_dir, tmp_path, capsys):
    space = write_space(tmp_path, "resume", "  max_grad_norm: {grid: [0.5, 1, 2, 5]}", epochs=4, grace=2)
    args = sweep_args(space, tmp_path / "out", tiny_corpus_dir, ray_session)
    first = run_cli(args)
    experiment = tmp_path / "out" / "resume"
    deadline = time.time() + 120
    while not any(p.stat().st_size for p in experiment.glob("*/result.json")) and time.time() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    output = finish(first)
    assert first.returncode == 130, output[-3000:]  # interrupted before the end, and says so
    printed = next(line for line in output.splitlines() if line.startswith("Resume: "))[len("Resume: ") :]
    words = shlex.split(printed)
    assert words[:3] == ["python", "-m", "study.sweep"] and words[3] == str(space) and words[-1] == "--resume"

    before = {path: path.read_bytes() for path in experiment.rglob("*") if path.is_file()}
    # The printed command with a change, in this process (the refusals come before any Ray call).
    for changed, named in ((["--seeds", "0", "1"], "--seeds [0, 1]"), (["--epochs", "9"], "--epochs 9")):
        assert main([*words[3:], *changed]) == 2
        refused = capsys.readouterr()
        assert refused.err.startswith(f"error: {named}: --resume continues"), refused.err
        assert "trials:" not in refused.out  # no plan it would not run
    space.write_text(space.read_text().replace("grace_period: 2", "grace_period: 3"))
    assert main(words[3:]) == 2
    assert "changed since the sweep" in capsys.readouterr().err
    space.write_text(space.read_text().replace("grace_period: 3", "grace_period: 2"))
    assert {path: path.read_bytes() for path in experiment.rglob("*") if path.is_file()} == before

    second = subprocess.Popen([sys.executable, *words[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = finish(second)
    assert second.returncode == 0, output[-3000:]
    trials, epochs = tables(str(experiment))
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped_early"}
    assert not epochs.duplicated(["trial_id", m.EPOCH]).any()
    for _, trial in trials.iterrows():  # every epoch of every trial exactly once, in order
        assert epochs.loc[epochs["trial_id"] == trial["trial_id"], m.EPOCH].tolist() == list(
            range(1, trial["epochs_run"] + 1)
        )


def test_a_second_run_into_the_same_results_is_refused(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "study.json").write_text("{}")
    (tmp_path / "smoke" / "tuner.pkl").write_bytes(b"Ray's saved sweep")  # what --resume continues
    done = subprocess.run(
        [sys.executable, "-m", "study.sweep", "smoke", "--storage", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--resume" in done.stderr and done.stderr.count("\n") == 1
    assert (tmp_path / "smoke" / "study.json").read_text() == "{}"


def test_a_sweep_started_before_the_module_move_is_refused_on_resume_in_one_line(tmp_path):
    """Ray pickled such a sweep's trainable and search algorithm under the old module names."""
    old = {"space": "smoke", "versions": {"study": "0.1.0"}, "git_commit": "cbb791a"}  # no "layout"
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "study.json").write_text(json.dumps(old))
    (tmp_path / "smoke" / "tuner.pkl").write_bytes(b"Ray's saved sweep")
    done = subprocess.run(
        [sys.executable, "-m", "study.sweep", "smoke", "--storage", str(tmp_path), "--resume"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "started by study 0.1.0" in done.stderr and "git commit cbb791a" in done.stderr
    assert json.loads((tmp_path / "smoke" / "study.json").read_text()) == old


def test_the_one_ray_private_access_still_reaches_the_run_config_ray_will_use(ray_session, tmp_path):
    """Fails on the Ray release that moves Tuner._local_tuner or its run config."""
    run_config = tune.RunConfig(name="probe", storage_path=str(tmp_path), verbose=1)
    tuner = tune.Tuner(lambda config: None, run_config=run_config)
    found = restored_run_config(tuner)
    assert found.name == "probe"
    found.verbose = 0
    assert restored_run_config(tuner).verbose == 0  # changed in place: what fit() will read


@pytest.mark.parametrize(
    "args, named",
    [
        (["nonesuch"], "nonesuch"),
        (["smoke", "--cpus-per-trial", "-1"], "--cpus-per-trial"),
        (["smoke", "--epochs", "0"], "--epochs"),
    ],
)
def test_bad_sweep_arguments_are_one_line(args, named, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "study.sweep", *args, "--storage", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and named in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_dry_run_over_a_sweep_that_never_saved_its_state_starts_nothing(resume, tmp_path, capsys):
    experiment = tmp_path / "smoke"
    experiment.mkdir()
    (experiment / "study.json").write_text('{"space": "smoke"}')  # what a kill before Ray's first save leaves
    assert main(["smoke", "--dry-run", "--storage", str(tmp_path), *resume]) == 0
    out = capsys.readouterr().out
    assert "stopped before Ray saved its state" in out and "a run without --dry-run starts it again" in out
    assert "starting it again" not in out
    assert sorted(path.name for path in experiment.iterdir()) == ["study.json"]
