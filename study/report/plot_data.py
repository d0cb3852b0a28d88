"""What the report's plots are drawn from: tables study.report has already labelled, and the words
for the intervals they show.

    data = PlotData(study="grad_clip", grid_mean=..., ...)   # built by study.report.build

A setting of max_grad_norm = inf (no clipping) arrives here already labelled "none".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from study.report.comparison import count_column


@dataclass(frozen=True)
class PlotData:
    study: str
    # The pivot: one row per value of the row factor, one column per value of the others.
    grid_mean: pd.DataFrame  # mean best validation perplexity
    grid_low: pd.DataFrame  # 95% interval, NaN without one
    grid_high: pd.DataFrame
    grid_diverged: pd.DataFrame  # diverged trials per cell
    grid_trials: pd.DataFrame  # trials per cell: 0 for a planned setting Ray has not created a trial of
    grid_errors: pd.DataFrame  # trials per cell that ended in error
    row_title: str
    column_title: str
    # Per epoch and trial: epoch, valid_ppl, diverged, grad metrics, "colour" and "panel" labels.
    epochs: pd.DataFrame
    colour_title: str
    colour_order: list[str]
    panel_order: list[str]
    panel_title: str
    thresholds: dict[str, float]  # colour label -> clipping threshold to draw beside the norms
    # The comparison with "x" (a number, or a row label), "_row" and "_col" labels and test_ppl_*.
    test: pd.DataFrame
    colour_numeric: bool
    sampled: bool = False  # the colour setting was drawn per trial (uniform, loguniform, randint): points, no lines


def interval_words(table: pd.DataFrame, name: str, lead: str) -> str:
    """What the plot's intervals are (after `lead`), from comparison.parquet's `<name>_ci_method`."""
    shown = table.loc[table[count_column(name)] > 0, f"{name}_ci_method"].astype(str)
    pooled, own = shown.str.startswith("pooled").any(), shown.str.startswith("per-setting").any()
    if pooled:
        return f"{lead}the 95% interval, from the seed noise pooled over the settings"
    if own:
        return f"{lead}each setting's 95% Student-t interval over its seeds" + (
            "; none for one trial" if shown.eq("none").any() else ""
        )
    return "no intervals: one trial or none per setting" if len(shown) else "no results yet"
