"""The summary's answers beyond the best setting (study/report/findings.py): the best against the
reference setting and the published perplexities, where clipping engages, when trials diverge.
Experiments written as Ray leaves them, numbers by formula (tests/helpers.py: fake_experiment)."""

import json
from pathlib import Path

import pandas as pd

from study import metrics as m
from study.report.build import write_report
from study.report.collect import load_experiment
from study.report.findings import clipping_text, reference_setting, reference_text

from helpers import fake_experiment

VARY = "  max_grad_norm: {grid: [1, 5, .inf]}\n  lr_decay: {grid: [0.5, 1.0]}"


def experiment(tmp_path: Path, cells: dict[tuple, float], epochs: int = 3, preset: str | None = None):
    """max_grad_norm x lr_decay x 2 seeds; `cells` adds to a setting's validation perplexity (the
    seeds differ by 5: fake_experiment's formula)."""
    trials = [
        {"max_grad_norm": c, "lr_decay": d, "seed": s, "cell": cells.get((c, d), 0)}
        for c in (1.0, 5.0, float("inf"))
        for d in (0.5, 1.0)
        for s in (0, 1)
    ]
    folder = fake_experiment(tmp_path / "ref", VARY, trials, epochs=epochs)
    if preset:
        study = json.loads((folder / "study.json").read_text())
        (folder / "study.json").write_text(json.dumps(study | {"preset": preset}))
    return load_experiment(str(folder))


def comparison_of(loaded):
    from study.report.comparison import compare

    return compare(loaded.placed, loaded.factors)


def test_the_reference_is_the_presets_setting_and_a_clear_winner_beats_it_by_more_than_the_noise(tmp_path):
    loaded = experiment(tmp_path, {(5.0, 0.5): 40.0})  # the reference 40 worse than every other
    assert reference_setting(loaded) == {"max_grad_norm": 5.0, "lr_decay": 0.5}  # the test preset's, as small's
    text = reference_text(loaded, comparison_of(loaded))
    assert text.startswith("The reference setting, max_grad_norm=5, lr_decay=0.5 (the `test` preset's)")
    assert "mean best validation perplexity 149.2 [95% CI" in text and "], n=2" in text
    assert "published" not in text  # nothing is published for the test preset
    assert "is lower by 40.0" in text and text.endswith(
        "more than the seed noise (their 95% intervals do not overlap)."
    )


def test_a_winner_within_the_seed_noise_is_said_to_be_so(tmp_path):
    loaded = experiment(tmp_path, {(5.0, 0.5): 1.0})  # 1 worse, seeds 5 apart
    text = reference_text(loaded, comparison_of(loaded))
    assert text.endswith("not more than the seed noise (their 95% intervals overlap).")


def test_the_small_presets_reference_sits_beside_its_published_test_perplexities(tmp_path):
    loaded = experiment(tmp_path, {(1.0, 0.5): -3.0}, epochs=13, preset="small")
    text = reference_text(loaded, comparison_of(loaded))
    assert "(the `small` preset's)" in text and ", test perplexity " in text
    assert "published for it: TF's ptb_word_lm tutorial 115.91, Zaremba et al. (2014) 114.5." in text
    assert "The best, max_grad_norm=1, lr_decay=0.5, is lower by 3.0" in text


def test_clipping_tables_give_each_threshold_by_epoch(tmp_path):
    text = clipping_text(experiment(tmp_path, {}))
    clipped, norms = [block for block in text.split("\n\n") if block.startswith("|")]
    assert clipped.splitlines()[0] == "| max_grad_norm \\ epoch | 1 | 2 | 3 |"
    assert [row.split(" | ")[0] for row in clipped.splitlines()[2:]] == ["| 1", "| 5", "| none"]
    assert clipped.splitlines()[2] == "| 1 | 10% | 10% | 10% |"  # the formula's clip fraction
    assert norms.splitlines()[2] == "| 1 | 2 | 3 | 4 |"  # median norm 1 + epoch
    assert text.endswith(
        "Across the 3 thresholds trained to epoch 3, the median gradient norm grew from 2 in epoch 1 to 4 in "
        "epoch 3 (the median of the thresholds' means)."
    )


def test_how_the_norm_moved_compares_the_thresholds_that_reached_the_last_epoch(tmp_path):
    """Thresholds stopped early (here 5 and none, after epoch 2, with norms of 50 in epoch 1) are left
    out at both ends: the first epoch's median over all three would be 50, and "fell from 50 to 4"."""
    loaded = experiment(tmp_path, {})
    folder = Path(loaded.location.given)
    for trial in range(4, 12):  # max_grad_norm 5 and none (tests/helpers.py: fake_experiment's order)
        result = folder / f"t{trial:02d}" / "result.json"
        lines = [json.loads(line) for line in result.read_text().splitlines()[:2]]
        lines[0][m.GRAD_NORM_P50] = 50.0
        result.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    text = clipping_text(load_experiment(str(folder)))
    assert text.endswith(
        "In the one threshold trained to epoch 3, the median gradient norm grew from 2 in epoch 1 to 4 in "
        "epoch 3 (the median of the thresholds' means)."
    )


def test_the_summary_holds_the_reference_and_clipping_sections_and_when_trials_diverged(tmp_path):
    loaded = experiment(tmp_path, {(5.0, 0.5): 40.0})
    folder = Path(loaded.location.given)
    result = folder / "t11" / "result.json"  # none, lr_decay 1.0, seed 1: diverges in epoch 2
    lines = [json.loads(line) for line in result.read_text().splitlines()[:2]]
    lines[1] |= {m.DIVERGED: True, m.VALID_PPL: float("inf")}
    result.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    summary = Path(write_report(str(folder), quiet=True).summary).read_text()
    assert "## Against the reference setting\n\nThe reference setting, max_grad_norm=5, lr_decay=0.5" in summary
    assert "## Where clipping engages\n\nShare of training steps" in summary
    assert "- max_grad_norm=none, lr_decay=1: 1 of 2, in epoch 2" in summary
    assert pd.read_parquet(folder / "trials.parquet").set_index("trial_id").loc["t11", "status"] == m.DIVERGED
