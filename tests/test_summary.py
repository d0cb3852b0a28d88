"""The report of any study: zero, categorical and sampled values, an empty experiment, and the
two-way model with pooled seed noise on a crossed study.

The experiments are written here as Ray leaves them (state JSON and result.json lines, numbers by
formula, no Ray, no training), so each test runs in about a second; one test runs a real sweep.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from study import metrics as m
from study.report import plots
from study.report.build import write_report
from study.report.planned import planned_settings
from study.train.data import load_corpus

from helpers import empty_experiment, fake_experiment, sweep

REPORT_FILES = ("trials.parquet", "epochs.parquet", "comparison.parquet", "summary.md", *plots.FILES.values())

SPACES = {  # name: (the space's vary block, the trials' configs, what the summary's first lines say)
    "momentum": (
        "  momentum: {grid: [0, 0.9]}",
        [{"momentum": mu, "seed": s} for mu in (0.0, 0.9) for s in (0, 1)],
        "4 trials (2 settings x 2 seeds)",
    ),
    "modes": (
        "  clip_mode: {grid: [global_norm, value, none]}",
        [{"clip_mode": c, "seed": 0} for c in ("global_norm", "value", "none")],
        "3 trials (3 settings x 1 seed)",
    ),
    "sampled": (
        "  learning_rate: {uniform: [0.5, 1.5]}",
        [{"learning_rate": 0.5 + 0.29 * i, "seed": i % 2} for i in range(4)],
        "4 trials (4 sampled settings x 1 seed)",
    ),
}


@pytest.mark.parametrize("name", list(SPACES))
def test_any_space_writes_every_table_summary_and_plot(tmp_path, name):
    vary, trials, says = SPACES[name]
    trials = [*trials[:-1], trials[-1] | {"stop": True}]  # ASHA stopped the last trial after epoch 1
    experiment = fake_experiment(tmp_path / name, vary, trials, epochs=3, stopped_after=1)
    write_report(str(experiment), quiet=True)
    for file in REPORT_FILES:
        assert (experiment / file).stat().st_size > 0, file
    summary = (experiment / "summary.md").read_text()
    assert says in summary.splitlines()[2] and "plots and summary failed" not in summary
    comparison = pd.read_parquet(experiment / "comparison.parquet")
    if name == "sampled":  # no setting repeats: no intervals, and no advice that cannot help
        assert "Sampled settings" in summary and "--seeds" not in summary
        assert set(comparison["best_valid_ppl_ci_method"]) == {"none"}
    if name == "momentum":  # 0 is a value like any other; the two seeds' noise is pooled over both settings
        assert sorted(comparison["momentum"]) == [0.0, 0.9] and comparison["best_valid_ppl_ci95_low"].notna().all()
        assert set(comparison["best_valid_ppl_ci_method"]) == {"pooled t, 2 df"}
        assert "1 stopped early" in summary
    if name == "modes":  # one seed: no interval anywhere, and the summary says how to get them
        assert "--seeds 0 1 2" in summary and comparison["best_valid_ppl_ci95_low"].isna().all()


def test_the_console_prints_the_summarys_headline_answer_and_notes(tmp_path, capsys):
    vary, trials, _ = SPACES["modes"]
    experiment = fake_experiment(tmp_path / "modes", vary, trials, epochs=3)
    write_report(str(experiment))
    out = capsys.readouterr().out.splitlines()
    summary = (experiment / "summary.md").read_text()
    answer = next(paragraph for paragraph in summary.split("\n\n") if paragraph.startswith("**Best"))
    assert out[0].startswith("Studied: space `modes`") and out[0] in summary
    assert out[1] == answer.replace("**", "") and out[1].startswith(
        "Best: clip_mode=global_norm, mean best validation perplexity"
    )
    assert (
        out[2].startswith("One trial per setting: no confidence intervals") and "> **One trial per setting**" in summary
    )
    assert len(out) == 4 and out[3].startswith("Report: ") and "summary.md" in out[3]


def test_every_status_is_counted_and_explained_in_the_words_of_study_metrics(tmp_path):
    vary, trials, _ = SPACES["momentum"]
    experiment = fake_experiment(
        tmp_path / "momentum", vary, [*trials[:-1], trials[-1] | {"stop": True}], epochs=3, stopped_after=1
    )
    write_report(str(experiment), quiet=True)
    summary = (experiment / "summary.md").read_text()
    assert "Status: 3 completed, 1 stopped early." in summary
    for status, meaning in m.STATUSES.items():
        assert f"`{status}` {meaning}" in summary
    assert set(pd.read_parquet(experiment / "trials.parquet")["status"]) == {m.COMPLETED, m.STOPPED_EARLY}
    counts = pd.read_parquet(experiment / "comparison.parquet").filter(like="n_").columns
    assert [c for c in counts if c.removeprefix("n_") in m.STATUSES] == [f"n_{s}" for s in m.FINISHED]


def test_an_empty_experiment_writes_every_table_summary_and_plot(tmp_path):
    experiment = empty_experiment(tmp_path / "empty")
    write_report(str(experiment), quiet=True)
    for file in REPORT_FILES:
        assert (experiment / file).exists(), file
    assert "0 trials" in (experiment / "summary.md").read_text()


def test_a_crossed_study_gets_pooled_intervals_and_the_interaction_answered(tmp_path, capsys):
    # max_grad_norm x lr_decay, 2 seeds; the decay changes which threshold wins (cell offsets below),
    # seeds differ by 5 everywhere (equal seed noise). One trial stopped by ASHA after epoch 2.
    offsets = {(1.0, 0.5): 0.0, (1.0, 1.0): 12.0, (math.inf, 0.5): 8.0, (math.inf, 1.0): 2.0}
    trials = [
        {"max_grad_norm": c, "lr_decay": d, "seed": s, "cell": offsets[c, d]}
        for c in (1.0, math.inf)
        for d in (0.5, 1.0)
        for s in (0, 1)
    ]
    trials[-1] |= {"stop": True}
    vary = "  max_grad_norm: {grid: [1, .inf]}\n  lr_decay: {grid: [0.5, 1.0]}"
    experiment = fake_experiment(tmp_path / "crossed", vary, trials, epochs=4, stopped_after=2)
    write_report(str(experiment))
    assert (
        capsys.readouterr()
        .out.splitlines()[1]
        .startswith("Best: max_grad_norm=1, lr_decay=0.5, mean best validation perplexity")
    )
    comparison = pd.read_parquet(experiment / "comparison.parquet")
    assert comparison["best_valid_ppl_ci95_low"].notna().all()
    assert set(comparison["best_valid_ppl_ci_method"]) == {"pooled t, 4 df"}
    summary = (experiment / "summary.md").read_text()
    section = summary.split("## Interaction\n\n")[1].split("\n\n")[0]
    # At epoch 2 (the stopped trial's last), cell means 0, 12, 8, 2 (+2.5 for the seeds, +110 the rest):
    # interaction SS = 2 * 4 * ((0 - 12 - 8 + 2) / 4)**2 = 162, residual SS = 8 * 2.5**2 = 50 on 4 df.
    assert "at epoch 2, the last epoch every trial in the model reached (1 trial(s) stopped by ASHA" in section
    assert "over 8 trials" in section and f"interaction F = {162 / (50 / 4):.2f}" in section
    assert (
        "The best max_grad_norm at epoch 2 **depends on lr_decay** (interaction F = 12.96, p = 0.023): it is 1 at lr_decay 0.5, none at lr_decay 1."
        in section
    )
    assert (
        "max_grad_norm explains 1% of the variation" in section and "their interaction 70% of the variation" in section
    )
    assert (
        "The winner at epoch 2, max_grad_norm=1 with lr_decay=0.5 (112.50), beats the runner-up, max_grad_norm=none with lr_decay=1 (114.50), by 2.00"
        in section
    )
    assert "within the seed noise" in section
    assert "the settings share their seed noise" in summary


def test_the_interaction_leaves_out_blown_up_trials(tmp_path):
    """The unclipped trials of grad_clip reach perplexities of 1e15-1e109 without a NaN: as the ANOVA's
    y they made every effect 1e106 wide. The blown-up trials (the summary's and the plots' line: ten
    times the lowest) are left out, by setting; the rest is fitted as if they were never run (the
    cells and F of the test above)."""
    offsets = {(1.0, 0.5): 0.0, (1.0, 1.0): 12.0, (5.0, 0.5): 8.0, (5.0, 1.0): 2.0, (math.inf, 0.5): 1e15}
    offsets[math.inf, 1.0] = 1e109
    trials = [
        {"max_grad_norm": c, "lr_decay": d, "seed": s, "cell": offsets[c, d]}
        for c in (1.0, 5.0, math.inf)
        for d in (0.5, 1.0)
        for s in (0, 1)
    ]
    vary = "  max_grad_norm: {grid: [1, 5, .inf]}\n  lr_decay: {grid: [0.5, 1.0]}"
    experiment = fake_experiment(tmp_path / "unclipped", vary, trials, epochs=4)
    write_report(str(experiment), quiet=True)
    section = (experiment / "summary.md").read_text().split("## Interaction\n\n")[1].split("\n\n")[0]
    assert (
        "over 8 trials as seed replicates; 4 blown-up trial(s) left out (best validation perplexity over 10 times "
        "the lowest trial's, see Divergence: max_grad_norm=none with lr_decay 0.5, 1)."
    ) in section
    assert f"interaction F = {162 / (50 / 4):.2f}" in section
    lead = section.split("by 2.00 ± ")[1].split(" ")[0]
    assert float(lead) < 10  # the seed noise's, not the unclipped trials' 1e106


CROSSED = """description: crossed
preset: test
fixed: {epochs: 2, max_words: 0}
vary:
  max_grad_norm: {grid: [0.1, 5.0]}
  lr_decay: {grid: [0.5, 1.0]}
