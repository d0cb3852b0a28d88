"""Seed noise and the interaction of two crossed factors, with statsmodels.

    python -m study.report results/grad_clip      # summary.md: "## Interaction" from this module

Seeds are replicates of a setting. `seed_noise` checks that the settings share one seed-noise level
(Bartlett's test on the within-setting variances) and, when they do, gives the pooled residual
standard deviation and its degrees of freedom, which make every setting's interval far narrower
than a per-setting t interval on 2 seeds (1 degree of freedom: 12.7 standard errors wide).

`interaction` fits `y ~ C(a) * C(b)` (ordinary least squares, type-2 ANOVA) for two crossed
factors: on each trial's best validation perplexity (as the tables) when every trial in the model
completed, else on the validation perplexity at the last epoch that every trial reached (ASHA
stopped some trials: their best is censored, comparing there keeps them in on equal terms);
diverged, errored and unfinished trials are left out and counted, and so are the blown-up ones
(study.report.scale: best over ten times the lowest trial's), named by setting. grad_clip's unclipped
trials reach 1e15-1e109 without a NaN: as the model's y they would swamp every effect and the
residual (the winner's lead "1.49 ± 9e106", every F equal). It says whether the best level of the first factor
depends on the second, the share of the variation each explains, and whether the winner beats the
runner-up by more than the seed noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from study import metrics as m

ALPHA = 0.05


@dataclass(frozen=True)
class SeedNoise:
    sd: float  # pooled within-setting standard deviation
    df: int  # its degrees of freedom: trials minus settings
    test_p: float | None  # Bartlett's p; None when not testable (fewer than two settings with a spread)
    shared: bool  # whether the settings' spreads are alike enough to pool

    def describe(self, what: str) -> str:
        """One sentence for summary.md: whether the settings share their seed noise, and so which intervals."""
        pooled = (
            f"mean ± t(97.5%, {self.df} df) x the pooled SD {self.sd:.3g} / sqrt(n), a setting with one trial included"
        )
        if self.test_p is None:
            return f"{what}: the settings are assumed to share their seed noise (not testable here: fewer than two settings with a spread), {pooled}"
        test = f"Bartlett's test of equal variances p = {self.test_p:.2f}"
        if self.shared:
            return f"{what}: the settings share their seed noise ({test}), {pooled}"
        return f"{what}: the settings' seed noise differs ({test}), so each setting's interval is Student t on its own trials (n - 1 df; none for one trial)"


def seed_noise(values: pd.Series, groups: pd.Series) -> SeedNoise | None:
    """The pooled within-group spread of the finite `values` grouped by `groups` (a setting label
    per value); None when no group has two values."""
    frame = pd.DataFrame({"y": values.astype(float), "g": groups})
    frame = frame[np.isfinite(frame["y"])]
    sizes = frame.groupby("g")["y"].transform("size")
    replicated = frame[sizes >= 2]
    df = len(replicated) - replicated["g"].nunique()
    if df < 1:
        return None
    residual = replicated["y"] - replicated.groupby("g")["y"].transform("mean")
    sd = float(math.sqrt((residual**2).sum() / df))
    samples = [group.to_numpy() for _, group in replicated.groupby("g")["y"]]
    # Bartlett's test of equal variances: Levene's and Brown-Forsythe's are degenerate with two
    # seeds (both deviations from a pair's centre are equal). Not testable with a zero-spread group.
    test_p = None
    if len(samples) >= 2 and all(np.ptp(sample) > 0 for sample in samples):
        test_p = float(stats.bartlett(*samples).pvalue)
    return SeedNoise(sd, int(df), test_p, shared=test_p is None or test_p >= ALPHA)


def common_epoch(epochs: pd.DataFrame, trials: pd.DataFrame) -> int | None:
    """The last epoch that every trial of `trials` reached; None without trials."""
    reached = epochs[epochs["trial_id"].isin(trials["trial_id"])].groupby("trial_id")[m.EPOCH].max()
    return int(reached.min()) if len(reached) == len(trials) and len(reached) else None


def interaction(trials: pd.DataFrame, epochs: pd.DataFrame, first: str, second: str, labels) -> str | None:
    """The paragraph on two crossed factors `first` x `second` (settings' keys, printed with
    `labels(key, value)`); None when they are not crossed with replicates."""
    from statsmodels.formula.api import ols  # here, not at the top: about a second to import, for crossed studies only
    from statsmodels.stats.anova import anova_lm

    from study.report.scale import FACTOR, blown_up  # here: scale imports comparison, which imports this module

    usable = trials[trials["status"].isin(m.RANKED)]
    left_out = len(trials) - len(usable)
    far = pd.Series(blown_up(trials), index=trials.index)[usable.index]
    blown, usable = usable[far], usable[~far]
    epoch = common_epoch(epochs, usable)
    if epoch is None:
        return None
    stopped = int((usable["status"] == m.STOPPED_EARLY).sum())
    at = epochs[(epochs[m.EPOCH] == epoch) & epochs["trial_id"].isin(usable["trial_id"])].set_index("trial_id")[
        m.VALID_PPL
    ]
    if not stopped:  # all completed: no censoring, the tables' own measure
        at = usable.set_index("trial_id")["best_valid_ppl"]
    usable = usable.sort_values([first, second], kind="stable")  # levels in the settings' order (numbers ascending)
    data = pd.DataFrame(
        {
            "y": usable["trial_id"].map(at).astype(float).to_numpy(),
            "a": pd.Categorical(
                [labels(first, v) for v in usable[first]], categories=_levels(usable[first], first, labels)
            ),
            "b": pd.Categorical(
                [labels(second, v) for v in usable[second]], categories=_levels(usable[second], second, labels)
            ),
        }
    )
    data = data[np.isfinite(data["y"])]
    cells = data.groupby(["a", "b"], observed=True)["y"].agg(["mean", "size"])
    if (
        data["a"].nunique() < 2
        or data["b"].nunique() < 2
        or len(cells) < data["a"].nunique() * data["b"].nunique()
        or cells["size"].min() < 2
    ):
        return None  # not fully crossed with at least two seeds per cell: no interaction to test
    model = ols("y ~ C(a) * C(b)", data=data).fit()
    table = anova_lm(model, typ=2)
    best = cells["mean"].unstack("a").idxmin(axis=1)  # the best level of `first` at each level of `second`
    test = f"interaction F = {table.loc['C(a):C(b)', 'F']:.2f}, p = {table.loc['C(a):C(b)', 'PR(>F)']:.3f}"
    # With ASHA's stops the model's y is the perplexity at `epoch`, not the tables' best: its winner can
    # differ from the summary's headline (grad_clip: (5, 0.5) at epoch 6, (2, 0.5) by best), so say where.
    at = f" at epoch {epoch}" if stopped else ""
    verdict = _verdict(first, second, best, test, table.loc["C(a):C(b)", "PR(>F)"] < ALPHA, at)
    ranked = cells.sort_values("mean")
    (win_a, win_b), (run_a, run_b) = ranked.index[0], ranked.index[1]
    mse, df = model.mse_resid, int(model.df_resid)
    gap = ranked["mean"].iloc[1] - ranked["mean"].iloc[0]
    half = stats.t.ppf(0.975, df) * math.sqrt(mse * (1 / ranked["size"].iloc[0] + 1 / ranked["size"].iloc[1]))
    beats = "more than the seed noise" if gap > half else "within the seed noise, so the two are not told apart"
    where = (
        f"validation perplexity at epoch {epoch}, the last epoch every trial in the model reached ({stopped} trial(s) "
        f"stopped by ASHA enter with their perplexity there; their best later perplexity is unknown)"
        if stopped
        else "best validation perplexity (every trial in the model completed all its epochs)"
    )
    share = {row: table.loc[row, "sum_sq"] / table["sum_sq"].sum() for row in table.index}
    effect = lambda row: (
        f"{share[row]:.0%} of the variation (F = {table.loc[row, 'F']:.2f}, p = {table.loc[row, 'PR(>F)']:.3f})"
    )
    return (
        f"Two-way ANOVA with interaction (statsmodels OLS, type-2 sums of squares; both settings as categories) of "
        f"{where}, over {len(data)} trials as seed replicates"
        + (f"; {left_out} diverged, errored or unfinished trial(s) left out" if left_out else "")
        + _blown_up(blown, first, second, labels, FACTOR)
        + ". "
        f"{first} explains {effect('C(a)')}, {second} {effect('C(b)')}, their interaction {effect('C(a):C(b)')}, "
        f"seed noise the remaining {share['Residual']:.0%}. {verdict} The winner{at}, {first}={win_a} with {second}={win_b} "
        f"({ranked['mean'].iloc[0]:.2f}), beats the runner-up, {first}={run_a} with {second}={run_b} "
        f"({ranked['mean'].iloc[1]:.2f}), by {gap:.2f} ± {half:.2f} (95%, from the residual seed noise, {df} df): {beats}."
    )


def _blown_up(blown: pd.DataFrame, first: str, second: str, labels, factor: float) -> str:
    """The clause on the trials left out as blown up (off the plots' scale), by setting; '' for none."""
    if blown.empty:
        return ""
    settings = "; ".join(
        f"{labels(first, a)} with {second} {', '.join(labels(second, b) for b in group[second].drop_duplicates())}"
        for a, group in blown.sort_values([first, second], kind="stable").groupby(first, sort=False)
    )
    return (
        f"; {len(blown)} blown-up trial(s) left out (best validation perplexity over {factor:g} times the lowest "
        f"trial's, see Divergence: {first}={settings})"
    )


def _levels(values: pd.Series, key: str, labels) -> list[str]:
    return list(dict.fromkeys(labels(key, v) for v in values))


def _verdict(first: str, second: str, best: pd.Series, test: str, interacts: bool, at: str) -> str:
    """Whether the best level of `first` depends on `second`, in words: the interaction test and
    the best level of `first` at each level of `second` (`best`), measured `at` (" at epoch 6" or "")."""
    if best.nunique() == 1:
        same = f"the best {first}{at} is {best.iloc[0]} at every {second}"
        return (
            f"{first}'s effect **depends on {second}** ({test}), but {same}."
            if interacts
            else f"No detectable interaction ({test}): {same}."
        )
    each = ", ".join(f"{a} at {second} {b}" for b, a in best.items())
    if interacts:
        return f"The best {first}{at} **depends on {second}** ({test}): it is {each}."
    return f"No detectable interaction ({test}): the best {first}{at} is {each}, a change the seed noise can explain."
