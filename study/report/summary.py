"""Render summary.md, the report's text: the answer first, then the pivots as tables, divergence and the plots.

    python -m study.report results/grad_clip   # writes summary.md (through study.report.write_report)

`summary(experiment, comparison, grid, pictures)` returns a Summary: the markdown and the parts the
console shows (the headline, the answer, the notes); study.report collects the experiment, compares
the settings, lays them out as a Pivot and writes the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study import metrics as m
from study.labels import setting_label, value_label
from study.report.anova import interaction
from study.report.collect import Experiment
from study.report.comparison import Pivot, noise_of, sampled_keys, setting_keys
from study.report.findings import clipping_text, reference_text
from study.report.planned import Plan, study_plan
from study.report.provenance import space_description, trained_by
from study.report.scale import FACTOR, blown_up, ppl_text, ppl_with_interval
from study.storage import split_location
from study.tables import COMPARISON, EPOCHS, STUDY_FILE, TRIALS


@dataclass(frozen=True)
class Summary:
    """summary.md and the parts of it that the console prints (markdown, as in the file)."""

    headline: str  # "Studied: ...": the space, the trials, the budget, the statuses
    answer: str  # the best setting and those not distinguishable from it
    notes: tuple[str, ...]  # on a partial, failed or single-seed experiment
    text: str  # the whole of summary.md


def summary(experiment: Experiment, comparison: pd.DataFrame, grid: Pivot, pictures: dict[str, str]) -> Summary:
    """summary.md: the answer in the first lines, then the evidence."""
    trials, info = experiment.trials, experiment.study
    name = info.get("space") or Path(experiment.location.root).name
    counts = trials["status"].value_counts()
    n = len(trials)
    epochs_each = info.get("epochs") or (
        int(trials["epochs"].max()) if "epochs" in trials else int(trials["epochs_run"].max())
    )
    shared = int(experiment.epochs[m.SHARED_PREFIX].sum())  # epochs a trial took from a shared prefix
    trained = int(trials["epochs_run"].sum()) - shared
    hours = trials["seconds"].sum() / 3600
    description = space_description(info.get("space_text"))
    plan = _plan(experiment)
    uncreated = plan.trials - n if plan else 0

    lines = [f"# Study {name}" + (f": {description}" if description else "")]
    studied = [f"space `{name}`" if info.get("space") else f"experiment `{name}`"]
    studied += [f"preset {info['preset']}"] if info.get("preset") else []
    studied += [f"{epochs_each} epochs per trial", _trials_text(comparison, experiment, plan)]
    full = plan.trial_epochs if plan and plan.trial_epochs else n * epochs_each
    budget = [f"{shared} more taken from shared prefixes"] if shared else []
    if plan and plan.expected_trial_epochs is not None and (uncreated or trials["status"].isin(m.UNFINISHED).any()):
        budget.insert(0, f"about {plan.expected_trial_epochs:.0f} expected by the plan")
    statuses = [f"{counts[s]} {s.replace('_', ' ')}" for s in m.STATUSES if counts.get(s, 0)]
    statuses += [f"{uncreated} not created yet"] if uncreated else []
    headline = (
        f"Studied: {', '.join(studied)}. Budget: {trained} of {full} epochs trained"
        + (f" ({'; '.join(budget)})" if budget else "")
        + f", {hours:.2f} h of trial time. Status: {', '.join(statuses)}."
    )
    answer = _answer(comparison)
    lines += [headline, answer]
    notes = _notes(trials, comparison, experiment, plan)
    if notes:
        lines.append("\n".join(f"> {note}" for note in notes))

    axis = f"{grid.row_title} x {grid.column_title}" if grid.columns else grid.row_title or "setting"
    lines.append(f"## Best validation perplexity by {axis}")
    lines.append(
        "Mean over seeds of each trial's lowest validation perplexity, ± the half-width of its 95% interval; "
        "diverged trials are left out and counted in brackets. "
        + _interval_method(experiment, "best_valid_ppl")
        + _settings_shown(comparison, grid, plan)
    )
    lines.append(_markdown_grid(grid, "best_valid_ppl"))
    lines.append("## Test perplexity (completed trials)")
    lines.append(
        "Mean over seeds of the completed trials' test perplexity. " + _interval_method(experiment, "test_ppl")
    )
    lines.append(_markdown_grid(grid, "test_ppl"))
    if against := reference_text(experiment, comparison):
        lines += ["## Against the reference setting", against]
    crossed = [f for f in experiment.factors if not f.is_case]
    if len(experiment.factors) == 2 and len(crossed) == 2:
        fitted = interaction(
            trials, experiment.epochs, crossed[0].keys[0], crossed[1].keys[0], lambda key, value: value_label(value)
        )
        lines.append("## Interaction")
        lines.append(
            fitted
            or f"Not fitted: {crossed[0].name} x {crossed[1].name} needs every combination with at least two finished seeds."
        )
    if clipping := clipping_text(experiment):
        lines += ["## Where clipping engages", clipping]
    lines.append("## Divergence")
    lines.append(_divergence(comparison, trials, setting_keys(experiment.factors)))
    if experiment.errors:
        lines.append("## Errors")
        lines.append("\n".join(f"- `{tid}`: {line}" for tid, line in experiment.errors.items()))
    lines.append("## Plots")
    captions = {
        "heatmap": "Mean best validation perplexity per setting",
        "valid_curves": "Validation perplexity by epoch, one line per trial",
        "grad_norms": "Gradient norm before clipping and share of steps clipped, by epoch",
        "test_ppl": "Test perplexity with 95% intervals",
    }
    lines.append("\n\n".join(f"![{captions.get(kind, kind)}]({file})" for kind, file in pictures.items()))
    lines.append("## How the numbers are made")
    lines.append(
        "- Status: " + "; ".join(f"`{status}` {meaning}" for status, meaning in m.STATUSES.items()) + ".\n"
        "- Validation statistics pool a setting's completed and stopped-early trials (a stopped trial with the best "
        "perplexity it reached); test statistics use completed trials only. `none` as max_grad_norm means no clipping.\n"
        f"- Trained by {trained_by(experiment)}.\n"
        f"- Tables: `{TRIALS}`, `{EPOCHS}`, `{COMPARISON}` in this folder; their provenance: "
        f"`python -m study.report {experiment.location.given} --provenance`."
    )
    return Summary(headline, answer, tuple(notes), "\n\n".join(lines) + "\n")


def _plan(experiment: Experiment) -> Plan | None:
    """study.json's plan, unless the trials Ray created contradict it (more of them than planned)."""
    plan = study_plan(experiment.study)
    return plan if plan and plan.trials >= len(experiment.trials) else None


