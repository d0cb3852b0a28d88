"""Axes and colours for the report's plots: a scale that suits the values, tick labels that never overlap.

    python -c "from study.report.axes import numeric_axis; print(numeric_axis([0, 0.9]))"   # linear: 0 has no log

study.report.plots draws; this module decides where values go. A numeric setting goes on a log axis when
every value is positive and they span a decade or more (clipping thresholds 0.1..10), on a
symmetric-log axis when they include zero or negatives and span two decades or more (weight decay
0, 1e-5..1e-3), else on a linear axis (momentum 0, 0.9). inf ("none": no clipping) sits one step
past the largest value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from study.labels import value_label


@dataclass(frozen=True)
class NumericAxis:
    scale: str  # "log", "symlog" or "linear"
    positions: dict[float, float]  # value -> x in data coordinates (inf: one step past the largest)
    linthresh: float | None = None  # symlog only: the linear range around 0

    @property
    def ticks(self) -> dict[str, float]:
        return {value_label(v): p for v, p in sorted(self.positions.items())}

    def offset(self, x: np.ndarray, shift: float) -> np.ndarray:
        """`x` moved by `shift` (about -2..2) small steps, so that neighbouring lines do not hide each other."""
        if self.scale == "log":
            return x * 1.03**shift
        span = (max(self.positions.values()) - min(self.positions.values())) if self.positions else 0.0
        return x + 0.01 * (span or 1.0) * shift

    def apply(self, axes) -> None:
        """Set the scale and limits on `axes` (ticks: see `place_ticks`)."""
        if self.scale == "log":
            axes.set_xscale("log")
            axes.minorticks_off()
        elif self.scale == "symlog":
            axes.set_xscale("symlog", linthresh=self.linthresh)
            axes.minorticks_off()
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, not 10^-1
        if self.positions and self.scale == "log":
            axes.set_xlim(min(self.positions.values()) / 1.5, max(self.positions.values()) * 1.5)

    def edge(self) -> float | None:
        """Where the dotted line between the largest finite value and inf goes; None without inf."""
        finite = [p for v, p in self.positions.items() if math.isfinite(v)]
        if math.inf not in self.positions or not finite:
            return None
        top = self.positions[math.inf]
        return math.sqrt(max(finite) * top) if self.scale == "log" else (max(finite) + top) / 2


def numeric_axis(values: Iterable[float]) -> NumericAxis:
    """The axis for these setting values (finite numbers and +inf)."""
    values = [float(v) for v in values]
    finite = sorted({v for v in values if math.isfinite(v)})
    nonzero = [abs(v) for v in finite if v != 0]
    spread = max(nonzero) / min(nonzero) if nonzero else 1.0
    if finite and finite[0] > 0 and spread >= 10:
        scale, linthresh = "log", None
    elif finite and finite[0] <= 0 and spread >= 100:
        scale, linthresh = "symlog", min(nonzero)
    else:
        scale, linthresh = "linear", None
    positions = {v: v for v in finite}
    if math.inf in values:
        if scale == "log":
            step = (finite[-1] / finite[0]) ** (1 / (len(finite) - 1)) if len(finite) >= 2 else 4.0
            positions[math.inf] = finite[-1] * max(step, 1.5) ** 1.5
        else:
            step = (
                (finite[-1] - finite[0]) / (len(finite) - 1) if len(finite) >= 2 else abs(finite[0]) if finite else 1.0
            )
            positions[math.inf] = (finite[-1] if finite else 0.0) + (step or 1.0)
    return NumericAxis(scale, positions, linthresh)


def place_ticks(axes, ticks: dict[str, float], rotate: bool = False) -> None:
    """Tick labels at `ticks` (label -> x); labels that would overlap a neighbour are dropped
    (numbers) or the labels turned (`rotate`: categories, none of which may go)."""
    axes.set_xticks(list(ticks.values()), list(ticks.keys()))
    axes.xaxis.set_minor_locator(ticker.NullLocator())
    if not ticks or not _overlapping(axes):
        return
    if rotate:
        figure = axes.figure
        height = figure.get_figheight()
        for angle in (30, 90):
            axes.set_xticks(
                list(ticks.values()), list(ticks.keys()), rotation=angle, ha="right" if angle < 90 else "center"
            )
            # Turned labels stand taller: the figure grows by their height, so that they never squeeze
            # the plot itself to nothing (long `cases` labels at 90 degrees take inches).
            figure.set_figheight(height + _label_height(axes))
            if not _overlapping(axes):
                return
        return
    kept, last = {}, None
    for (label, x), text in zip(ticks.items(), axes.get_xticklabels()):
        box = text.get_window_extent()
        if last is None or box.x0 > last.x1 + 4:  # 4 pixels between labels at least
            kept[label], last = x, box
    axes.set_xticks(list(kept.values()), list(kept.keys()))


def _label_height(axes) -> float:
    """The tallest x tick label of `axes`, in inches."""
    heights = [t.get_window_extent().height for t in axes.get_xticklabels() if t.get_text()]
    return max(heights, default=0.0) / axes.figure.dpi


def _overlapping(axes) -> bool:
    """Whether any two x tick labels of `axes` overlap once the figure is laid out."""
    axes.figure.draw_without_rendering()
    boxes = sorted((t.get_window_extent() for t in axes.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
    return any(b.x0 < a.x1 + 2 for a, b in itertools.pairwise(boxes))


def colours(order: list[str], numeric: bool) -> dict[str, tuple]:
    """A colour per label: viridis along ordered numbers, tab10 for categories."""
    if numeric:
        palette = matplotlib.colormaps["viridis"](np.linspace(0, 0.85, max(len(order), 1)))
    else:
        palette = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(order))]
    return {label: tuple(colour) for label, colour in zip(order, palette)}


def value_colours(order: list[str]) -> tuple[dict[str, tuple], ScalarMappable]:
    """Sampled values ('0.734'): viridis by value, not by rank, and the scale for a colour bar."""
    values = {label: float(label) for label in order}
    norm = Normalize(min(values.values(), default=0.0), max(values.values(), default=1.0))
    cmap = matplotlib.colormaps["viridis"]
    return {label: tuple(cmap(norm(v))) for label, v in values.items()}, ScalarMappable(norm, cmap)


def no_data(axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=axes.transAxes, color="grey")


def epoch_axis(axes, epochs: pd.Series) -> None:
    """Whole-epoch ticks; an experiment with one epoch so far still gets an axis from 0 to 2."""
    axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if epochs.nunique() == 1:
        axes.set_xlim(epochs.iloc[0] - 1, epochs.iloc[0] + 1)


def log_y(axes, values: pd.Series) -> bool:
    """A log y axis with 4 to 9 plain-number ticks (120, 150, 200, 300), however narrow its range;
    False (and the axis left linear) when no value is positive and finite."""
    values = values.astype(float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.empty:
        return False
    axes.set_yscale("log")
    low, high = values.min(), values.max()
    if high < 1.2 * low:  # one value, or nearly: give the axis a range that holds readable ticks
        low, high = low / 1.1, high * 1.1
        axes.set_ylim(low, high)
    ticks = []
    for steps in _TICK_STEPS:
        ticks = [
            step * 10.0**power
            for power in range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
            for step in steps
            if low <= step * 10.0**power <= high
        ]
        if len(ticks) >= 4:
            break
    ticks = ticks[:: math.ceil(len(ticks) / 9)] if ticks else ticks
    axes.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


# Tick values per decade, coarse to fine: the first that puts 4 ticks in the range is used.
_TICK_STEPS = (
    (1,),
    (1, 2, 5),
    (1, 2, 3, 5, 7),
    (1, 1.5, 2, 3, 4, 5, 6, 8),
    (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
    tuple(round(1 + 0.1 * i, 1) for i in range(90)),
    tuple(round(1 + 0.02 * i, 2) for i in range(450)),
)