seeds: [0, 1]
scheduler: {grace_period: 2}  # no ASHA stop: the model is fitted on the best validation perplexity
resources: {cpus_per_trial: 1}
"""


@pytest.mark.slow
def test_a_real_crossed_sweep_answers_the_interaction(ray_session, tiny_corpus_dir, tmp_path):
    (tmp_path / "crossed.yaml").write_text(CROSSED)
    options, _ = sweep(
        [str(tmp_path / "crossed.yaml"), "--storage", str(tmp_path / "out")], load_corpus(tiny_corpus_dir)
    )
    experiment = Path(options.experiment)
    comparison = pd.read_parquet(experiment / "comparison.parquet")
    assert len(comparison) == 4 and comparison["best_valid_ppl_ci95_low"].notna().all()
    assert comparison["test_ppl_ci95_low"].notna().all()
    section = (experiment / "summary.md").read_text().split("## Interaction\n\n")[1].split("\n\n")[0]
    assert section.startswith(
        "Two-way ANOVA with interaction (statsmodels OLS, type-2 sums of squares; both settings as "
        "categories) of best validation perplexity (every trial in the model completed all its epochs), over 8 trials"
    )
    assert (
        "max_grad_norm explains" in section
        and "(interaction F = " in section
        and "The winner, max_grad_norm=" in section
    )


def interrupted_early(folder: Path, planned: bool, created: int = 3) -> Path:
    """A sweep of 3 settings x 2 seeds stopped after Ray created the first `created` seed-0 trials; the
    last still running. `planned`: study.json as the sweep writes it now, else as before it held the plan's counts."""
    vary = "  momentum: {grid: [0, 0.5, 0.9]}"
    trials = [{"momentum": mu, "seed": 0} for mu in (0.0, 0.5, 0.9)][:created]
    experiment = fake_experiment(folder, vary, trials, epochs=3)
    study = json.loads((experiment / "study.json").read_text())
    study["space_text"] += "seeds: [0, 1]\n"
    study |= {"seeds": [0, 1], "num_samples": 1, "varied": ["momentum", "seed"]}
    if planned:
        study |= {"planned_trials": 6, "planned_settings": 3, "planned_trial_epochs": 18, "expected_trial_epochs": 15.0}
    (experiment / "study.json").write_text(json.dumps(study))
    return still_running(experiment, -1)