def _trials_text(comparison: pd.DataFrame, experiment: Experiment, plan: Plan | None) -> str:
    """'8 trials (4 settings x 2 seeds)'; while Ray has not created every planned trial, the plan and
    how far it is: '64 trials planned (32 settings x 2 seeds), 3 created so far, 0 finished'."""
    n = len(experiment.trials)
    if plan is None or plan.trials == n:
        unplaced = len(experiment.unreadable)
        unknown = f"; {unplaced} of no known setting: their entries could not be read" if unplaced else ""
        return f"{n} trials ({_settings_by_seeds(comparison, experiment)}{unknown})"
    finished = int(experiment.trials["status"].isin(m.FINISHED).sum())
    if plan.per_setting is None:
        shape = "settings drawn per trial"
    else:
        unit = "seed" if experiment.study.get("num_samples") in (None, 1) else "trial"  # samples repeat the seeds
        shape = f"{plan.settings} setting{'s' * (plan.settings != 1)} x {plan.per_setting} {unit}{'s' * (plan.per_setting != 1)}"
    return f"{plan.trials} trials planned ({shape}), {n} created so far, {finished} finished"


def _settings_shown(comparison: pd.DataFrame, grid: Pivot, plan: Plan | None) -> str:
    """Which settings the grids show while Ray has created the trials of only some: every planned
    one where the space lists them (study.report.planned), else those with trials."""
    waiting = int((grid.frame["n_trials"] == 0).sum())
    if waiting:
        if comparison.empty:
            return f" None of the {waiting} planned settings has a trial yet: they are marked 'not started'."
        return (
            f" The {waiting} planned setting{'s' * (waiting != 1)} Ray has not created a trial of yet "
            f"{'are' if waiting != 1 else 'is'} marked 'not started'."
        )
    if plan is None or not plan.settings or len(comparison) >= plan.settings:
        return ""
    if comparison.empty:
        return f" None of the {plan.settings} planned settings has a trial yet."
    return f" Only the {len(comparison)} of {plan.settings} planned settings that Ray has created a trial of are shown."


