"""The report's pictures say what they show: an axis that holds 0, ticks that never overlap, ASHA
stops marked, no colour bar or "(log)" over nothing. Experiments are written as Ray leaves them
(test_summary.fake_experiment), so no Ray runs here."""

import itertools
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from study.report import plots
from study.report.axes import numeric_axis, place_ticks
from study.report.build import _plot_data
from study.report.collect import load_experiment
from study.report.comparison import compare, pivot
from study.report.planned import planned_settings
from study.report.plot_data import interval_words

from helpers import empty_experiment, fake_experiment


def plot_data(experiment: Path) -> plots.PlotData:
    """What write_report draws: the comparison of the trials, laid out with the settings study.json plans."""
    loaded = load_experiment(str(experiment))
    comparison = compare(loaded.trials, loaded.factors)
    return _plot_data(loaded, comparison, pivot(comparison, loaded.factors, planned_settings(loaded.study)))


def test_plots_say_only_what_they_show(tmp_path):
    trials = [
        {"momentum": mu, "seed": s} | ({"stop": True} if mu == 0.9 else {}) for mu in (0.0, 0.5, 0.9) for s in (0, 1)
    ]
    data = plot_data(
        fake_experiment(tmp_path / "stopped", "  momentum: {grid: [0, 0.5, 0.9]}", trials, epochs=3, stopped_after=2)
    )
    figure = plots.test_ppl(data)
    axes = figure.axes[0]
    assert axes.get_xscale() == "linear" and "log" not in axes.get_xlabel()  # 0 has no logarithm
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "0.5", "0.9"]
    assert "stopped by ASHA (no test perplexity)" in axes.get_legend_handles_labels()[1]  # 0.9: all stopped, marked
    # ... as a column over the whole perplexity axis with words, not a point that reads as a (low) perplexity.
    [column] = [line for line in axes.lines if line.get_label().startswith("stopped by ASHA")]
    assert list(column.get_xdata()) == [0.9, 0.9] and list(column.get_ydata()) == [0, 1]  # y in axes coordinates
    assert [t.get_position()[0] for t in axes.texts if t.get_text() == "stopped by ASHA"] == [0.9]
    assert not [line for line in axes.lines if line.get_marker() == "x"]
    assert "pooled" in axes.get_title()
    curves = plots.valid_curves(data)
    assert "stopped by ASHA" in [t.get_text() for t in curves.legends[0].get_texts()]


def test_the_heatmap_shows_every_planned_setting_and_the_other_plots_only_those_with_trials(tmp_path):
    # A 3 x 2 plan (YAML's 1 and .inf, the trials' 1.0 and inf) of which Ray has created three settings so far.
    trials = [{"max_grad_norm": c, "lr_decay": d, "seed": 0} for c, d in ((1.0, 0.5), (1.0, 1.0), (5.0, 0.5))]
    vary = "  max_grad_norm: {grid: [1, 5, .inf]}\n  lr_decay: {grid: [0.5, 1]}"
    data = plot_data(fake_experiment(tmp_path / "interim", vary, trials, epochs=2))
    assert list(data.grid_mean.index) == ["1", "5", "none"] and list(data.grid_mean.columns) == ["0.5", "1"]
    assert data.grid_trials.to_numpy().tolist() == [[1, 1], [1, 0], [0, 0]]
    assert data.grid_mean.isna().to_numpy().tolist() == [[False, False], [False, True], [True, True]]
    texts = [t.get_text() for t in plots.heatmap(data).axes[0].texts]
    assert texts.count("not started") == 3 and texts.count("110.0") == 3 and "no result yet" not in texts
    # Curves, colours and the test plot: the created settings only (no line or tick for 'none').
    assert data.colour_order == ["1", "5"] and data.panel_order == ["0.5", "1"]
    assert sorted(zip(data.test["max_grad_norm"], data.test["lr_decay"])) == [(1.0, 0.5), (1.0, 1.0), (5.0, 0.5)]
    assert [t.get_text() for t in plots.test_ppl(data).axes[0].get_xticklabels()] == ["1", "5"]