def still_running(experiment: Path, index: int) -> Path:
    """The experiment with its trial at `index` (in Ray's state) running after its first epoch."""
    state = next(experiment.glob("experiment_state-*.json"))
    entries = json.loads(state.read_text())["trial_data"]
    running = json.loads(entries[index][0]) | {"status": "PENDING"}  # Ray saves a running trial as PENDING
    entries[index][0] = json.dumps(running)
    (experiment / running["relative_logdir"] / "result.json").write_text(
        (experiment / running["relative_logdir"] / "result.json").read_text().splitlines()[0] + "\n"
    )
    state.write_text(json.dumps({"trial_data": entries}))
    return experiment


@pytest.mark.parametrize("planned", [True, False])
def test_an_early_interruption_is_reported_against_the_plan_not_the_trials_ray_created(tmp_path, capsys, planned):
    experiment = interrupted_early(tmp_path / "early", planned)
    write_report(str(experiment))
    out = capsys.readouterr().out.splitlines()
    summary = (experiment / "summary.md").read_text()
    headline = summary.splitlines()[2]
    assert "6 trials planned (3 settings x 2 seeds), 3 created so far, 2 finished" in headline
    assert (
        "Budget: 7 of 18 epochs trained" in headline
        and "Status: 2 completed, 1 running, 3 not created yet." in headline
    )
    assert ("about 15 expected by the plan" in headline) == planned  # only the sweep knows
    assert "2 of the 6 planned trials finished; 1 started but not finished, 3 not started" in summary
    assert "Only the 3 of 3 planned settings" not in summary
    # Two seeds are planned: the intervals are to come; more seeds are not what it lacks.
    assert "**No intervals yet**" in summary and "--seeds" not in summary and "One trial per setting" not in summary
    assert out[0] == headline and out[2].startswith("Partial experiment: 2 of the 6 planned trials finished")


