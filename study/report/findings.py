"""The summary's answers beyond the best setting: how the best compares with the reference setting
(and the reference with its published perplexities), and where clipping engages.

    reference_text(experiment, comparison)   # None where the space does not vary the preset's settings
    clipping_text(experiment)                # None where max_grad_norm is not varied

Everything comes from the tables; the only numbers written here are the published ones.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import yaml

from study import metrics as m
from study.config import PRESETS, make_config
from study.errors import UsageError
from study.labels import value_label
from study.report.collect import Experiment
from study.report.comparison import SEED, setting_keys
from study.report.scale import ppl_text, ppl_with_interval

# Test perplexity of the reference setting of a preset, as published (the small model, 13 epochs).
PUBLISHED = {"small": (("TF's ptb_word_lm tutorial", 115.91), ("Zaremba et al. (2014)", 114.5))}
CLIP_KEY = "max_grad_norm"
SHOWN_EPOCHS = 13  # columns of the clipping tables at most; longer runs show evenly spaced epochs


def reference_setting(experiment: Experiment) -> dict[str, Any] | None:
    """The study's varied settings at the values its preset and fixed settings give them (the
    reference run's, for the small preset: max_grad_norm 5, lr_decay 0.5); None where unknown."""
    info = experiment.study
    keys = [key for key in setting_keys(experiment.factors) if key != SEED]
    if not keys or info.get("preset") not in PRESETS:
        return None
    try:
        fixed = (yaml.safe_load(info.get("space_text") or "") or {}).get("fixed") or {}
        base = make_config(fixed if isinstance(fixed, dict) else {}, preset=info["preset"]).model_dump()
    except (yaml.YAMLError, AttributeError, UsageError):
        return None
    if any(key not in base for key in keys):
        return None
    return {key: base[key] for key in keys}


def _row_of(comparison: pd.DataFrame, setting: dict[str, Any]) -> pd.Series | None:
    mask = pd.Series(True, index=comparison.index)
    for key, value in setting.items():
        mask &= comparison[key].astype(float) == float(value) if isinstance(value, float) else comparison[key] == value
    return comparison[mask].iloc[0] if mask.any() else None


def reference_text(experiment: Experiment, comparison: pd.DataFrame) -> str | None:
    """The best setting against the reference, by mean best validation perplexity and seed noise,
    and the reference's test perplexity beside the published ones."""
    setting = reference_setting(experiment)
    if setting is None:
        return None
    reference = _row_of(comparison, setting)
    label = ", ".join(f"{key}={value_label(value)}" for key, value in setting.items())
    if reference is None or not reference["n_valid"]:
        return (
            f"The reference setting, {label} (the `{experiment.study['preset']}` preset's), has no finished trial yet."
        )
    ranked = comparison[comparison["n_valid"] > 0].sort_values("best_valid_ppl_mean", kind="stable")
    best = ranked.iloc[0]
    text = f"The reference setting, {label} (the `{experiment.study['preset']}` preset's): mean best validation perplexity {ppl_with_interval(reference, 'best_valid_ppl')}"
    text += (
        f", test perplexity {ppl_with_interval(reference, 'test_ppl')}"
        if reference["n_test"]
        else ", no completed trial to test yet"
    )
    published = PUBLISHED.get(experiment.study["preset"]) if experiment.study.get("epochs") == 13 else None
    if published:
        text += "; published for it: " + ", ".join(f"{source} {value}" for source, value in published)
    text += ". "
    if best["setting"] == reference["setting"]:
        return text + "It is the best setting so far."
    gap = reference["best_valid_ppl_mean"] - best["best_valid_ppl_mean"]
    text += f"The best, {best['setting']}, is lower by {ppl_text(gap)} ({gap / reference['best_valid_ppl_mean']:.1%}): "
    if math.isnan(best["best_valid_ppl_ci95_high"]) or math.isnan(reference["best_valid_ppl_ci95_low"]):
        return text + "no interval yet to tell it from the seed noise (one finished trial per setting)."
    if best["best_valid_ppl_ci95_high"] < reference["best_valid_ppl_ci95_low"]:
        return text + "more than the seed noise (their 95% intervals do not overlap)."
    return text + "not more than the seed noise (their 95% intervals overlap)."


def clipping_text(experiment: Experiment) -> str | None:
    """Two tables by threshold (rows) and epoch (columns), means over the threshold's trials: the
    share of steps clipped, and the median gradient norm before clipping; then how that norm moved."""
    epochs = experiment.epochs
    needed = {CLIP_KEY, m.EPOCH, m.CLIP_FRACTION, m.GRAD_NORM_P50}
    if not needed <= set(epochs) or epochs.empty or epochs[CLIP_KEY].nunique() < 2:
        return None
    epochs = epochs[~epochs[m.DIVERGED].astype(bool)] if m.DIVERGED in epochs else epochs
    last = int(epochs[m.EPOCH].max())
    shown = (
        sorted({round(1 + i * (last - 1) / (SHOWN_EPOCHS - 1)) for i in range(SHOWN_EPOCHS)})
        if last > SHOWN_EPOCHS
        else list(range(1, last + 1))
    )
    means = epochs[epochs[m.EPOCH].isin(shown)].groupby([CLIP_KEY, m.EPOCH])[[m.CLIP_FRACTION, m.GRAD_NORM_P50]].mean()
    clipped = _table(means[m.CLIP_FRACTION].unstack(m.EPOCH), shown, lambda v: f"{v:.0%}")
    norms = _table(means[m.GRAD_NORM_P50].unstack(m.EPOCH), shown, lambda v: f"{v:.3g}")
    # The same thresholds at both ends: a threshold ASHA stopped early has no last epoch, and its
    # first would shift the first epoch's median alone.
    ends = means[m.GRAD_NORM_P50].unstack(m.EPOCH).iloc[:, [0, -1]].dropna()
    (first_epoch, final_epoch), (first, final) = ends.columns, ends.median()
    moved = "grew" if final > first else "fell"
    across = f"Across the {len(ends)} thresholds" if len(ends) > 1 else "In the one threshold"
    across += f" trained to epoch {final_epoch}"
    return (
        "Share of training steps whose gradient clipping changed, by threshold (rows) and epoch (columns), "
        f"mean over the threshold's trials:\n\n{clipped}\n\n"
        "Gradient norm before clipping, the median over the epoch's steps, same layout:\n\n"
        f"{norms}\n\n{across}, the median gradient norm {moved} from {first:.3g} in epoch {first_epoch} to "
        f"{final:.3g} in epoch {final_epoch} (the median of the thresholds' means)."
    )


def _table(frame: pd.DataFrame, shown: list[int], text) -> str:
    head = f"| {CLIP_KEY} \\ epoch | " + " | ".join(str(e) for e in shown) + " |"
    rule = "|---" * (len(shown) + 1) + "|"
    rows = [
        f"| {value_label(value)} | "
        + " | ".join("" if e not in row or pd.isna(row[e]) else text(row[e]) for e in shown)
        + " |"
        for value, row in frame.sort_index().iterrows()
    ]
    return "\n".join([head, rule, *rows])