def _settings_by_seeds(comparison: pd.DataFrame, experiment: Experiment) -> str:
    """'4 settings x 2 seeds', in numbers that multiply to the trials: a sampled setting is drawn
    per trial, so 4 sampled trials are '4 settings x 1 seed'; uneven settings give the range."""
    sampled = " sampled" if sampled_keys(experiment.study) & set(setting_keys(experiment.factors)) else ""
    settings = f"{len(comparison)}{sampled} setting{'s' if len(comparison) != 1 else ''}"
    per = comparison["n_trials"]
    if per.empty:
        return f"{settings} so far"
    unit = "seed" if (per == comparison["n_seeds"]).all() else "trial"  # repeated samples of a grid: trials
    if per.min() == per.max():
        return f"{settings} x {per.min()} {unit}{'s' if per.min() != 1 else ''}"
    return f"{settings} with {per.min()} to {per.max()} {unit}s"


def _answer(comparison: pd.DataFrame) -> str:
    ranked = comparison[comparison["n_valid"] > 0].sort_values("best_valid_ppl_mean", kind="stable")
    if ranked.empty:
        return "**No answer yet**: no trial has finished without diverging."
    best = ranked.iloc[0]
    text = f"**Best: {best['setting']}**, mean best validation perplexity {ppl_with_interval(best, 'best_valid_ppl')}"
    if best["n_test"]:
        text += f"; test perplexity {ppl_with_interval(best, 'test_ppl')}"
    text += "."
    others = ranked.iloc[1:]
    if math.isnan(best["best_valid_ppl_ci95_high"]):
        nearest = ", ".join(
            f"{r['setting']} ({ppl_text(r['best_valid_ppl_mean'])})" for _, r in others.head(3).iterrows()
        )
        return text + (f" No interval to judge the runners-up by; next by mean: {nearest}." if nearest else "")
    overlapping = others[others["best_valid_ppl_ci95_low"] <= best["best_valid_ppl_ci95_high"]]
    if overlapping.empty:
        return text + " No other setting's interval overlaps it."
    listed = ", ".join(
        f"{r['setting']} ({ppl_with_interval(r, 'best_valid_ppl')})" for _, r in overlapping.head(5).iterrows()
    )
    more = f", and {len(overlapping) - 5} more" if len(overlapping) > 5 else ""
    return text + f" Not distinguishable from it (intervals overlap): {listed}{more}."


def _notes(trials: pd.DataFrame, comparison: pd.DataFrame, experiment: Experiment, plan: Plan | None) -> list[str]:
    notes = []
    storage, space = split_location(experiment.location.given)
    space = experiment.study.get("space") or space
    running, pending = (int((trials["status"] == s).sum()) for s in (m.RUNNING, m.PENDING))
    errored = int((trials["status"] == m.ERROR).sum())
    uncreated = plan.trials - len(trials) if plan else 0
    # The sweep's own resume command (study.json): the space as given, its storage and data folder.
    again = experiment.study.get("resume_command") or f"python -m study.sweep {space} --storage {storage} --resume"
    if uncreated:
        finished = len(trials) - running - pending
        notes.append(
            f"**Partial experiment**: {finished} of the {plan.trials} planned trials finished; {running} started but "
            f"not finished, {pending + uncreated} not started ({uncreated} of them not created yet); the unfinished "
            f"are left out of every statistic. Continue it with `{again}`, which refreshes this report."
        )
    elif running or pending:
        notes.append(
            f"**Partial experiment**: {running} trial(s) started but not finished, {pending} not started; "
            f"they are left out of every statistic. Continue it with `{again}`, which refreshes this report."
        )
    if errored:
        notes.append(
            f"**{errored} trial(s) ended in error** after their retries (see Errors below); once the cause is "
            f"fixed, `{again}` retries them from their last checkpoints."
        )
    # Trials per setting as planned: a plan with two seeds will give intervals, however few trials Ray has made so far.
    per_setting = max(comparison["n_trials"].max(), (plan.per_setting or 0) if plan else 0)
    if comparison["n_valid"].max() < 2 and per_setting >= 2:
        planned = f" ({per_setting} trials of each setting are planned)" if plan and plan.per_setting else ""
        notes.append(
            "**No intervals yet**: no setting has two finished trials so far, so differences may be seed "
            f"noise; the intervals appear as more of each setting's trials finish{planned}."
        )
    elif comparison["n_trials"].max() < 2 and sampled_keys(experiment.study) & set(setting_keys(experiment.factors)):
        notes.append(
            "**Sampled settings**: each trial drew its own values, so no setting has a second trial and there "
            "are no intervals (more seeds would not give any); read the trend along the sampled values in the plots."
        )
    elif comparison["n_valid"].max() < 2:
        notes.append(
            "**One trial per setting**: no confidence intervals, so differences may be seed noise; "
            "run more seeds (`--seeds 0 1 2`) to tell."
        )
    if not experiment.study:
        notes.append(f"No {STUDY_FILE} in the folder: the varied settings were inferred from the trial configs.")
    return notes


