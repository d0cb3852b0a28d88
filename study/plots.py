"""The report's pictures, drawn from tables study.report has already labelled.

    paths = write_all(folder, data)   # {"heatmap": "heatmap_valid_ppl.png", ...}, files in `folder`

Figures are built with matplotlib's object API (no pyplot, no global state) and saved as PNG with
the Agg renderer, each under a temporary name and renamed into place. A setting of max_grad_norm
= inf (no clipping) arrives here already labelled "none".
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study import metrics as m

DPI = 110
FILES = {
    "heatmap": "heatmap_valid_ppl.png",
    "valid_curves": "valid_curves.png",
    "grad_norms": "grad_norms.png",
    "test_ppl": "test_ppl.png",
}


@dataclass(frozen=True)
class PlotData:
    study: str
    # The pivot: one row per value of the row factor, one column per value of the others.
    grid_mean: pd.DataFrame  # mean best validation perplexity
    grid_low: pd.DataFrame  # 95% interval, NaN without one
    grid_high: pd.DataFrame
    grid_diverged: pd.DataFrame  # diverged trials per cell
    grid_trials: pd.DataFrame  # trials per cell
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


def write_all(folder: Path, data: PlotData) -> dict[str, str]:
    """Draw every plot into `folder`; returns {kind: file name}."""
    drawers: dict[str, Callable[[PlotData], Figure]] = {
        "heatmap": heatmap, "valid_curves": valid_curves, "grad_norms": grad_norms, "test_ppl": test_ppl,
    }
    for kind, draw in drawers.items():
        save(draw(data), folder / FILES[kind])
    return dict(FILES)


def save(figure: Figure, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(temporary, format="png", dpi=DPI)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def heatmap(data: PlotData) -> Figure:
    mean = data.grid_mean.astype(float)
    rows, cols = mean.shape
    label_width = 0.075 * max((len(str(r)) for r in mean.index), default=4)  # inches for the row labels
    figure = Figure(figsize=(max(6.0, 2.4 + label_width + 1.35 * cols), max(3.0, 1.6 + 0.6 * rows)), layout="constrained")
    axes = figure.add_subplot()
    values = np.ma.masked_invalid(mean.to_numpy())
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9")
    image = axes.imshow(values, cmap=cmap, aspect="auto")
    figure.colorbar(image, ax=axes, label="mean best validation perplexity")
    norm = image.norm
    for i in range(rows):
        for j in range(cols):
            trials = data.grid_trials.iat[i, j]
            if pd.isna(trials):
                continue  # no trial had this combination
            value, low, high = mean.iat[i, j], data.grid_low.iat[i, j], data.grid_high.iat[i, j]
            diverged = int(data.grid_diverged.iat[i, j])
            if math.isnan(value):
                lines = [f"diverged\n{diverged}/{int(trials)}" if diverged else "no result yet"]
            else:
                lines = [f"{value:.1f}"]
                if not math.isnan(low):
                    lines.append(f"± {(high - low) / 2:.1f}")
                if diverged:
                    lines.append(f"{diverged}/{int(trials)} diverged")
            dark = not math.isnan(value) and norm(value) > 0.6  # viridis_r is dark at the top of its range
            axes.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=8.5, color="white" if dark else "black")
    axes.set_xticks(range(cols), [str(c) for c in mean.columns], rotation=20 if cols > 4 else 0)
    axes.set_yticks(range(rows), [str(r) for r in mean.index])
    axes.set_xlabel(data.column_title or "")
    axes.set_ylabel(data.row_title)
    axes.set_title(f"{data.study}: mean best validation perplexity\n± half-width of the 95% interval over seeds (lower is better)", fontsize=10)
    return figure


def _colours(order: list[str], numeric: bool) -> dict[str, tuple]:
    if numeric:
        palette = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, max(len(order), 1)))
    else:
        palette = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(order))]
    return {label: tuple(colour) for label, colour in zip(order, palette)}


def _no_data(axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=axes.transAxes, color="grey")


def valid_curves(data: PlotData) -> Figure:
    panels = data.panel_order or [""]
    columns = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(max(6.5, 4.2 * columns + 0.8), 3.4 * rows + 1.3), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    colours = _colours(data.colour_order, data.colour_numeric)
    epochs = data.epochs
    for index, panel in enumerate(panels):
        axes = grid.flat[index]
        shown = epochs[epochs["panel"] == panel]
        for _, trial in shown.groupby("trial_id", sort=False):
            finite = trial[np.isfinite(trial[m.VALID_PPL].astype(float))]
            colour = colours.get(trial["colour"].iloc[0], "grey")
            axes.plot(finite[m.EPOCH], finite[m.VALID_PPL], color=colour, alpha=0.8, linewidth=1.2, marker=".", markersize=3)
            if trial[m.DIVERGED].any() and len(finite):
                axes.plot(finite[m.EPOCH].iloc[-1], finite[m.VALID_PPL].iloc[-1], "x", color=colour, markersize=9, markeredgewidth=2)
        if shown.empty or not np.isfinite(shown[m.VALID_PPL].astype(float)).any():
            _no_data(axes, "validation results")
        else:
            _log_y(axes, shown[m.VALID_PPL])
        _epoch_axis(axes, epochs[m.EPOCH])
        if panel:
            axes.set_title(f"{data.panel_title} = {panel}" if "=" not in panel else panel, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    for axes in grid.flat[len(panels):]:
        axes.set_visible(False)
    for axes in grid[-1]:
        axes.set_xlabel("epoch")
    for axes in grid[:, 0]:
        axes.set_ylabel("validation perplexity (log)")
    handles = [Line2D([], [], color=colours[label], label=label) for label in data.colour_order]
    handles.append(Line2D([], [], color="black", marker="x", linestyle="none", label="diverged (last finite value)"))
    longest = max(len(h.get_label()) for h in handles)
    fits = int(figure.get_figwidth() * 13 // (longest + 6))  # legend entries in a row: ~13 characters an inch
    figure.legend(handles=handles, title=data.colour_title or None, loc="outside lower center", fontsize=8,
                  ncols=max(1, min(len(handles), fits)), title_fontsize=9)
    figure.suptitle(f"{data.study}: validation perplexity by epoch, one line per trial")
    return figure


def grad_norms(data: PlotData) -> Figure:
    figure = Figure(figsize=(11.5, 4.2), layout="constrained")
    norms, clipped = figure.subplots(1, 2)
    colours = _colours(data.colour_order, data.colour_numeric)
    epochs = data.epochs
    means = epochs.groupby(["colour", m.EPOCH], sort=False)[[m.GRAD_NORM_P50, m.GRAD_NORM_P90, m.CLIP_FRACTION]].mean()
    drawn = False
    for label in data.colour_order:
        if label not in means.index.get_level_values(0):
            continue
        series = means.loc[label].sort_index()
        colour = colours[label]
        if series[m.GRAD_NORM_P50].notna().any():
            norms.plot(series.index, series[m.GRAD_NORM_P50], color=colour, linewidth=1.6, marker=".")
            norms.plot(series.index, series[m.GRAD_NORM_P90], color=colour, linewidth=1.2, linestyle="--", marker=".")
            drawn = True
        if label in data.thresholds:
            norms.axhline(data.thresholds[label], color=colour, linestyle=":", linewidth=1)
        clipped.plot(series.index, 100 * series[m.CLIP_FRACTION], color=colour, linewidth=1.6, marker=".", label=label)
    if drawn:
        _log_y(norms, pd.concat([means[m.GRAD_NORM_P50], means[m.GRAD_NORM_P90], pd.Series(list(data.thresholds.values()))]))
    else:
        _no_data(norms, "gradient norms")
    for axes in (norms, clipped):
        _epoch_axis(axes, data.epochs[m.EPOCH])
    norms.set_xlabel("epoch")
    norms.set_ylabel("global gradient L2 norm before clipping (log)")
    norms.set_title("Gradient norm per step: median (solid), 90th percentile (dashed)" + (", threshold c (dotted)" if data.thresholds else ""), fontsize=9.5)
    norms.grid(True, which="both", alpha=0.3)
    clipped.set_xlabel("epoch")
    clipped.set_ylabel("steps clipped (% of the epoch's steps)")
    clipped.set_ylim(-3, 103)
    clipped.set_title("Share of steps whose gradient was clipped", fontsize=9.5)
    clipped.grid(True, alpha=0.3)
    if epochs[m.CLIP_FRACTION].notna().any():
        clipped.legend(title=data.colour_title or None, fontsize=8, loc="best")
    else:
        _no_data(clipped, "clipping records")
    figure.suptitle(f"{data.study}: gradients by epoch (mean over the trials of each setting)")
    return figure


def test_ppl(data: PlotData) -> Figure:
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axes = figure.add_subplot()
    table = data.test[data.test["n_test"] > 0]
    if table.empty:
        _no_data(axes, "completed trials")
    lines = list(dict.fromkeys(data.test["_col"]))
    colours = _colours(lines, numeric=False)
    if data.colour_numeric:
        positions, ticks = _log_positions(data.test["x"].astype(float))
        spread = 1.03  # neighbouring lines side by side, so that the bars do not hide each other
        for i, line in enumerate(lines):
            part = table[table["_col"] == line].sort_values("x")
            shift = spread ** (i - (len(lines) - 1) / 2)
            x = np.array([positions[v] for v in part["x"].astype(float)]) * shift
            _errorbars(axes, x, part, colours[line], line)
        axes.set_xscale("log")
        axes.set_xticks(list(ticks.values()), list(ticks.keys()))
        axes.minorticks_off()
        if positions:
            axes.set_xlim(min(positions.values()) / 1.5, max(positions.values()) * 1.5)
        if math.inf in positions:
            finite = [p for v, p in positions.items() if math.isfinite(v)]
            if finite:
                axes.axvline(math.sqrt(max(finite) * positions[math.inf]), color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel(f"{data.colour_title} (log scale; none = no clipping)")
    else:
        labels = list(dict.fromkeys(data.test["x"]))
        for i, line in enumerate(lines):
            part = table[table["_col"] == line]
            x = np.array([labels.index(v) for v in part["x"]]) + 0.08 * (i - (len(lines) - 1) / 2)
            _errorbars(axes, x, part, colours[line], line, connect=False)
        axes.set_xticks(range(len(labels)), labels, rotation=15 if len(labels) > 3 else 0)
        axes.set_xlabel(data.row_title or "setting")
    axes.set_ylabel("test perplexity")
    axes.grid(True, alpha=0.3)
    if len(lines) > 1 or lines != ["mean"]:
        axes.legend(title=data.column_title or None, fontsize=8)
    axes.set_title(f"{data.study}: test perplexity of completed trials\nmean over seeds with 95% interval (none shown for a single trial)", fontsize=10)
    return figure


def _epoch_axis(axes, epochs: pd.Series) -> None:
    """Whole-epoch ticks; an experiment with one epoch so far still gets an axis from 0 to 2."""
    axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if epochs.nunique() == 1:
        axes.set_xlim(epochs.iloc[0] - 1, epochs.iloc[0] + 1)


def _log_y(axes, values: pd.Series) -> None:
    """A log y axis with 4 to 9 plain-number ticks (120, 150, 200, 300), however narrow its range."""
    values = values.astype(float)
    values = values[np.isfinite(values) & (values > 0)]
    axes.set_yscale("log")
    if values.empty:
        return
    low, high = values.min(), values.max()
    if high < 1.2 * low:  # one value, or nearly: give the axis a range that holds readable ticks
        low, high = low / 1.1, high * 1.1
        axes.set_ylim(low, high)
    ticks = []
    for steps in _TICK_STEPS:
        ticks = [
            step * 10.0 ** power
            for power in range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
            for step in steps
            if low <= step * 10.0 ** power <= high
        ]
        if len(ticks) >= 4:
            break
    ticks = ticks[:: math.ceil(len(ticks) / 9)] if ticks else ticks
    axes.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())


# Tick values per decade, coarse to fine: the first that puts 4 ticks in the range is used.
_TICK_STEPS = (
    (1,), (1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 8),
    (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
    tuple(round(1 + 0.1 * i, 1) for i in range(90)),
    tuple(round(1 + 0.02 * i, 2) for i in range(450)),
)


def _errorbars(axes, x: np.ndarray, part: pd.DataFrame, colour, label: str, connect: bool = True) -> None:
    mean = part["test_ppl_mean"].to_numpy(float)
    low = part["test_ppl_ci95_low"].to_numpy(float)
    high = part["test_ppl_ci95_high"].to_numpy(float)
    # np.nan where there is no interval: matplotlib draws no bar for it.
    error = np.vstack([mean - low, high - mean])
    axes.errorbar(x, mean, yerr=error, color=colour, marker="o", markersize=5, capsize=4,
                  linestyle="-" if connect else "none", linewidth=1.3, label=label)


def _log_positions(values: pd.Series) -> tuple[dict[float, float], dict[str, float]]:
    """Where each x value goes on a log axis: itself, and inf ('none') one step past the largest."""
    finite = sorted({v for v in values if math.isfinite(v) and v > 0})
    positions = {v: v for v in finite}
    if math.inf in set(values):
        if len(finite) >= 2:
            step = (finite[-1] / finite[0]) ** (1 / (len(finite) - 1))
            positions[math.inf] = finite[-1] * max(step, 1.5) ** 1.5
        else:
            positions[math.inf] = finite[-1] * 4 if finite else 1.0
    ticks = {("none" if math.isinf(v) else f"{v:g}"): p for v, p in positions.items()}
    return positions, ticks
