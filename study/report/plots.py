"""The report's pictures, drawn from tables study.report has already labelled.

    paths = write_all(folder, data)   # {"heatmap": "heatmap_valid_ppl.png", ...}, files in `folder`

The data: study.report.plot_data; the test perplexity plot: study.report.bars (both named here too).

Figures are built with matplotlib's object API (no pyplot, no global state) and saved as PNG with
the Agg renderer, each under a temporary name and renamed into place. A setting of max_grad_norm
= inf (no clipping) arrives here already labelled "none".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study import metrics as m
from study.report.axes import colours, epoch_axis, log_y, no_data, place_ticks, value_colours
from study.report.bars import test_ppl
from study.report.plot_data import PlotData, interval_words
from study.report.scale import FACTOR, off_scale, ppl_text, scale_top
from study.storage import replacing

__all__ = ["FILES", "PlotData", "grad_norms", "heatmap", "save", "test_ppl", "valid_curves", "write_all"]

DPI = 110
OFF_SCALE_COLOUR = "#8b1a1a"  # dark red: past viridis_r's dark purple end, where the scale stops
FILES = {
    "heatmap": "heatmap_valid_ppl.png",
    "valid_curves": "valid_curves.png",
    "grad_norms": "grad_norms.png",
    "test_ppl": "test_ppl.png",
}


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
    # A blown-up setting (1e13) past the scale's top, in its own colour, so that the rest keep theirs.
    top = scale_top(values.compressed())
    off = off_scale(values.filled(np.nan).ravel(), top)
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#d9d9d9", over=OFF_SCALE_COLOUR)
    norm = Normalize(values.min(), top) if values.count() else Normalize()
    if values.size:
        image = axes.imshow(values, cmap=cmap, norm=norm, aspect="auto")
    if values.count():  # a colour scale only for values there are (none: no -0.1..0.1 bar)
        figure.colorbar(
            image, ax=axes, label="mean best validation perplexity", extend="max" if off.any() else "neither"
        )
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
                lines = [ppl_text(value)]
                if not math.isnan(low):
                    lines.append(f"± {ppl_text((high - low) / 2)}")
                if value > top:
                    lines.append("off the scale")
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
    subtitle = interval_words(data.test, "best_valid_ppl", "± half of ") + (
        " (lower is better)" if values.count() else ""
    )
    if off.any():
        subtitle += f"; dark red: over {FACTOR:g} times the lowest, off the colour scale"
    # ~11 characters an inch at 10 pt, over the plot's own width: the row labels and the colour bar
    # (~1.6 inches with its label) take the rest, and the title is centred over the plot.
    wrapped = textwrap.fill(subtitle, max(30, int((figure.get_figwidth() - label_width - 1.6) * 11)))
    axes.set_title(f"{data.study}: mean best validation perplexity\n{wrapped}", fontsize=10)
    return figure


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
    # The y axis ends at 1.15 x the scale's top when a trial blew up (1e13): its curve comes in from
    # above, and its points past the edge are triangles on the edge.
    top = scale_top(epochs[m.VALID_PPL])
    off = off_scale(epochs[m.VALID_PPL], top)
    edge = 1.15 * top if off.any() else math.inf
    for index, panel in enumerate(panels):
        axes = grid.flat[index]
        shown = epochs[epochs["panel"] == panel]
        for _, trial in shown.groupby("trial_id", sort=False):
            finite = trial[np.isfinite(trial[m.VALID_PPL].astype(float))]
            colour = palette.get(trial["colour"].iloc[0], "grey")
            axes.plot(
                finite[m.EPOCH], finite[m.VALID_PPL], color=colour, alpha=0.8, linewidth=1.2, marker=".", markersize=3
            )
            above = finite[finite[m.VALID_PPL].astype(float) > edge]
            if len(above):  # (an empty unclipped line has a box at the figure's corner: layout collapses)
                axes.plot(above[m.EPOCH], [edge] * len(above), "^", color=colour, markersize=6, clip_on=False)
            if not len(finite):
                continue
            last = (finite[m.EPOCH].iloc[-1], min(finite[m.VALID_PPL].iloc[-1], edge))  # where the curve ends
            if trial[m.DIVERGED].any():
                axes.plot(*last, "x", color=colour, markersize=9, markeredgewidth=2, clip_on=False)
            elif (trial.get("status") == m.STOPPED_EARLY).any():
                axes.plot(*last, "s", color=colour, markersize=6, markerfacecolor="none", clip_on=False)
        beyond = off[(epochs["panel"] == panel).to_numpy()]
        logs[index] = log_y(axes, shown.loc[~beyond, m.VALID_PPL])
        if off.any():  # from the sane values' foot (log_y's margin) to the edge
            axes.set_ylim(epochs[m.VALID_PPL][~off].min() / 1.05, edge)
        if not logs[index] and not beyond.any():
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
    if off.any():
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                marker="^",
                linestyle="none",
                label=f"beyond the axis (up to {ppl_text(epochs[m.VALID_PPL][off].max())})",
            )
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
