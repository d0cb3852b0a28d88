"""Search-space files: Ray domains, cases, one-line errors, the shipped studies, ASHA rungs and the decay warning."""

import math
import textwrap
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.sample import Categorical, Float, Integer
from ray.tune.search.variant_generator import generate_variants

from study import metrics
from study.config import PRESETS
from study.errors import UsageError
from study.sweep.space_file import SPACES_DIR, load_space, resolve_space_path
from study.sweep.spaces import trial_config

SHIPPED = ("grad_clip", "clip_modes", "lr_schedules", "smoke")


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def variants(space):
    """The configs Ray would run, one per grid point (sampled domains drawn once)."""
    return [config for _, config in generate_variants(space.param_space())]


EVERY_KIND = """
    description: every kind of domain
    preset: small
    fixed: {epochs: 5}
    vary:
      max_grad_norm: {grid: [0.25, 1, .inf]}
      momentum: {choice: [0, 0.9]}
      learning_rate: {loguniform: [1e-2, 10]}
      keep_prob: {uniform: [0.3, 1]}
      hidden_size: {randint: [100, 300]}
      clip:
        cases:
          - {clip_mode: value, clip_percentile: 20}
          - {clip_mode: adaptive}
    seeds: [0, 1]
    num_samples: 3
    scheduler: {grace_period: 2}
"""


def test_every_domain_kind_becomes_its_ray_domain(tmp_path):
    space = load_space(str(write(tmp_path, EVERY_KIND)))
    params = space.param_space()

    assert params["max_grad_norm"] == {"grid_search": [0.25, 1.0, math.inf]}  # read as TrainConfig reads them
    assert isinstance(params["momentum"], Categorical) and params["momentum"].categories == [0.0, 0.9]
    lr = params["learning_rate"]
    assert isinstance(lr, Float) and isinstance(lr.sampler, Float._LogUniform) and (lr.lower, lr.upper) == (0.01, 10.0)
    keep = params["keep_prob"]
    assert (
        isinstance(keep, Float) and isinstance(keep.sampler, Float._Uniform) and (keep.lower, keep.upper) == (0.3, 1.0)
    )
    hidden = params["hidden_size"]
    assert isinstance(hidden, Integer) and (hidden.lower, hidden.upper) == (100, 300)  # upper excluded, as Ray's
    # Cases: complete dicts under the label, and no plain value beside them for the settings they set.
    assert params["clip"] == {
        "grid_search": [
            {"clip_mode": "value", "clip_percentile": 20.0},
            {"clip_mode": "adaptive", "clip_percentile": 10.0},
        ]
    }
    assert "clip_mode" not in params and "clip_percentile" not in params
    assert params["seed"] == {"grid_search": [0, 1]}
    # Everything else is the base config as a plain value.
    assert params["epochs"] == 5 and params["num_steps"] == PRESETS["small"].num_steps

    assert space.varied_keys() == [
        "max_grad_norm",
        "momentum",
        "learning_rate",
        "keep_prob",
        "hidden_size",
        "clip_mode",
        "clip_percentile",
        "seed",
    ]
    assert space.trial_count() == 3 * 2 * 2 * 3  # grid x cases x seeds x num_samples; sampled domains add none
    assert len(variants(space)) == 3 * 2 * 2  # Ray's own expansion of one sample


def test_trial_config_flattens_cases(tmp_path):
    space = load_space(str(write(tmp_path, EVERY_KIND)))
    configs = [trial_config(config, space.preset) for config in variants(space)]
    by_mode = {config.clip_mode: config for config in configs}
    assert set(by_mode) == {"value", "adaptive"}
    assert by_mode["value"].clip_percentile == 20.0 and by_mode["adaptive"].clip_percentile == 10.0
    assert all(100 <= config.hidden_size < 300 and config.epochs == 5 for config in configs)


def test_trial_config_lets_a_case_override_a_plain_value_and_refuses_bad_keys():
    config = trial_config({"max_grad_norm": 5.0, "clip": {"clip_mode": "value", "max_grad_norm": 0.1}}, "test")
    assert (config.clip_mode, config.max_grad_norm) == ("value", 0.1)
    with pytest.raises(UsageError, match="unknown key 'nonsense'"):
        trial_config({"clip": {"nonsense": 1}}, "test")
    with pytest.raises(UsageError, match=r"a.clip_mode: also set by"):
        trial_config({"b": {"clip_mode": "none"}, "a": {"clip_mode": "value"}}, "test")