def test_the_grids_show_the_planned_settings_ray_has_not_created_a_trial_of_as_not_started(tmp_path):
    experiment = interrupted_early(tmp_path / "one", planned=True, created=1)
    write_report(str(experiment), quiet=True)
    summary = (experiment / "summary.md").read_text()
    assert "The 2 planned settings Ray has not created a trial of yet are marked 'not started'." in summary
    assert "Only the" not in summary
    # The one created trial is running: unfinished, not "not started".
    assert grid_rows(summary, "momentum") == [
        "| 0 | – (1 unfinished) |",
        *(f"| {mu} | – (not started) |" for mu in (0.5, 0.9)),
    ]
    assert "6 trials planned (3 settings x 2 seeds), 1 created so far, 0 finished" in summary
    assert "Status: 1 running, 5 not created yet." in summary
    assert list(pd.read_parquet(experiment / "comparison.parquet")["momentum"]) == [0.0]


def grid_rows(summary: str, by: str) -> list[str]:
    """The rows of summary.md's grid of best validation perplexity by `by` (its header and rule left out)."""
    table = summary.split(f"## Best validation perplexity by {by}\n\n")[1].split("\n\n")[1]
    return table.splitlines()[2:]


INTERIM = (
    "  max_grad_norm: {grid: [1, 5, .inf]}\n  lr_decay: {grid: [0.5, 1]}"  # YAML's 1 and .inf, the trials' 1.0 and inf
)


def interim(folder: Path, vary: str, trials: list[dict], varied: list[str]) -> Path:
    """A sweep of one seed that Ray has created only `trials` of so far; study.json names the `varied`
    keys as the sweep writes them (every key the space varies, whether or not its trials differ yet)."""
    experiment = fake_experiment(folder, vary, trials, epochs=2)
    study = json.loads((experiment / "study.json").read_text()) | {"varied": varied, "seeds": [0], "num_samples": 1}
    (experiment / "study.json").write_text(json.dumps(study))
    return experiment