def test_plots_of_an_empty_experiment_have_sane_axes(tmp_path):
    data = plot_data(empty_experiment(tmp_path / "empty"))
    heatmap = plots.heatmap(data)
    assert len(heatmap.axes) == 1  # no colour bar over nothing (it would read -0.1..0.1)
    assert "no results yet" in heatmap.axes[0].get_title()
    for figure in (plots.valid_curves(data), plots.grad_norms(data)):
        axes = figure.axes[0]
        assert axes.get_yscale() == "linear" and "(log)" not in axes.get_ylabel()


@pytest.mark.parametrize(
    "values, scale",
    [
        ([0.0, 0.9], "linear"),
        ([0.5, 1.0, 1.5], "linear"),
        ([0.1, 1.0, 10.0, math.inf], "log"),
        ([0.0, 1e-5, 1e-4, 1e-3], "symlog"),
        ([-1.0, 0.0, 1.0], "linear"),
    ],
)
def test_numeric_values_get_an_axis_that_holds_them(values, scale):
    axis = numeric_axis(values)
    assert axis.scale == scale and set(values) <= set(axis.positions)
    if math.inf in values:  # "none" one step past the largest, the dotted line between
        assert axis.positions[math.inf] > 10 and 10 < axis.edge() < axis.positions[math.inf]


def test_crowded_tick_labels_are_thinned_never_overlapping():
    figure = Figure(figsize=(4, 3), layout="constrained")
    axes = figure.add_subplot()
    values = [0.0, 0.001, 0.002, 0.003, 0.5, 0.9]
    axes.plot(values, values)
    place_ticks(axes, {f"{v:g}": v for v in values})
    figure.draw_without_rendering()
    boxes = sorted((t.get_window_extent() for t in axes.get_xticklabels()), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes))
    shown = [t.get_text() for t in axes.get_xticklabels()]
    assert shown[0] == "0" and "0.9" in shown and len(shown) < len(values)