BAD_FILES = {
    "malformed YAML": ("description: d\nvary: {max_grad_norm: [1,\n", "line "),
    "repeated key": ("description: d\nvary:\n  lr_decay: {grid: [0.5]}\n  lr_decay: {grid: [1.0]}\n", "line 4"),
    "not a mapping": ("- a\n- b\n", "(top level)"),
    "empty file": ("", "(top level)"),
    "description missing": ("preset: small\n", "description: missing"),
    "unknown top-level key": ("description: d\nvaries: {}\n", "varies: unknown key"),
    "unknown preset": ("description: d\npreset: huge\n", "preset: unknown preset 'huge'"),
    "unknown domain kind": (
        "description: d\nvary: {lr_decay: {gird: [0.5]}}\n",
        "vary.lr_decay: unknown domain 'gird'",
    ),
    "two domains": ("description: d\nvary: {lr_decay: {grid: [0.5], choice: [1.0]}}\n", "vary.lr_decay:"),
    "vary key not a setting": ("description: d\nvary: {max_grad: {grid: [1]}}\n", "vary.max_grad: not a run setting"),
    "grid value invalid": (
        "description: d\nvary: {max_grad_norm: {grid: [1, -1]}}\n",
        "vary.max_grad_norm.grid[1]: -1",
    ),
    "choice value invalid": (
        "description: d\nvary: {clip_mode: {choice: [value, clever]}}\n",
        "vary.clip_mode.choice[1]",
    ),
    "empty grid": ("description: d\nvary: {lr_decay: {grid: []}}\n", "vary.lr_decay.grid"),
    "repeated grid value": (
        "description: d\nvary: {max_grad_norm: {grid: [1, 1.0]}}\n",
        "vary.max_grad_norm.grid: 1.0 appears twice",
    ),
    "uniform reversed": ("description: d\nvary: {keep_prob: {uniform: [0.9, 0.3]}}\n", "vary.keep_prob.uniform"),
    "uniform one bound": ("description: d\nvary: {keep_prob: {uniform: [0.3]}}\n", "vary.keep_prob.uniform"),
    "uniform bound invalid": ("description: d\nvary: {keep_prob: {uniform: [0.5, 2]}}\n", "vary.keep_prob.uniform[1]"),
    "loguniform from 0": (
        "description: d\nvary: {learning_rate: {loguniform: [0, 1]}}\n",
        "vary.learning_rate.loguniform",
    ),
    "uniform on an integer": ("description: d\nvary: {hidden_size: {uniform: [10, 20]}}\n", "vary.hidden_size.uniform"),
    "randint of floats": ("description: d\nvary: {hidden_size: {randint: [10.5, 20]}}\n", "vary.hidden_size.randint"),
    "epochs varied": ("description: d\nvary: {epochs: {grid: [3, 4]}}\n", "vary.epochs: epochs cannot vary"),
    "fixed key unknown": ("description: d\nfixed: {dropout: 0.5}\n", "fixed.dropout: not a run setting"),
    "fixed value invalid": ("description: d\nfixed: {keep_prob: 2}\n", "fixed.keep_prob: 2"),
    "fixed and varied": (
        "description: d\nfixed: {lr_decay: 0.5}\nvary: {lr_decay: {grid: [0.5, 1]}}\n",
        "vary.lr_decay: lr_decay is also set in fixed",
    ),
    "cases labelled by a setting": (
        "description: d\nvary: {clip_mode: {cases: [{clip_mode: none}]}}\n",
        "vary.clip_mode:",
    ),
    "case value invalid": (
        "description: d\nvary: {c: {cases: [{clip_mode: none}, {max_grad_norm: 0}]}}\n",
        "vary.c.cases[1].max_grad_norm: 0",
    ),
    "case key unknown": (
        "description: d\nvary: {c: {cases: [{clip: none}]}}\n",
        "vary.c.cases[0].clip: not a run setting",
    ),
    "case key also varied": (
        "description: d\nvary:\n  clip_mode: {grid: [none, value]}\n  c: {cases: [{clip_mode: none}]}\n",
        "vary.c.cases[0].clip_mode: clip_mode is also varied by vary.clip_mode",
    ),
    "cases empty": ("description: d\nvary: {c: {cases: []}}\n", "vary.c.cases"),
    "repeated case": (
        "description: d\nvary: {c: {cases: [{clip_mode: none}, {clip_mode: none}]}}\n",
        "vary.c.cases[1]",
    ),
    "grace_period < 1": ("description: d\nscheduler: {grace_period: 0}\n", "scheduler.grace_period: 0"),
    "grace_period > epochs": (
        "description: d\nfixed: {epochs: 4}\nscheduler: {grace_period: 6}\n",
        "scheduler.grace_period: 6 is more than the 4 epochs",
    ),
    "reduction_factor <= 1": ("description: d\nscheduler: {reduction_factor: 1}\n", "scheduler.reduction_factor: 1"),
    "brackets < 1": ("description: d\nscheduler: {brackets: 0}\n", "scheduler.brackets: 0"),
    "unknown scheduler key": ("description: d\nscheduler: {max_t: 13}\n", "scheduler.max_t: unknown key"),
    "negative cpus": ("description: d\nresources: {cpus_per_trial: -1}\n", "resources.cpus_per_trial: -1"),
    "negative gpus": ("description: d\nresources: {gpus_per_trial: -0.5}\n", "resources.gpus_per_trial: -0.5"),
    "seeds empty": ("description: d\nseeds: []\n", "seeds: []"),
    "seed negative": ("description: d\nseeds: [0, -1]\n", "seeds[1]: -1"),
    "seed repeated": ("description: d\nseeds: [1, 1]\n", "seeds: [1, 1] repeats a seed"),
    "seed fixed and in seeds": (
        "description: d\nfixed: {seed: 3}\nseeds: [0, 1]\n",
        "fixed.seed: also varied by seeds",
    ),
    "repeats of a grid": (
        "description: d\nvary: {lr_decay: {grid: [0.5, 1]}}\nnum_samples: 2\n",
        "num_samples: 2 would repeat identical runs",
    ),
}