def test_an_interim_grid_has_every_planned_row_and_column_and_the_created_cells_as_they_were(tmp_path):
    trials = [
        {"max_grad_norm": 1.0, "lr_decay": 0.5, "seed": 0, "cell": 1.0},
        {"max_grad_norm": 5.0, "lr_decay": 0.5, "seed": 0, "cell": 3.0},
        {"max_grad_norm": 1.0, "lr_decay": 1.0, "seed": 0, "cell": 2.0},
    ]
    experiment = still_running(interim(tmp_path / "interim", INTERIM, trials, ["max_grad_norm", "lr_decay"]), 1)
    write_report(str(experiment), quiet=True)
    summary = (experiment / "summary.md").read_text()
    # Best validation perplexity 110 + the cell's offset; 5 x 0.5 still running; the rest planned, not created.
    assert grid_rows(summary, "max_grad_norm x lr_decay") == [
        "| 1 | 111.0 | 112.0 |",
        "| 5 | – (1 unfinished) | – (not started) |",
        "| none | – (not started) | – (not started) |",
    ]
    assert "| max_grad_norm \\ lr_decay | 0.5 | 1 |" in summary
    test = summary.split("## Test perplexity (completed trials)\n\n")[1].split("\n\n")[1].splitlines()[2:]
    assert test == [
        "| 1 | 107.0 | 108.0 |",
        "| 5 | – (1 unfinished) | – (not started) |",
        "| none | – (not started) | – (not started) |",
    ]
    assert "The 3 planned settings Ray has not created a trial of yet are marked 'not started'." in summary
    assert "6 trials planned (6 settings x 1 seed), 3 created so far, 2 finished" in summary
    # The answer and the tables: the created settings only.
    assert "next by mean: max_grad_norm=1, lr_decay=1 (112.0)." in summary and "none" not in summary.split("##")[0]
    comparison = pd.read_parquet(experiment / "comparison.parquet")
    assert list(zip(comparison["max_grad_norm"], comparison["lr_decay"])) == [(1.0, 0.5), (1.0, 1.0), (5.0, 0.5)]
    assert list(comparison["n_trials"]) == [1, 1, 1]


CASES = """  clip:
    cases:
      - {clip_mode: global_norm, max_grad_norm: 5}
      - {clip_mode: value, max_grad_norm: 1.7}
      - {clip_mode: none}"""


@pytest.mark.parametrize(
    "vary, trials, varied, shown",
    [
        (  # a drawn domain: no list of settings to show (nor a count of them)
            "  max_grad_norm: {grid: [1, 5]}\n  learning_rate: {uniform: [0.5, 1.5]}",
            [{"max_grad_norm": 1.0, "learning_rate": lr, "seed": 0} for lr in (0.7, 1.2)],
            ["max_grad_norm", "learning_rate"],
            "",
        ),
        (  # cases: counted, not listed; the grids say which they show
            CASES,
            [
                {"clip": {"clip_mode": mode, "max_grad_norm": c}, "seed": 0}
                for mode, c in (("global_norm", 5.0), ("value", 1.7))
            ],
            ["clip_mode", "max_grad_norm"],
            " Only the 2 of 3 planned settings that Ray has created a trial of are shown.",
        ),
    ],
)
def test_a_space_with_cases_or_drawn_values_adds_no_planned_settings(tmp_path, vary, trials, varied, shown):
    experiment = interim(tmp_path / "other", vary, trials, varied)
    assert planned_settings(json.loads((experiment / "study.json").read_text())) is None
    write_report(str(experiment), quiet=True)
    summary = (experiment / "summary.md").read_text()
    assert "plots and summary failed" not in summary and "(not started)" not in summary
    assert f"so there are no intervals.{shown}\n" in summary
    assert len(pd.read_parquet(experiment / "comparison.parquet")) == 2


def test_a_trial_that_blew_up_without_diverging_is_named_and_its_number_fits_its_cell(tmp_path):
    """The real grad_clip run's first unclipped trial reached a finite validation perplexity of 3.3e13:
    not diverged by the definition (loss NaN or infinite), so the summary says what it is instead."""
    trials = [
        {"max_grad_norm": c, "seed": s} | ({"cell": 3.3e13, "stop": True} if c == math.inf and s == 0 else {})
        for c in (1.0, math.inf)
        for s in (0, 1)
    ]
    experiment = fake_experiment(tmp_path / "blown", "  max_grad_norm: {grid: [1, .inf]}", trials, 3, stopped_after=2)
    write_report(str(experiment), quiet=True)
    summary = (experiment / "summary.md").read_text()
    divergence = summary.split("## Divergence\n\n")[1].split("\n## ")[0]
    assert divergence.startswith("No trial diverged (loss NaN or infinite).\n\n1 blew up without diverging")
    assert "over 10 times the lowest trial's (106.7)" in divergence
    assert "- max_grad_norm=none, seed 0: best 3.3e+13 at epoch 2 of the 2 it ran (stopped_early)" in divergence
    assert "| none | 1.65e+13 ± 2.1e+14 |" in summary  # not 16500000000053.3 ± 210000000000000.0
