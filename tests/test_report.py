"""The report on real Ray Tune experiments of a dummy trainable (no training: metrics by formula),
so that every number in the tables can be checked by hand.

Two experiments are built once per session on the local Ray of `ray_session`:
- grid:  max_grad_norm {1, inf} x lr_decay {0.5, 1.0} x seed {0, 1}, 4 epochs, with a study.json.
         Unclipped seed 1 diverges at epoch 3; unclipped lr_decay 1.0 seed 0 stops after epoch 2.
- cases: a `cases` group of three clipping modes, one seed, 3 epochs, no study.json.
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from ray import cloudpickle, tune

from study import metrics as m
from study import tables
from study.report import build as report
from study.report import comparison, plots
from study.report.build import main, write_report
from study.report.collect import collect, load_experiment
from study.report.comparison import compare, pivot

EPOCHS = 4
SPACE_TEXT = """description: >-
  Dummy study for the report's tests: clipping x decay.
preset: test
vary:
  max_grad_norm: {grid: [1, .inf]}
  lr_decay: {grid: [0.5, 1.0]}
seeds: [0, 1]
"""
SHA = {"ptb.train.txt": "a" * 64, "ptb.valid.txt": "b" * 64, "ptb.test.txt": "c" * 64}
STUDY = {
    "space": "dummy",
    "space_text": SPACE_TEXT,
    "preset": "test",
    "epochs": EPOCHS,
    "varied": ["max_grad_norm", "lr_decay", "seed"],
    "data_sha256": SHA,
}
CASES = [
    {"clip_mode": "global_norm", "max_grad_norm": 5.0},
    {"clip_mode": "value", "max_grad_norm": 1.7},
    {"clip_mode": "none", "max_grad_norm": math.inf},
]
T_975_2 = 4.302652729911275  # Student t, 97.5th percentile, 2 degrees of freedom (a table's value)


def valid_ppl(c: float, decay: float, seed: int, epoch: int) -> float:
    """The dummy's validation perplexity: falls with the epoch, worse without clipping."""
    return 100 + 20 * decay + 3 * seed + (15 if math.isinf(c) else c) + 12 / epoch


def dummy_trainable(config):
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for group in (v for v in config.values() if isinstance(v, dict)):
        flat.update(group)
    c, decay, seed, epochs = float(flat["max_grad_norm"]), flat["lr_decay"], flat["seed"], flat["epochs"]
    for epoch in range(1, epochs + 1):
        diverged = math.isinf(c) and seed == 1 and epoch == 3
        valid = math.inf if diverged else valid_ppl(c, decay, seed, epoch)
        p50 = 0.5 * epoch + decay
        result = {
            m.EPOCH: epoch,
            m.LR: decay**epoch,
            m.TRAIN_PPL: valid - 10,
            m.VALID_PPL: valid,
            m.GRAD_NORM_MEAN: 1.1 * p50,
            m.GRAD_NORM_P50: p50,
            m.GRAD_NORM_P90: 2 * p50,
            m.GRAD_NORM_MAX: 4 * p50,
            m.CLIP_FRACTION: 0.0 if math.isinf(c) else min(1.0, p50 / (2 * c)),
            m.WORDS_PER_SEC: 1000.0,
            m.EPOCH_SECONDS: 0.5,
            m.DIVERGED: diverged,
        }
        if epoch == epochs:
            result[m.TEST_PPL] = valid - 5
        tune.report(result)
        if diverged or (math.isinf(c) and decay == 1.0 and seed == 0 and epoch == 2):
            return  # diverged, or "stopped early" as ASHA would


def run_experiment(storage: Path, name: str, space: dict) -> Path:
    # Ray's workers cannot import this test module: send the trainable as code, not as a name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tune.Tuner(
        dummy_trainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),  # one worker start per CPU, not per trial
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    ).fit()
    return storage / name


