"""The comparison's intervals: seed noise pooled where the settings share it (study.report.anova), the
method named per setting; sampled settings read from the space."""

import math

import pandas as pd
import pytest
from scipy import stats

from study.report.anova import seed_noise
from study.report.comparison import Factor, compare, sampled_keys


def test_seed_noise_pools_alike_spreads_and_refuses_unlike_ones():
    alike = seed_noise(pd.Series([1.0, 2.0, 11.0, 12.0, 21.0, 22.0]), pd.Series(list("aabbcc")))
    assert alike.shared and alike.df == 3 and alike.sd == pytest.approx(math.sqrt(6 * 0.25 / 3))
    unlike = seed_noise(pd.Series([1.0, 1.001, 1.0, 1.002, 10.0, 30.0, 0.0, 40.0]), pd.Series(list("aabbccdd")))
    assert not unlike.shared and unlike.test_p < 0.05
    assert seed_noise(pd.Series([1.0, 2.0, 3.0]), pd.Series(list("abc"))) is None  # no replicates: nothing to pool


def trials(values: dict[float, list[float]]) -> pd.DataFrame:
    """Completed trials of one setting `momentum` per key, one seed per value."""
    rows = [
        {
            "trial_id": f"{mu}-{s}",
            "status": "completed",
            "momentum": mu,
            "seed": s,
            "best_valid_ppl": v,
            "test_ppl": v,
            "epochs_run": 3,
        }
        for mu, vs in values.items()
        for s, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_intervals_pool_shared_seed_noise_and_say_which_method():
    # Two seeds each, spreads 2, 2 and 2: pooled SD sqrt(3 * 2 / 3) = sqrt(2) on 3 df, for every setting.
    table = compare(trials({0.0: [100, 102], 0.5: [110, 112], 0.9: [120, 122]}), [Factor("momentum", ("momentum",))])
    assert list(table["best_valid_ppl_ci_method"]) == ["pooled t, 3 df"] * 3
    half = stats.t.ppf(0.975, 3) * math.sqrt(2) / math.sqrt(2)
    assert table["best_valid_ppl_ci95_high"].iloc[0] == pytest.approx(101 + half)  # 3.18, not 12.7 x 1
    # One setting far noisier (Bartlett p < 0.05): no pooling, each its own t interval on 1 df.
    table = compare(
        trials({0.0: [100, 100.01], 0.5: [110, 110.02], 0.9: [100, 140]}), [Factor("momentum", ("momentum",))]
    )
    assert list(table["best_valid_ppl_ci_method"]) == ["per-setting t, 1 df"] * 3


def test_sampled_keys_are_the_ranges_drawn_per_trial():
    space = "vary:\n  learning_rate: {uniform: [0.5, 1.5]}\n  momentum: {choice: [0, 0.9]}\n  hidden_size: {randint: [8, 16]}\n"
    assert sampled_keys({"space_text": space}) == {"learning_rate", "hidden_size"}
    assert sampled_keys({}) == set() and sampled_keys({"space_text": ": not yaml ["}) == set()