@pytest.mark.parametrize("text, key", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_every_mistake_is_one_line_naming_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_space(str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert key in message
    assert ", allowed: " in message


def test_a_bad_vary_key_lists_the_settings_that_may_vary(tmp_path):
    path = write(tmp_path, "description: d\nvary: {max_grad: {grid: [1]}}\n")
    with pytest.raises(
        UsageError, match=r"allowed: num_layers, .*max_grad_norm, .*seed, .*precision, or any label"
    ) as caught:
        load_space(str(path))
    assert "epochs" not in str(caught.value).split("allowed:")[1]


def test_yaml_reads_exponent_numbers_as_numbers(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; a space file means the number.
    path = write(tmp_path, "description: d\nvary: {learning_rate: {loguniform: [1e-3, 1E1]}}\n")
    assert load_space(str(path)).vary["learning_rate"] == {"loguniform": [0.001, 10.0]}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load_and_every_trial_config_is_valid(name):
    space = load_space(name)
    assert space.name == name and space.description and space.text.startswith("#")
    configs = [trial_config(config, space.preset) for config in variants(space)]
    assert len(configs) == space.trial_count()  # all shipped spaces are grids: Ray runs exactly these
    assert len({config.model_dump_json() for config in configs}) == len(configs)  # no trial twice


def test_grad_clip_is_the_64_trial_study():
    space = load_space("grad_clip")
    assert space.trial_count() == 8 * 4 * 2 == 64
    assert space.varied_keys() == ["max_grad_norm", "lr_decay", "seed"]
    assert space.preset == "small" and space.base_config().epochs == 13
    assert space.param_space()["max_grad_norm"]["grid_search"][-1] == math.inf
    assert (space.cpus_per_trial, space.gpus_per_trial) == (1.0, 0.0)


def test_command_line_epochs_and_seeds_replace_the_files():
    space = load_space("smoke", epochs=6, seeds=[3, 4, 5])
    assert space.base_config().epochs == 6 and space.param_space()["epochs"] == 6
    assert space.param_space()["seed"] == {"grid_search": [3, 4, 5]} and space.trial_count() == 18
    assert load_space("grad_clip").trial_count(num_samples=1, seeds=[7]) == 32
    with pytest.raises(UsageError, match=r"grad_clip.yaml: scheduler.grace_period: 6 is more than the 4 epochs"):
        load_space("grad_clip", epochs=4)


@pytest.mark.parametrize(
    "grace, factor, brackets, epochs",
    [(6, 2, 1, 13), (2, 2, 1, 4), (1, 4, 1, 13), (1, 3, 3, 39), (4, 1.5, 2, 20), (1, 2, 1, 8), (5, 2, 1, 5)],
)
def test_rungs_match_rays_brackets(tmp_path, grace, factor, brackets, epochs):
    text = f"description: d\nfixed: {{epochs: {epochs}}}\nscheduler: {{grace_period: {grace}, reduction_factor: {factor}, brackets: {brackets}}}\n"
    space = load_space(str(write(tmp_path, text)))
    scheduler = space.asha(epochs)
    milestones = {math.ceil(milestone) for bracket in scheduler._brackets for milestone, _ in bracket._rungs}
    assert space.rungs(epochs) == sorted(m for m in milestones if m < epochs)  # at max_t ASHA stops every trial
    assert (scheduler._time_attr, scheduler._metric, scheduler._mode, scheduler._max_t) == (
        metrics.EPOCH,
        metrics.OBJECTIVE,
        metrics.MODE,
        epochs,
    )


@pytest.mark.parametrize("name, rungs", [("grad_clip", [6, 12]), ("smoke", [2])])
def test_asha_stops_a_worse_trial_exactly_at_the_rungs(name, rungs):
    space = load_space(name)
    epochs = space.base_config().epochs
    scheduler = space.asha(epochs)
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for trial in (good, bad):
        scheduler.on_trial_add(None, trial)
    stopped = []
    for epoch in range(1, epochs):
        scheduler.on_trial_result(None, good, {metrics.EPOCH: epoch, metrics.OBJECTIVE: 100.0})
        if (
            scheduler.on_trial_result(None, bad, {metrics.EPOCH: epoch, metrics.OBJECTIVE: 200.0})
            == TrialScheduler.STOP
        ):
            stopped.append(epoch)  # a real trial would end here; this one reports on to find every rung
    assert stopped == space.rungs(epochs) == rungs


DECAY_SPACE = "description: d\nvary: {{{vary}}}\nscheduler: {{grace_period: {grace}, reduction_factor: 2}}\n"


@pytest.mark.parametrize(
    "vary, grace, warns",
    [
        ("lr_decay: {grid: [0.5, 1.0]}", 2, True),  # rungs 2, 4, 8 vs decay_start 4
        ("lr_decay: {grid: [0.5, 1.0]}", 4, True),  # a rung at decay_start itself still compares equals
        ("lr_decay: {grid: [0.5, 1.0]}", 5, False),
        ("decay_start: {grid: [2, 6]}", 5, True),  # runs with decay_start 6 match through epoch 6
        ("s: {cases: [{lr_schedule: zaremba}, {lr_schedule: constant}]}", 3, True),
        (
            "s: {cases: [{lr_schedule: exponential, lr_decay: 0.5}, {lr_schedule: exponential, lr_decay: 0.9}]}",
            2,
            False,
        ),
        ("max_grad_norm: {grid: [1, 5]}", 2, False),  # decay does not vary
        ("lr_decay: {grid: [0.5]}", 2, False),  # one value varies nothing
    ],
)
def test_decay_warning_fires_only_for_rungs_before_the_decay(tmp_path, vary, grace, warns):
    space = load_space(str(write(tmp_path, DECAY_SPACE.format(vary=vary, grace=grace))))
    warning = space.decay_warning(13)
    assert (warning is not None) == warns
    if warns:
        assert "\n" not in warning and str(space.path) in warning
        assert f"grace_period to {max(space._values('decay_start')) + 1} or more" in warning


def test_decay_warning_names_rungs_and_fix(tmp_path):
    space = load_space(str(write(tmp_path, DECAY_SPACE.format(vary="lr_decay: {grid: [0.5, 1.0]}", grace=2))))
    warning = space.decay_warning(13)
    assert "epochs 2, 4 " in warning and "decay_start 4" in warning and "grace_period to 5 or more" in warning


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_do_not_warn(name):
    space = load_space(name)
    assert space.decay_warning(space.base_config().epochs) is None


def test_resolve_by_name_prefers_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_space_path("grad_clip") == SPACES_DIR / "grad_clip.yaml"
    assert resolve_space_path("grad_clip.yaml") == SPACES_DIR / "grad_clip.yaml"
    (tmp_path / "search_spaces").mkdir()
    own = write(tmp_path / "search_spaces", "description: mine\n", "grad_clip.yaml")
    assert resolve_space_path("grad_clip").resolve() == own.resolve()
    assert load_space("grad_clip").description == "mine"


def test_resolve_by_path_and_unknown_names(tmp_path):
    path = write(tmp_path, "description: d\n", "anywhere.yml")
    assert resolve_space_path(str(path)) == path
    with pytest.raises(UsageError) as caught:
        resolve_space_path("grad_clipping")
    message = str(caught.value)
    assert message.startswith("grad_clipping: no such search space") and "\n" not in message
    assert all(name in message for name in SHIPPED)
    with pytest.raises(UsageError, match="no such file"):
        resolve_space_path(str(tmp_path / "missing.yaml"))