def _interval_method(experiment: Experiment, name: str) -> str:
    """Which interval each setting's `name` has: pooled seed noise (when the settings share it) or per setting."""
    trials = experiment.trials[
        experiment.trials["status"].isin(m.RANKED if name == "best_valid_ppl" else (m.COMPLETED,))
    ]
    noise = noise_of(trials, setting_keys(experiment.factors), name) if len(trials) else None
    if noise is None:
        return "No setting has two such trials, so there are no intervals."
    return noise.describe("Intervals") + f" (each setting's method: `{name}_ci_method` in {COMPARISON})."


def _cell(row: pd.Series, name: str) -> str:
    if not row["n_trials"]:  # planned, and Ray has not created a trial of it yet
        return "– (not started)"
    mean, low, high = row[f"{name}_mean"], row[f"{name}_ci95_low"], row[f"{name}_ci95_high"]
    text = "–" if math.isnan(mean) else ppl_text(mean) + ("" if math.isnan(low) else f" ± {ppl_text((high - low) / 2)}")
    if name == "best_valid_ppl" and row["n_diverged"]:
        text += f" ({row['n_diverged']}/{row['n_trials']} diverged)"
    if row["n_unfinished"]:
        text += f" ({row['n_unfinished']} unfinished)"
    return text


def _markdown_grid(grid: Pivot, name: str) -> str:
    cells = grid.frame.assign(_cell=[_cell(row, name) for _, row in grid.frame.iterrows()])
    table = cells.pivot(index="_row", columns="_col", values="_cell")
    table = table.reindex(index=list(dict.fromkeys(cells["_row"])), columns=grid.column_order())
    corner = f"{grid.row_title} \\ {grid.column_title}" if grid.columns else grid.row_title or "setting"
    header = [corner, *map(str, table.columns)]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.iterrows():
        out.append("| " + " | ".join([str(label), *(v if isinstance(v, str) else "" for v in row)]) + " |")
    return "\n".join(out)


def _divergence(comparison: pd.DataFrame, trials: pd.DataFrame, keys: list[str]) -> str:
    total = int((trials["status"] == m.DIVERGED).sum())
    if not total:
        return "No trial diverged (loss NaN or infinite)." + _blown_up(trials, keys)
    hit = comparison[comparison["n_diverged"] > 0]
    diverged = trials[trials["status"] == m.DIVERGED]
    at = {  # the epochs each setting's diverged trials stopped at
        r["setting"]: sorted({int(e) for e in diverged.loc[_in_setting(diverged, r, keys), "epochs_run"]})
        for _, r in hit.iterrows()
    }
    listed = "\n".join(
        f"- {r['setting']}: {r['n_diverged']} of {r['n_trials']}, in epoch {', '.join(map(str, at[r['setting']]))}"
        for _, r in hit.iterrows()
    )
    text = f"{total} of {len(trials)} trials diverged (loss NaN or infinite; they stop at once):\n\n{listed}"
    return text + _blown_up(trials, keys)


def _in_setting(trials: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.Series:
    mask = pd.Series(True, index=trials.index)
    for key in (k for k in keys if k != "seed" and k in trials):
        mask &= trials[key].astype(str) == str(row[key])
    return mask


def _blown_up(trials: pd.DataFrame, keys: list[str]) -> str:
    """The trials whose loss stayed finite but whose best validation perplexity is off the plots' scale
    (study.report.scale): not diverged by the definition, yet no model either."""
    far = trials[blown_up(trials)]
    if far.empty:
        return ""
    listed = "\n".join(
        f"- {setting_label(row, [k for k in keys if k != 'seed'])}, seed {value_label(row['seed'])}: best "
        f"{ppl_text(row['best_valid_ppl'])} at epoch {row['best_epoch']} of the {row['epochs_run']} it ran ({row['status']})"
        for _, row in far.iterrows()
    )
    return (
        f"\n\n{len(far)} blew up without diverging: the loss stayed finite, but the best validation perplexity is over "
        f"{FACTOR:g} times the lowest trial's ({ppl_text(trials['best_valid_ppl'].astype(float).min())}); the plots mark it off their scale:\n\n{listed}"
    )
