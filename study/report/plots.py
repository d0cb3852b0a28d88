"""The report's pictures, drawn from tables study.report has already labelled.

    paths = write_all(folder, data)   # {"heatmap": "heatmap_valid_ppl.png", ...}, files in `folder`

Figures are built with matplotlib's object API (no pyplot, no global state) and saved as PNG with
the Agg renderer, each under a temporary name and renamed into place. A setting of max_grad_norm
= inf (no clipping) arrives here already labelled "none".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study import metrics as m
from study.report.axes import colours, epoch_axis, log_y, no_data, numeric_axis, place_ticks, value_colours
from study.storage import replacing

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


def write_all(folder: Path, data: PlotData) -> dict[str, str]:
    """Draw every plot into `folder`; returns {kind: file name}."""
    drawers: dict[str, Callable[[PlotData], Figure]] = {
        "heatmap": heatmap,
        "valid_curves": valid_curves,
        "grad_norms": grad_norms,
        "test_ppl": test_ppl,
    }
    for kind, draw in drawers.items():
        save(draw(data), folder / FILES[kind])
    return dict(FILES)


def save(figure: Figure, path: Path) -> None:
    with replacing(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)


def heatmap(data: PlotData) -> Figure:
    mean = data.grid_mean.astype(float)
    rows, cols = mean.shape
    label_width = 0.075 * max((len(str(r)) for r in mean.index), default=4)  # inches for the row labels
    figure = Figure(
        figsize=(max(6.0, 2.4 + label_width + 1.35 * cols), max(3.0, 1.6 + 0.6 * rows)), layout="constrained"
    )
    axes = figure.add_subplot()
    values = np.ma.masked_invalid(mean.to_numpy())
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9")
    if values.size:
        image = axes.imshow(values, cmap=cmap, aspect="auto")
        norm = image.norm
    if values.count():  # a colour scale only for values there are (none: no -0.1..0.1 bar)
        figure.colorbar(image, ax=axes, label="mean best validation perplexity")
    else:
        no_data(axes, "validation perplexity")
    for i in range(rows):
        for j in range(cols):
            trials = data.grid_trials.iat[i, j]
            if pd.isna(trials):
                continue  # no trial had this combination, nor does the plan list it
            if not trials:  # planned: a grey cell (its mean is NaN) that says so
                axes.text(j, i, "not started", ha="center", va="center", fontsize=8.5, color="dimgrey")
                continue
            value, low, high = mean.iat[i, j], data.grid_low.iat[i, j], data.grid_high.iat[i, j]
            diverged, errors = int(data.grid_diverged.iat[i, j]), int(data.grid_errors.iat[i, j])
            if math.isnan(value):
                if diverged:
                    lines = [f"diverged\n{diverged}/{int(trials)}"]
                else:
                    lines = [f"error\n{errors}/{int(trials)}" if errors else "no result yet"]
            else:
                lines = [f"{value:.1f}"]
                if not math.isnan(low):
                    lines.append(f"± {(high - low) / 2:.1f}")
                if diverged:
                    lines.append(f"{diverged}/{int(trials)} diverged")
            dark = not math.isnan(value) and norm(value) > 0.6  # viridis_r is dark at the top of its range
            axes.text(
                j, i, "\n".join(lines), ha="center", va="center", fontsize=8.5, color="white" if dark else "black"
            )
    place_ticks(axes, {str(c): j for j, c in enumerate(mean.columns)}, rotate=True)
    axes.set_yticks(range(rows), [str(r) for r in mean.index])
    axes.set_xlabel(data.column_title or "")
    axes.set_ylabel(data.row_title)
    subtitle = _interval_words(data.test, "best_valid_ppl", "± half of the ") + (
        " (lower is better)" if values.count() else ""
    )
    # ~11 characters an inch at 10 pt, over the plot's own width: the row labels and the colour bar
    # (~1.6 inches with its label) take the rest, and the title is centred over the plot.
    wrapped = textwrap.fill(subtitle, max(30, int((figure.get_figwidth() - label_width - 1.6) * 11)))
    axes.set_title(f"{data.study}: mean best validation perplexity\n{wrapped}", fontsize=10)
    return figure


def _interval_words(table: pd.DataFrame, name: str, lead: str) -> str:
    """What the plot's intervals are (after `lead`), from comparison.parquet's `<name>_ci_method`."""
    shown = table.loc[table[f"n_{'valid' if name == 'best_valid_ppl' else 'test'}"] > 0, f"{name}_ci_method"].astype(
        str
    )
    pooled, own = shown.str.startswith("pooled").any(), shown.str.startswith("per-setting").any()
    if pooled:
        return f"{lead}95% interval, from the seed noise pooled over the settings"
    if own:
        return f"{lead}each setting's 95% Student-t interval over its seeds" + (
            "; none for one trial" if shown.eq("none").any() else ""
        )
    return "no intervals: one trial or none per setting" if len(shown) else "no results yet"


def _palette(data: PlotData):
    """Colour per colour label, and the colour bar's scale for sampled values (None: a legend)."""
    if data.sampled:
        return value_colours(data.colour_order)
    return colours(data.colour_order, data.colour_numeric), None


