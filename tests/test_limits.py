"""Sizes that cannot work are refused before Ray starts, in one line: absurd trial counts,
--num-samples on a grid-only space, a trial larger than any node's memory."""

import pytest

from study.config import PRESETS, make_config
from study.errors import UsageError
from study.sweep import limits
from study.sweep.capacity import Node
from study.sweep.cli import main
from study.sweep.space_file import load_space
from study.train import LSTMLanguageModel

SAMPLED = "description: d\npreset: test\nfixed: {epochs: 2}\nvary:\n  learning_rate: {loguniform: [0.1, 1.0]}\n"
HUGE = "description: d\npreset: test\nfixed: {epochs: 2}\nvary:\n  hidden_size: {grid: [16, 50000000]}\n"


def refused(capsys, *args: str) -> str:
    """The one error line of `python -m study.sweep args` (in-process), which must exit 2."""
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in out + err, out + err
    assert "trials:" not in out  # refused before the plan
    return err


@pytest.mark.parametrize("samples", ["1000000000000", str(2**63)])
def test_a_trial_count_no_sweep_can_create_is_refused(samples, tmp_path, capsys):
    space = tmp_path / "sampled.yaml"
    space.write_text(SAMPLED)
    err = refused(capsys, str(space), "--num-samples", samples, "--dry-run", "--storage", str(tmp_path))
    assert f"--num-samples {samples}: {int(samples):,} trials, allowed: at most 10,000" in err


def test_seeds_that_make_too_many_trials_name_the_space(tmp_path):
    space = tmp_path / "seeded.yaml"
    space.write_text(SAMPLED.replace("fixed:", "num_samples: 3\nfixed:") + f"seeds: {list(range(4000))}\n")
    with pytest.raises(UsageError, match=r"seeded.yaml \(grid x seeds x num_samples\): 12,000 trials"):
        limits.check_trial_count(load_space(str(space)).trial_count(), f"{space} (grid x seeds x num_samples)")


def test_num_samples_on_a_grid_only_space_is_refused_as_the_space_file_refuses_it(tmp_path, capsys):
    err = refused(capsys, "smoke", "--num-samples", "2", "--dry-run", "--storage", str(tmp_path))
    assert "--num-samples 2: " in err and "draws nothing (grid only)" in err and "--seeds" in err
    space = tmp_path / "sampled.yaml"
    space.write_text(SAMPLED)
    assert main([str(space), "--num-samples", "2", "--dry-run", "--storage", str(tmp_path)]) == 0
    assert "trials: 2," in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["test", "small", "large"])
def test_the_estimate_counts_the_models_parameters_exactly(preset):
    config = PRESETS[preset]
    model = LSTMLanguageModel(10_000, config.hidden_size, config.num_layers, config.keep_prob, config.init_scale)
    assert limits.parameter_count(config, 10_000) == sum(p.numel() for p in model.parameters())


def test_the_estimate_is_plausible_and_grows_with_every_size():
    small = limits.trial_bytes(PRESETS["small"], 10_000)
    assert 0.6 * 2**30 < small < 1.5 * 2**30  # 4.6M parameters: well under the worker's own footprint
    for key, more in (
        ("hidden_size", 400),
        ("num_layers", 3),
        ("batch_size", 40),
        ("num_steps", 40),
        ("momentum", 0.9),
    ):
        assert limits.trial_bytes(make_config({key: more}), 10_000) > small, key


def test_the_largest_trial_of_cases_and_grids_is_a_real_trial(tmp_path):
    space = tmp_path / "cases.yaml"
    space.write_text(
        "description: d\npreset: test\nvary:\n"
        "  shape:\n    cases:\n      - {hidden_size: 4000, batch_size: 2}\n      - {hidden_size: 16, batch_size: 400}\n"
        "  num_steps: {grid: [5, 10]}\n"
    )
    sizes = limits.size_variants(load_space(str(space)))
    assert len(sizes) == 4 and {"hidden_size": 4000, "batch_size": 2, "num_steps": 10} in sizes
    _, config = limits.largest_trial(load_space(str(space)), 10_000)
    assert (config.hidden_size, config.batch_size, config.num_steps) == (4000, 2, 10)  # not 4000 with 400


def test_a_trial_larger_than_this_machine_is_refused_before_ray(tmp_path, capsys):
    space = tmp_path / "huge.yaml"
    space.write_text(HUGE)
    err = refused(capsys, str(space), "--dry-run", "--storage", str(tmp_path / "out"))
    assert "huge.yaml: a trial with num_layers 1, hidden_size 50000000" in err
    assert "PB of memory" in err and "this machine has" in err
    assert not (tmp_path / "out").exists()


def test_on_a_cluster_each_nodes_memory_counts_on_its_own():
    space = load_space("smoke")
    need, _ = limits.largest_trial(space, 10_000)
    nodes = [Node(4, 0, need / 2), Node(4, 0, need * 2)]
    limits.check_memory(space, 10_000, [node.memory for node in nodes])  # the second node holds it
    with pytest.raises(UsageError, match=r"smoke.yaml: a trial .* and the largest node has"):
        limits.check_memory(space, 10_000, [need / 2, need / 3])
    limits.check_memory(space, 10_000, [0.0])  # unknown: nothing to refuse on
