"""Perplexities far off the rest: where the plots' scales end, and how such a number is written.

    python -c "from study.report.scale import scale_top, ppl_text; print(scale_top([117, 260, 3.3e13]), ppl_text(3.3e13))"
    # 260.0 3.3e+13

A trial without clipping can blow up and recover partly without its loss ever becoming infinite
(then it has not diverged: design.md). Its perplexity, 1e13 or 1e114, would stretch a colour bar or
an axis until every other setting looks the same. So the plots span the values up to ten times
the lowest (an order of magnitude: the whole range of sensible settings, from 113 to ~700 for the
small model), mark what lies beyond as off the scale, and print it in scientific notation; the
summary names the trials beyond the same line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from study.report.comparison import count_column

FACTOR = 10.0  # a value more than FACTOR times the lowest is off the scale


def scale_top(values: Iterable[float]) -> float:
    """The largest finite positive value within FACTOR times the lowest; NaN when there is none."""
    finite = np.asarray([float(v) for v in values], dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not finite.size:
        return math.nan
    return float(finite[finite <= FACTOR * finite.min()].max())


def off_scale(values: Iterable[float], top: float) -> np.ndarray:
    """Which of `values` lie above `top` (finite ones only; inf is diverged, shown as such)."""
    array = np.asarray([float(v) for v in values], dtype=float)
    return np.isfinite(array) & (array > top) if math.isfinite(top) else np.zeros(array.shape, bool)


def blown_up(trials: pd.DataFrame) -> np.ndarray:
    """Which `trials` blew up: their best validation perplexity finite and over FACTOR times the
    lowest trial's (the summary's Divergence section names them, the ANOVA leaves them out)."""
    best = trials["best_valid_ppl"].astype(float)
    return off_scale(best, scale_top(best))


def ppl_text(value: float, decimals: int = 1) -> str:
    """117.3, and 3.26e+13 for the values that would not fit a table's column, a heatmap's cell or a line."""
    return f"{value:.{decimals}f}" if abs(value) < 1e5 else f"{value:.3g}"


def ppl_with_interval(row: Mapping[str, Any], name: str) -> str:
    """A comparison row's mean of `name` (best_valid_ppl or test_ppl) with its 95% interval and n:
    "117.3 [95% CI 116.9, 117.7], n=2", or "117.3 (n=1, no interval)"."""
    n = int(row[count_column(name)])
    if math.isnan(row[f"{name}_ci95_low"]):
        return f"{ppl_text(row[f'{name}_mean'])} (n={n}, no interval)"
    low, high = ppl_text(row[f"{name}_ci95_low"]), ppl_text(row[f"{name}_ci95_high"])
    return f"{ppl_text(row[f'{name}_mean'])} [95% CI {low}, {high}], n={n}"
