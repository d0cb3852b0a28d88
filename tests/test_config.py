import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from study.config import PRESETS, TrainConfig, make_config
from study.errors import UsageError


def test_presets_are_the_tutorials_values():
    small, medium, large = PRESETS["small"], PRESETS["medium"], PRESETS["large"]
    assert (small.num_layers, small.hidden_size, small.num_steps, small.init_scale) == (2, 200, 20, 0.1)
    assert (small.max_grad_norm, small.epochs, small.decay_start, small.lr_decay, small.keep_prob) == (
        5,
        13,
        4,
        0.5,
        1.0,
    )
    assert (
        medium.hidden_size,
        medium.num_steps,
        medium.epochs,
        medium.decay_start,
        medium.lr_decay,
        medium.keep_prob,
    ) == (650, 35, 39, 6, 0.8, 0.5)
    assert (large.hidden_size, large.max_grad_norm, large.epochs, large.decay_start, large.keep_prob) == (
        1500,
        10,
        55,
        14,
        0.35,
    )
    assert large.lr_decay == pytest.approx(1 / 1.15)
    for preset in PRESETS.values():
        assert preset.batch_size in (20, 4) and preset.learning_rate == 1.0


def test_overrides_apply_on_top_of_the_preset():
    config = make_config({"max_grad_norm": 1.5, "seed": 3}, preset="medium")
    assert (config.max_grad_norm, config.seed, config.hidden_size) == (1.5, 3, 650)


def test_inf_threshold_means_no_clipping():
    assert not make_config({"max_grad_norm": math.inf}).clips
    assert not make_config({"clip_mode": "none"}).clips
    assert make_config({}).clips


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"max_grad_norm": -1}, "max_grad_norm"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"keep_prob": 0}, "keep_prob"),
        ({"keep_prob": 1.5}, "keep_prob"),
        ({"epochs": 0}, "epochs"),
        ({"lr_decay": 0}, "lr_decay"),
        ({"momentum": 1.0}, "momentum"),
        ({"clip_mode": "sometimes"}, "clip_mode"),
        ({"lerning_rate": 0.1}, "lerning_rate"),
        ({"hidden_size": "big"}, "hidden_size"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, named):
    with pytest.raises(UsageError) as error:
        make_config(overrides, where="my.yaml")
    message = str(error.value)
    assert "\n" not in message and named in message and message.startswith("my.yaml")


def test_unknown_key_lists_the_allowed_ones():
    with pytest.raises(UsageError, match="allowed keys: num_layers"):
        make_config({"max_grad_nrom": 1})


def test_unknown_preset():
    with pytest.raises(UsageError, match=r"unknown preset 'huge'.*small, medium, large, test"):
        make_config({}, preset="huge")


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        PRESETS["small"].epochs = 3


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--max-grad-norm", "-1"], "max_grad_norm=-1.0"),
        (["--keep-prob", "0"], "keep_prob=0.0"),
        (["--epochs", "0"], "epochs=0"),
    ],
)
def test_command_line_bad_values_exit_non_zero_with_one_line(flags, expected):
    done = subprocess.run([sys.executable, "-m", "study.train", *flags], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and expected in done.stderr


def test_command_line_has_a_flag_for_every_field():
    done = subprocess.run([sys.executable, "-m", "study.train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for name in TrainConfig.model_fields:
        assert "--" + name.replace("_", "-") in done.stdout


def test_wrong_flag_exits_non_zero():
    done = subprocess.run([sys.executable, "-m", "study.train", "--max-grad", "x"], capture_output=True, text=True)
    assert done.returncode == 2 and "max-grad" in done.stderr