def test_long_category_labels_turned_upright_leave_the_plot_its_height():
    """Labels as long as a `cases` group's, too many to lie flat: the figure grows by their height
    instead of constrained layout squeezing the plot to nothing (it warns and draws garbage then)."""
    figure = Figure(figsize=(6, 3), layout="constrained")
    axes = figure.add_subplot()
    labels = [f"lr_decay={d}, clip_mode=value (max_grad_norm={c})" for d in (0.5, 0.8) for c in (0.25, 1, 5)]
    axes.imshow([[1.0] * len(labels)] * 2, aspect="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "axes sizes collapsed to zero"
        place_ticks(axes, {label: i for i, label in enumerate(labels)}, rotate=True)
        figure.draw_without_rendering()
    assert axes.get_xticklabels()[0].get_rotation() == 90
    assert figure.get_figheight() > 3 + 2  # the labels' ~2.5 inches added
    plot = axes.get_window_extent()
    assert plot.height / figure.dpi > 1.5  # the plot keeps most of its first height


def test_sampled_values_are_points_on_a_value_axis_with_a_colour_bar(tmp_path):
    trials = [{"learning_rate": 0.1 * 1.37**i, "seed": i % 2} for i in range(12)]
    data = plot_data(fake_experiment(tmp_path / "sampled", "  learning_rate: {loguniform: [0.1, 3]}", trials, epochs=2))
    assert data.sampled
    axes = plots.test_ppl(data).axes[0]
    assert axes.get_xscale() == "log" and axes.lines[0].get_linestyle() == "None"  # points, no line through them
    curves = plots.valid_curves(data)
    assert len(curves.axes) == 2 and curves.axes[1].get_ylabel() == "learning_rate (sampled)"  # a colour bar
    assert not curves.legends  # no legend entry per sampled value (nothing diverged or stopped)


def test_a_blown_up_setting_is_marked_off_the_scale_and_leaves_the_others_their_range(tmp_path):
    """An unclipped trial can reach a finite perplexity of 1e13 without diverging (the real grad_clip
    run did): it must not stretch the colour bar and the axes until every other setting looks alike."""
    trials = [
        {"max_grad_norm": c, "lr_decay": d, "seed": s, "cell": 3e13 if c == math.inf and d == 0.5 else min(10 * c, 60)}
        for c in (1.0, 5.0, math.inf)
        for d in (0.5, 1.0)
        for s in (0, 1)
    ]
    vary = "  max_grad_norm: {grid: [1, 5, .inf]}\n  lr_decay: {grid: [0.5, 1]}"
    data = plot_data(fake_experiment(tmp_path / "blown", vary, trials, epochs=3))
    heatmap = plots.heatmap(data)
    image = heatmap.axes[0].images[0]
    assert image.norm.vmax < 200 and heatmap.axes[1].get_ylim()[1] < 200  # the colour bar spans the sane cells
    assert image.norm(data.grid_mean.loc["5", "0.5"]) > image.norm(data.grid_mean.loc["1", "0.5"]) + 0.5
    texts = [t.get_text() for t in heatmap.axes[0].texts]
    assert [t for t in texts if t.startswith("3e+13\n") and t.endswith("\noff the scale")]
    assert not [t for t in texts if "off" in t and not t.startswith("3e+13")]
    assert "off the colour scale" in heatmap.axes[0].get_title()
    curves = plots.valid_curves(data)
    axes = curves.axes[0]
    assert axes.get_ylim()[1] < 300  # the axis ends near the sane curves, the blown-up one comes in from above
    assert [t for t in axes.get_yticks() if 100 <= t <= 200][3:]  # ticks that tell the sane curves apart
    assert [line for line in axes.lines if line.get_marker() == "^" and len(line.get_xdata()) == 3]
    assert "beyond the axis (up to 3e+13)" in [t.get_text() for t in curves.legends[0].get_texts()]
    assert axes.get_ylim()[0] > 90  # and begins near them
    curves.draw_without_rendering()
    assert all(panel.get_position().width > 0.3 for panel in curves.axes)  # two columns, not collapsed
    bars = plots.test_ppl(data).axes[0]
    assert 90 < bars.get_ylim()[0] < bars.get_ylim()[1] < 200 and "3e+13" in [t.get_text() for t in bars.texts]
    assert all(max(line.get_ydata()) < 200 for line in bars.lines if line.get_marker() != "^")  # no line up to it


@pytest.mark.parametrize(
    ("methods", "lead", "words"),
    [
        (
            ["pooled t, 8 df"] * 2,
            "± half of ",
            "± half of the 95% interval, from the seed noise pooled over the settings",
        ),
        (["per-setting t, 1 df"] * 2, "± half of ", "± half of each setting's 95% Student-t interval over its seeds"),
        (
            ["per-setting t, 1 df", "none"],
            "bars: ",
            "bars: each setting's 95% Student-t interval over its seeds; none for one trial",
        ),
    ],
)
def test_plot_titles_name_their_intervals_in_plain_words(methods, lead, words):
    """The grad_clip heatmap's title read "± half of the each setting's ... interval": the lead and the
    method's words make one phrase for both kinds of interval."""
    table = pd.DataFrame({"n_valid": [2, 1], "best_valid_ppl_ci_method": methods})
    assert interval_words(table, "best_valid_ppl", lead) == words


def test_test_ppl_lines_break_where_asha_stopped_a_setting_and_the_legend_leaves_the_data_free(tmp_path):
    """At real scale (grad_clip) a decay's line ran from max_grad_norm 1 to 20 over the thresholds ASHA
    stopped, as if they had values in between, and the legend hid the 0.25 point in its corner."""
    trials = [
        {"max_grad_norm": c, "lr_decay": d, "seed": 0} | ({"stop": True} if (c, d) == (2.0, 0.5) else {})
        for c in (1.0, 2.0, 5.0)
        for d in (0.5, 1.0)
    ]
    vary = "  max_grad_norm: {grid: [1, 2, 5]}\n  lr_decay: {grid: [0.5, 1.0]}"
    figure = plots.test_ppl(plot_data(fake_experiment(tmp_path / "gap", vary, trials, epochs=3, stopped_after=2)))
    axes = figure.axes[0]
    by_decay = {bars.get_label(): bars.lines[0].get_ydata() for bars in axes.containers}  # errorbar's own lines
    assert math.isnan(by_decay["0.5"][1]) and not any(math.isnan(y) for y in by_decay["0.5"][[0, 2]])
    assert not any(math.isnan(y) for y in by_decay["1"])
    FigureCanvasAgg(figure).draw()
    assert axes.get_legend().get_window_extent().x0 >= axes.get_window_extent().x1
