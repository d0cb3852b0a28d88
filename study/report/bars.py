"""The test perplexity plot: each setting's mean over its completed trials, with its interval.

    figure = test_ppl(data)   # data: a study.report.plot_data.PlotData; saved by study.report.plots

A numeric setting (max_grad_norm) goes along x on the axis study.report.axes chooses for it, the
other factor as one line each; a setting whose trials ASHA all stopped is a grey column that says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from study.report.axes import colours, no_data, numeric_axis, place_ticks
from study.report.plot_data import PlotData, interval_words
from study.report.scale import off_scale, ppl_text, scale_top


def test_ppl(data: PlotData) -> Figure:
    figure = Figure(figsize=(8.5, 4.6), layout="constrained")  # the legend beside the axes
    axes = figure.add_subplot()
    table = data.test[data.test["n_test"] > 0]
    if table.empty:
        no_data(axes, "completed trials")
    limits = _test_range(table)
    lines = list(dict.fromkeys(data.test["_col"]))
    palette = colours(lines, numeric=False)
    if data.colour_numeric:
        axis = numeric_axis(data.test["x"].astype(float))
        for i, line in enumerate(lines):
            # Every setting of the line, those without a test perplexity as gaps: a line across them
            # (grad_clip's lr_decay 0.65 from max_grad_norm 1 to 20) read as values in between.
            part = data.test[data.test["_col"] == line].sort_values("x")
            x = axis.offset(np.array([axis.positions[v] for v in part["x"].astype(float)]), i - (len(lines) - 1) / 2)
            _errorbars(axes, x, part, palette[line], line, limits[1], connect=not data.sampled)
        axis.apply(axes)
        if axis.edge() is not None:
            axes.axvline(axis.edge(), color="grey", linestyle=":", linewidth=1)
        notes = [{"log": "log scale", "symlog": "symmetric log scale", "linear": ""}[axis.scale]]
        notes += ["one point per sampled trial"] if data.sampled else []
        notes += ["none = no clipping"] if math.inf in axis.positions else []
        shown = "; ".join(note for note in notes if note)
        axes.set_xlabel(f"{data.colour_title}" + (f" ({shown})" if shown else ""))
        _mark_stopped(axes, data.test, lambda row: axis.positions[float(row["x"])])
        if not data.sampled:  # a tick per setting; sampled values keep the axis's own round ticks
            place_ticks(axes, axis.ticks)
    else:
        labels = list(dict.fromkeys(data.test["x"]))
        for i, line in enumerate(lines):
            part = table[table["_col"] == line]
            x = np.array([labels.index(v) for v in part["x"]]) + 0.08 * (i - (len(lines) - 1) / 2)
            _errorbars(axes, x, part, palette[line], line, limits[1], connect=False)
        axes.set_xlabel(data.row_title or "setting")
        _mark_stopped(axes, data.test, lambda row: labels.index(row["x"]))
        if labels:
            axes.set_xlim(-0.5, len(labels) - 0.5)
        place_ticks(axes, {str(label): i for i, label in enumerate(labels)}, rotate=True)
    if math.isfinite(limits[1]):
        axes.set_ylim(*limits)
    axes.set_ylabel("test perplexity")
    axes.grid(True, alpha=0.3)
    shown = [
        (h, label) for h, label in zip(*axes.get_legend_handles_labels()) if label != "mean"
    ]  # "mean": the one line
    if shown:
        # Beside the axes, not over them: at real scale the best corner held data (grad_clip's 0.25).
        axes.legend(
            *zip(*shown), title=data.column_title or None, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1)
        )
    axes.set_title(
        f"{data.study}: test perplexity of completed trials\n{interval_words(data.test, 'test_ppl', 'bars: ')}",
        fontsize=10,
    )
    return figure


def _test_range(table: pd.DataFrame) -> tuple[float, float]:
    """The test axis's limits when a setting blew up: the others' means and intervals with a margin,
    the top a little higher for the blown-up one's triangle; (-inf, inf): matplotlib's own."""
    means = table["test_ppl_mean"].astype(float)
    top = scale_top(means)
    if not off_scale(means, top).any():
        return -math.inf, math.inf
    shown = table[means <= top]
    low = min(shown["test_ppl_mean"].min(), shown["test_ppl_ci95_low"].min(skipna=True))
    high = max(top, shown["test_ppl_ci95_high"].max(skipna=True))
    span = max(high - low, 1.0)
    return low - 0.05 * span, high + 0.12 * span


def _errorbars(
    axes, x: np.ndarray, part: pd.DataFrame, colour, label: str, edge: float = math.inf, connect: bool = True
) -> None:
    """A setting's mean and interval per x; a mean past `edge` as a triangle on the edge with its value."""
    if part["test_ppl_mean"].isna().all():
        return
    mean = part["test_ppl_mean"].to_numpy(float)
    over = mean > edge  # NaN (no test perplexity) is not over: it stays in the line as a gap
    for where, value in zip(x[over], mean[over]):
        axes.plot(where, edge, "^", color=colour, markersize=7, clip_on=False)
        axes.annotate(
            ppl_text(value),
            (where, edge),
            xytext=(0, -12),
            textcoords="offset points",
            ha="center",
            fontsize=7.5,
            color=colour,
            annotation_clip=False,
        )
    shown = ~over  # the line joins these only: one up to 1e13 would stand like a bar
    low = part["test_ppl_ci95_low"].to_numpy(float)[shown]
    high = part["test_ppl_ci95_high"].to_numpy(float)[shown]
    # np.nan where there is no interval: matplotlib draws no bar for it.
    error = np.vstack([mean[shown] - low, high - mean[shown]])
    axes.errorbar(
        x[shown],
        mean[shown],
        yerr=error,
        color=colour,
        marker="o",
        markersize=5,
        capsize=4,
        linestyle="-" if connect else "none",
        linewidth=1.3,
        label=label,
    )


def _mark_stopped(axes, test: pd.DataFrame, position: Callable[[pd.Series], float]) -> None:
    """A grey column with the words "stopped by ASHA" at each setting that has no test perplexity
    because ASHA stopped all its trials: shown as stopped, not silently missing. It spans the whole
    perplexity axis, so it stands for no value (a marker at the foot read as a low, better perplexity)."""
    stopped = test[(test["n_test"] == 0) & (test.get("n_stopped_early", 0) > 0)]
    for i, (_, row) in enumerate(stopped.iterrows()):
        x = position(row)
        axes.axvline(
            x,
            color="grey",
            alpha=0.2,
            linewidth=14,  # points: as wide on a log axis as on a linear one
            solid_capstyle="butt",
            label="stopped by ASHA (no test perplexity)" if i == 0 else None,
        )
        axes.text(
            x,
            0.5,
            "stopped by ASHA",
            transform=axes.get_xaxis_transform(),  # x a setting, y the middle of the axes: no perplexity
            rotation=90,
            ha="center",
            va="center",
            fontsize=8,
            color="dimgrey",
        )