def valid_curves(data: PlotData) -> Figure:
    panels = data.panel_order or [""]
    columns = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(max(6.5, 4.2 * columns + 0.8), 3.4 * rows + 1.3), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    palette, scale = _palette(data)
    epochs = data.epochs
    logs = [False] * len(panels)
    for index, panel in enumerate(panels):
        axes = grid.flat[index]
        shown = epochs[epochs["panel"] == panel]
        for _, trial in shown.groupby("trial_id", sort=False):
            finite = trial[np.isfinite(trial[m.VALID_PPL].astype(float))]
            colour = palette.get(trial["colour"].iloc[0], "grey")
            axes.plot(
                finite[m.EPOCH], finite[m.VALID_PPL], color=colour, alpha=0.8, linewidth=1.2, marker=".", markersize=3
            )
            if not len(finite):
                continue
            last = (finite[m.EPOCH].iloc[-1], finite[m.VALID_PPL].iloc[-1])  # where the curve ends
            if trial[m.DIVERGED].any():
                axes.plot(*last, "x", color=colour, markersize=9, markeredgewidth=2)
            elif (trial.get("status") == m.STOPPED_EARLY).any():
                axes.plot(*last, "s", color=colour, markersize=6, markerfacecolor="none")
        logs[index] = log_y(axes, shown[m.VALID_PPL])
        if not logs[index]:
            no_data(axes, "validation results")
        epoch_axis(axes, epochs[m.EPOCH])
        if panel:
            axes.set_title(f"{data.panel_title} = {panel}" if "=" not in panel else panel, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    for axes in grid.flat[len(panels) :]:
        axes.set_visible(False)
    for axes in grid[-1]:
        axes.set_xlabel("epoch")
    for axes in grid[:, 0]:
        axes.set_ylabel("validation perplexity" + (" (log)" if any(logs) else ""))
    handles = (
        [Line2D([], [], color=palette[label], label=label) for label in data.colour_order] if scale is None else []
    )
    if scale is not None:  # sampled values: a colour bar, not a legend entry per trial
        figure.colorbar(scale, ax=grid.ravel().tolist(), label=f"{data.colour_title} (sampled)")
    if epochs[m.DIVERGED].astype(bool).any():
        handles.append(
            Line2D([], [], color="black", marker="x", linestyle="none", label="diverged (last finite value)")
        )
    if (epochs.get("status", pd.Series(dtype=str)) == m.STOPPED_EARLY).any():
        handles.append(
            Line2D([], [], color="black", marker="s", markerfacecolor="none", linestyle="none", label="stopped by ASHA")
        )
    longest = max((len(h.get_label()) for h in handles), default=1)
    fits = int(figure.get_figwidth() * 13 // (longest + 6))  # legend entries in a row: ~13 characters an inch
    if handles:
        figure.legend(
            handles=handles,
            title=(data.colour_title or None) if scale is None else None,
            loc="outside lower center",
            fontsize=8,
            ncols=max(1, min(len(handles), fits)),
            title_fontsize=9,
        )
    figure.suptitle(f"{data.study}: validation perplexity by epoch, one line per trial")
    return figure


def grad_norms(data: PlotData) -> Figure:
    figure = Figure(figsize=(11.5, 4.2), layout="constrained")
    norms, clipped = figure.subplots(1, 2)
    palette, scale = _palette(data)
    epochs = data.epochs
    means = epochs.groupby(["colour", m.EPOCH], sort=False)[[m.GRAD_NORM_P50, m.GRAD_NORM_P90, m.CLIP_FRACTION]].mean()
    drawn = False
    for label in data.colour_order:
        if label not in means.index.get_level_values(0):
            continue
        series = means.loc[label].sort_index()
        colour = palette[label]
        if series[m.GRAD_NORM_P50].notna().any():
            norms.plot(series.index, series[m.GRAD_NORM_P50], color=colour, linewidth=1.6, marker=".")
            norms.plot(series.index, series[m.GRAD_NORM_P90], color=colour, linewidth=1.2, linestyle="--", marker=".")
            drawn = True
        if label in data.thresholds:
            norms.axhline(data.thresholds[label], color=colour, linestyle=":", linewidth=1)
        clipped.plot(series.index, 100 * series[m.CLIP_FRACTION], color=colour, linewidth=1.6, marker=".", label=label)
    log = drawn and log_y(
        norms, pd.concat([means[m.GRAD_NORM_P50], means[m.GRAD_NORM_P90], pd.Series(list(data.thresholds.values()))])
    )
    if not drawn:
        no_data(norms, "gradient norms")
    for axes in (norms, clipped):
        epoch_axis(axes, data.epochs[m.EPOCH])
    norms.set_xlabel("epoch")
    norms.set_ylabel("global gradient L2 norm before clipping" + (" (log)" if log else ""))
    norms.set_title(
        "Gradient norm per step: median (solid), 90th percentile (dashed)"
        + (", threshold c (dotted)" if data.thresholds else ""),
        fontsize=9.5,
    )
    norms.grid(True, which="both", alpha=0.3)
    clipped.set_xlabel("epoch")
    clipped.set_ylabel("steps clipped (% of the epoch's steps)")
    clipped.set_ylim(-3, 103)
    clipped.set_title("Share of steps whose gradient was clipped", fontsize=9.5)
    clipped.grid(True, alpha=0.3)
    if scale is not None:
        figure.colorbar(scale, ax=[norms, clipped], label=f"{data.colour_title} (sampled)")
    elif epochs[m.CLIP_FRACTION].notna().any():
        clipped.legend(title=data.colour_title or None, fontsize=8, loc="best")
    else:
        no_data(clipped, "clipping records")
    figure.suptitle(f"{data.study}: gradients by epoch (mean over the trials of each setting)")
    return figure


def test_ppl(data: PlotData) -> Figure:
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axes = figure.add_subplot()
    table = data.test[data.test["n_test"] > 0]
    if table.empty:
        no_data(axes, "completed trials")
    lines = list(dict.fromkeys(data.test["_col"]))
    palette = colours(lines, numeric=False)
    if data.colour_numeric:
        axis = numeric_axis(data.test["x"].astype(float))
        for i, line in enumerate(lines):
            part = table[table["_col"] == line].sort_values("x")
            x = axis.offset(np.array([axis.positions[v] for v in part["x"].astype(float)]), i - (len(lines) - 1) / 2)
            _errorbars(axes, x, part, palette[line], line, connect=not data.sampled)
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
            _errorbars(axes, x, part, palette[line], line, connect=False)
        axes.set_xlabel(data.row_title or "setting")
        _mark_stopped(axes, data.test, lambda row: labels.index(row["x"]))
        if labels:
            axes.set_xlim(-0.5, len(labels) - 0.5)
        place_ticks(axes, {str(label): i for i, label in enumerate(labels)}, rotate=True)
    axes.set_ylabel("test perplexity")
    axes.grid(True, alpha=0.3)
    shown = [
        (h, label) for h, label in zip(*axes.get_legend_handles_labels()) if label != "mean"
    ]  # "mean": the one line
    if shown:
        axes.legend(*zip(*shown), title=data.column_title or None, fontsize=8)
    axes.set_title(
        f"{data.study}: test perplexity of completed trials\n{_interval_words(data.test, 'test_ppl', 'bars: ')}",
        fontsize=10,
    )
    return figure


def _errorbars(axes, x: np.ndarray, part: pd.DataFrame, colour, label: str, connect: bool = True) -> None:
    if part.empty:
        return
    mean = part["test_ppl_mean"].to_numpy(float)
    low = part["test_ppl_ci95_low"].to_numpy(float)
    high = part["test_ppl_ci95_high"].to_numpy(float)
    # np.nan where there is no interval: matplotlib draws no bar for it.
    error = np.vstack([mean - low, high - mean])
    axes.errorbar(
        x,
        mean,
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