@pytest.fixture(scope="session")
def experiments(ray_session, tmp_path_factory) -> dict[str, Path]:
    storage = tmp_path_factory.mktemp("storage")
    (storage / "grid").mkdir()
    (storage / "grid" / "study.json").write_text(json.dumps(STUDY))  # as the sweep writes it, before fit
    grid = run_experiment(
        storage,
        "grid",
        {
            "max_grad_norm": tune.grid_search([1.0, math.inf]),
            "lr_decay": tune.grid_search([0.5, 1.0]),
            "seed": tune.grid_search([0, 1]),
            "epochs": EPOCHS,
            "momentum": 0.0,
        },
    )
    cases = run_experiment(
        storage,
        "cases",
        {
            "clip": tune.grid_search(CASES),
            "lr_decay": 0.5,
            "seed": 0,
            "epochs": 3,
            "momentum": 0.0,
        },
    )
    return {"grid": grid, "cases": cases}


@pytest.fixture(scope="session")
def reported(experiments) -> dict[str, report.ReportPaths]:
    return {name: write_report(str(folder), quiet=True) for name, folder in experiments.items()}


def copy_experiment(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def by_setting(table: pd.DataFrame, **setting) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in setting.items():
        mask &= table[key] == value
    assert mask.sum() == 1, setting
    return table[mask].iloc[0]


@pytest.mark.slow
def test_trials_table_has_one_row_per_trial_with_status_and_flat_config(reported):
    trials = pd.read_parquet(reported["grid"].trials)
    assert len(trials) == 8 and trials["trial_id"].is_unique
    status = {(r.max_grad_norm, r.lr_decay, r.seed): r.status for r in trials.itertuples()}
    assert status == {
        (1.0, 0.5, 0): "completed",
        (1.0, 0.5, 1): "completed",
        (1.0, 1.0, 0): "completed",
        (1.0, 1.0, 1): "completed",
        (math.inf, 0.5, 0): "completed",
        (math.inf, 0.5, 1): "diverged",
        (math.inf, 1.0, 0): "stopped_early",
        (math.inf, 1.0, 1): "diverged",
    }
    stopped = by_setting(trials, max_grad_norm=math.inf, lr_decay=1.0, seed=0)
    assert stopped["epochs_run"] == 2 and math.isnan(stopped["test_ppl"])
    assert stopped["best_valid_ppl"] == valid_ppl(math.inf, 1.0, 0, 2) and stopped["best_epoch"] == 2
    diverged = by_setting(trials, max_grad_norm=math.inf, lr_decay=0.5, seed=1)
    assert diverged["epochs_run"] == 3 and diverged["final_valid_ppl"] == math.inf
    assert diverged["best_valid_ppl"] == valid_ppl(math.inf, 0.5, 1, 2) and math.isnan(diverged["test_ppl"])
    done = by_setting(trials, max_grad_norm=1.0, lr_decay=0.5, seed=1)
    assert done["test_ppl"] == valid_ppl(1.0, 0.5, 1, 4) - 5 and done["seconds"] == pytest.approx(4 * 0.5)
    assert {"momentum", "epochs"} <= set(trials.columns)

    cases = pd.read_parquet(reported["cases"].trials)
    assert "clip" not in cases.columns  # the cases label is flattened away
    assert sorted(zip(cases["clip_mode"], cases["max_grad_norm"])) == sorted(
        (c["clip_mode"], c["max_grad_norm"]) for c in CASES
    )


@pytest.mark.slow
def test_epochs_table_is_tidy_with_the_varied_settings(reported):
    epochs = pd.read_parquet(reported["grid"].epochs)
    trials = pd.read_parquet(reported["grid"].trials)
    assert len(epochs) == trials["epochs_run"].sum() == 4 * 5 + 2 + 3 + 3
    assert not epochs.duplicated(["trial_id", m.EPOCH]).any()
    assert {"max_grad_norm", "lr_decay", "seed", *m.EPOCH_METRICS, m.TEST_PPL} <= set(epochs.columns)
    assert "momentum" not in epochs.columns  # not varied
    last = epochs[epochs[m.DIVERGED]]
    assert len(last) == 2 and (last[m.VALID_PPL] == math.inf).all() and (last[m.EPOCH] == 3).all()


@pytest.mark.slow
def test_comparison_matches_hand_computed_means_and_t_intervals(reported):
    comparison = pd.read_parquet(reported["grid"].comparison)
    assert len(comparison) == 4 and "seed" not in comparison.columns
    both = by_setting(comparison, max_grad_norm=1.0, lr_decay=0.5)
    # best = epoch 4: 100 + 10 + 1 + 3 = 114 (seed 0) and 117 (seed 1)
    assert both["n_seeds"] == 2 and both["n_valid"] == 2
    assert both["best_valid_ppl_mean"] == pytest.approx(115.5)
    assert both["best_valid_ppl_std"] == pytest.approx(3 / math.sqrt(2))
    # Seed noise pooled over the two settings with two seeds (equal spreads: Bartlett p = 1):
    # residuals +-1.5 four times, 2 degrees of freedom, SD 3 / sqrt(2); a per-setting t would have 1.
    pooled_sd = math.sqrt(4 * 1.5**2 / 2)
    half = T_975_2 * pooled_sd / math.sqrt(2)  # = 4.303 * 1.5
    assert both["best_valid_ppl_ci95_low"] == pytest.approx(115.5 - half)
    assert both["best_valid_ppl_ci95_high"] == pytest.approx(115.5 + half)
    assert both["best_valid_ppl_ci_method"] == "pooled t, 2 df"
    assert both["test_ppl_mean"] == pytest.approx(110.5) and both["n_test"] == 2

    # Unclipped, decay 0.5: seed 1 diverged and is left out; its one trial gets the pooled interval.
    one = by_setting(comparison, max_grad_norm=math.inf, lr_decay=0.5)
    assert one["n_valid"] == 1 and one["n_diverged"] == 1
    assert one["best_valid_ppl_mean"] == valid_ppl(math.inf, 0.5, 0, 4)
    assert one["best_valid_ppl_ci95_high"] - one["best_valid_ppl_mean"] == pytest.approx(T_975_2 * pooled_sd)
    assert math.isnan(one["best_valid_ppl_std"])
    # Unclipped, no decay: the stopped trial counts for validation, not for test.
    stopped = by_setting(comparison, max_grad_norm=math.inf, lr_decay=1.0)
    assert stopped["n_stopped_early"] == 1 and stopped["n_diverged"] == 1 and stopped["n_test"] == 0
    assert stopped["best_valid_ppl_mean"] == valid_ppl(math.inf, 1.0, 0, 2) and math.isnan(stopped["test_ppl_mean"])
    assert stopped["epochs_run_mean"] == pytest.approx((2 + 3) / 2)


def test_interval_is_student_t_and_empty_below_two():
    n, mean, std, _low, high = comparison.interval(pd.Series([1.0, 2.0, 3.0, math.inf]))
    assert (n, mean, std) == (3, 2.0, 1.0)
    assert high - mean == pytest.approx(4.302652729749464 / math.sqrt(3))  # t(0.975, 2) from a table
    assert comparison.interval(pd.Series([5.0]))[1:] == (5.0, *(pytest.approx(math.nan, nan_ok=True),) * 3)
    assert comparison.interval(pd.Series([], dtype=float))[0] == 0


@pytest.mark.slow
def test_pivot_puts_max_grad_norm_down_and_labels_inf_none(experiments, reported):
    experiment = load_experiment(experiments["grid"])
    grid = pivot(compare(experiment.trials, experiment.factors), experiment.factors)
    table = grid.grid("best_valid_ppl_mean")
    assert (grid.row_title, grid.column_title) == ("max_grad_norm", "lr_decay")
    assert list(table.index) == ["1", "none"] and list(table.columns) == ["0.5", "1"]
    assert table.loc["1", "0.5"] == pytest.approx(115.5)
    summary = Path(reported["grid"].summary).read_text()
    assert "| max_grad_norm \\ lr_decay | 0.5 | 1 |" in summary
    assert "| none | 128.0 ± 9.1 (1/2 diverged) | 141.0 ± 9.1 (1/2 diverged) |" in summary and not re.search(
        r"\binf\b", summary
    )


@pytest.mark.slow
def test_cases_space_gets_one_row_per_case(experiments):
    experiment = load_experiment(experiments["cases"])
    assert [(f.name, f.keys, f.is_case) for f in experiment.factors] == [("clip", ("clip_mode", "max_grad_norm"), True)]
    grid = pivot(compare(experiment.trials, experiment.factors), experiment.factors)
    table = grid.grid("best_valid_ppl_mean")
    assert list(table.index) == ["global_norm (max_grad_norm=5)", "value (max_grad_norm=1.7)", "none"]
    assert list(table.columns) == ["mean"]


@pytest.mark.slow
def test_summary_answers_first(reported):
    lines = Path(reported["grid"].summary).read_text().splitlines()
    assert lines[0] == "# Study dummy: Dummy study for the report's tests: clipping x decay."
    assert lines[2].startswith(
        "Studied: space `dummy`, preset test, 4 epochs per trial, 8 trials (4 settings x 2 seeds)"
    )
    assert "Budget: 28 of 32 epochs trained" in lines[2]
    assert lines[4].startswith(
        "**Best: max_grad_norm=1, lr_decay=0.5**, mean best validation perplexity 115.5 [95% CI 109.0, 122.0], n=2"
    )
    assert "Not distinguishable from it (intervals overlap): max_grad_norm=1, lr_decay=1 (125.5" in lines[4]
    text = "\n".join(lines)
    for picture in plots.FILES.values():
        assert f"]({picture})" in text
    assert "2 of 8 trials diverged" in text and "Partial" not in text and "One trial per setting" not in text


@pytest.mark.slow
def test_one_seed_experiment_shows_no_interval(reported):
    comparison = pd.read_parquet(reported["cases"].comparison)
    assert (comparison["n_seeds"] == 1).all()
    assert comparison[["best_valid_ppl_ci95_low", "best_valid_ppl_ci95_high", "test_ppl_ci95_low"]].isna().all().all()
    summary = Path(reported["cases"].summary).read_text()
    assert "One trial per setting" in summary and "no interval" in summary
    assert not [line for line in summary.splitlines() if line.startswith("|") and "±" in line]
    assert "inferred from the trial configs" in summary  # no study.json in this one


@pytest.mark.slow
def test_every_plot_is_a_valid_png(reported):
    for paths in reported.values():
        assert set(paths.plots) == set(plots.FILES)
        for file in paths.plots.values():
            data = Path(file).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
            height, width, _ = matplotlib.image.imread(file).shape
            assert width >= 500 and height >= 300


@pytest.mark.slow
def test_provenance_round_trip(reported, capsys):
    for table in (reported["grid"].trials, reported["grid"].epochs, reported["grid"].comparison):
        prov = tables.read_provenance(table)
        assert prov["space_text"] == SPACE_TEXT and prov["data_sha256"] == SHA and prov["space"] == "dummy"
        assert set(prov["versions"]) == {"study", "torch", "ray", "python", "pandas"}
        assert "git_commit" in prov and prov["date"][:2] == "20"
    assert main([str(Path(reported["grid"].trials).parent), "--provenance"]) == 0
    out = capsys.readouterr().out
    assert "space: dummy" in out and "a" * 64 in out and "    max_grad_norm: {grid: [1, .inf]}" in out


@pytest.mark.slow
def test_collect_reads_a_file_uri_like_a_path(experiments):
    trials, epochs = collect(experiments["grid"].as_uri())
    by_path, _ = collect(str(experiments["grid"]))
    pd.testing.assert_frame_equal(trials, by_path)
    assert len(epochs) == 28


@pytest.mark.slow
def test_storage_without_a_local_path_is_read_and_written_through_its_filesystem(experiments, reported, tmp_path):
    bucket = tmp_path / "bucket"
    copy_experiment(experiments["grid"], bucket)
    for name in ("trials.parquet", "summary.md"):
        (bucket / "grid" / name).unlink()
    # Not a LocalFileSystem: handled as remote storage (S3, GCS) is, staged locally and uploaded.
    remote = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    paths = write_report("grid", storage_filesystem=remote, quiet=True)
    assert paths.trials == "grid/trials.parquet" and paths.plots["heatmap"] == "grid/heatmap_valid_ppl.png"
    written = pd.read_parquet(bucket / "grid" / "trials.parquet")
    pd.testing.assert_frame_equal(written, pd.read_parquet(reported["grid"].trials))
    assert tables.read_provenance("grid/trials.parquet", filesystem=remote)["space"] == "dummy"
    assert (bucket / "grid" / "summary.md").read_text().startswith("# Study dummy")
    assert not [p for p in (bucket / "grid").iterdir() if p.name.startswith(".report-")]


def edit_state(folder: Path, edit) -> None:
    """Apply edit(trial_state, runtime_metadata) to every trial of Ray's experiment state file."""
    state_file = next(folder.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    edited = []
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        edit(trial, meta)
        edited.append([json.dumps(trial), json.dumps(meta)])
    state["trial_data"] = edited
    state_file.write_text(json.dumps(state))


@pytest.mark.slow
def test_partial_experiment_with_unfinished_error_and_rereported_trials(experiments, tmp_path):
    folder = copy_experiment(experiments["grid"], tmp_path)
    clipped = lambda trial, decay, seed: (
        trial["config"] == {**trial["config"], "max_grad_norm": 1.0, "lr_decay": decay, "seed": seed}
    )
    redo = {}

    def edit(trial, meta):
        if clipped(trial, 1.0, 1):  # interrupted mid-run: Ray saves a running trial as PENDING
            trial["status"] = "PENDING"
        elif clipped(trial, 0.5, 1):  # not started
            trial["status"] = "PENDING"
            meta["last_result"] = {}
            (folder / trial["relative_logdir"] / "result.json").write_text("")
        elif clipped(trial, 1.0, 0):  # failed
            trial["status"] = "ERROR"
            meta["error_filename"] = "error.txt"
            (folder / trial["relative_logdir"] / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
        elif clipped(trial, 0.5, 0):  # resumed from its epoch-1 checkpoint: epoch 2 reported twice
            results = folder / trial["relative_logdir"] / "result.json"
            lines = results.read_text().splitlines()
            again = json.loads(lines[1]) | {m.VALID_PPL: 999.0}
            results.write_text("\n".join([*lines, json.dumps(again)]) + "\n")
            redo["trial"] = trial["trial_id"]

    edit_state(folder, edit)
    paths = write_report(str(folder), quiet=True)
    trials = pd.read_parquet(paths.trials)
    status = {(r.max_grad_norm, r.lr_decay, r.seed): r.status for r in trials.itertuples()}
    assert (
        status[(1.0, 1.0, 1)] == "running" and status[(1.0, 0.5, 1)] == "pending" and status[(1.0, 1.0, 0)] == "error"
    )
    assert by_setting(trials, max_grad_norm=1.0, lr_decay=0.5, seed=1)["epochs_run"] == 0

    epochs = pd.read_parquet(paths.epochs)
    redone = epochs[epochs["trial_id"] == redo["trial"]]
    assert redone[m.EPOCH].tolist() == [1, 2, 3, 4]  # once each, the last report winning
    assert redone.loc[redone[m.EPOCH] == 2, m.VALID_PPL].item() == 999.0

    comparison = pd.read_parquet(paths.comparison)
    row = by_setting(comparison, max_grad_norm=1.0, lr_decay=1.0)
    assert row["n_unfinished"] == 1 and row["n_error"] == 1 and row["n_valid"] == 0
    summary = Path(paths.summary).read_text()
    assert "**Partial experiment**: 1 trial(s) started but not finished, 1 not started" in summary
    assert "RuntimeError: out of memory" in summary


@pytest.mark.slow
def test_partial_experiment_with_no_second_seed_yet_says_intervals_are_to_come(experiments, tmp_path):
    folder = copy_experiment(experiments["grid"], tmp_path)

    def edit(trial, meta):
        if trial["config"]["seed"] == 1:  # every setting's second seed not started yet
            trial["status"] = "PENDING"
            meta["last_result"] = {}
            (folder / trial["relative_logdir"] / "result.json").write_text("")

    edit_state(folder, edit)
    summary = Path(write_report(str(folder), quiet=True).summary).read_text()
    assert "**No intervals yet**: no setting has two finished trials so far" in summary
    assert "One trial per setting" not in summary


@pytest.mark.slow
def test_a_failed_refresh_leaves_the_previous_report_whole(experiments, tmp_path, monkeypatch):
    folder = copy_experiment(experiments["cases"], tmp_path)
    paths = write_report(str(folder), quiet=True)
    before = {
        name: (folder / name).read_bytes()
        for name in ("trials.parquet", "epochs.parquet", "summary.md", plots.FILES["heatmap"])
    }
    real_write = pq.write_table
    calls = []

    def torn_write(table, where, *args, **kwargs):  # the second table dies half-written
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"PAR1 half a table")
            raise OSError("disk full")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(tables.pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_report(str(folder), quiet=True)
    monkeypatch.setattr(tables.pq, "write_table", real_write)

    for name, data in before.items():  # a table that cannot be written: the previous report, whole
        assert (folder / name).read_bytes() == data

    def failing_plot(figure, path):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(plots, "save", failing_plot)
    (folder / "trials.parquet").unlink()  # so that the new tables are seen to arrive
    with pytest.raises(
        report.ReportFailed,
        match=r"the plots and summary failed .RuntimeError: renderer crashed.; the tables were written",
    ):
        write_report(str(folder), quiet=True)
    # The tables are published; the old summary and plots, which would describe other tables, are gone.
    assert len(pd.read_parquet(folder / "trials.parquet")) == len(pd.read_parquet(paths.trials))
    assert "plots and summary failed (RuntimeError: renderer crashed)" in (folder / "summary.md").read_text()
    assert not any((folder / name).exists() for name in plots.FILES.values())
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".validate_storage_marker"]
    assert leftovers == []
    done = subprocess.run([sys.executable, "-m", "study.report", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0  # the next report, with working plots, puts everything back


def test_staging_left_by_a_killed_report_is_removed_and_files_keep_the_umask(experiments, tmp_path):
    folder = copy_experiment(experiments["cases"], tmp_path)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # a process id that no longer runs
    leftover = folder / f".report-{socket.gethostname()}-{killed.pid}-abc123"
    leftover.mkdir()
    (leftover / "trials.parquet").write_bytes(b"half")
    mine = folder / f".report-{socket.gethostname()}-{os.getpid()}-def456"  # a report still running
    mine.mkdir()
    old = os.umask(0o022)
    try:
        write_report(str(folder), quiet=True)
    finally:
        os.umask(old)
    assert not leftover.exists() and mine.exists()
    for name in ("trials.parquet", "epochs.parquet", "comparison.parquet", "summary.md", plots.FILES["heatmap"]):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_write_table_failure_keeps_the_previous_table(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    tables.write_table(pd.DataFrame({"a": [1, 2]}), path, {"k": "v"})

    def torn_write(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(tables.pq, "write_table", torn_write)
    with pytest.raises(OSError):
        tables.write_table(pd.DataFrame({"a": [3]}), path, {"k": "w"})
    assert pd.read_parquet(path)["a"].tolist() == [1, 2] and tables.read_provenance(path) == {"k": "v"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_missing_empty_and_foreign_folders_are_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert f"{missing}: no such folder, expected the folder of one Ray Tune experiment" in error_of(
        [str(missing)], capsys
    )
    (tmp_path / "empty").mkdir()
    assert "empty: the folder is empty, expected" in error_of([str(tmp_path / "empty")], capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    assert "foreign: no Ray Tune experiment state (experiment_state-*.json) here" in error_of([str(foreign)], capsys)
    assert "not a folder" in error_of([str(foreign / "notes.txt")], capsys)
    assert "no such table" in error_of([str(foreign), "--provenance"], capsys)


def test_storage_root_error_names_the_experiments_inside(tmp_path, capsys):
    (tmp_path / "grad_clip").mkdir()
    (tmp_path / "grad_clip" / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert "experiments inside it: grad_clip" in error_of([str(tmp_path)], capsys)


def test_command_line_error_exits_2_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "study.report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope: no such folder" in done.stderr
