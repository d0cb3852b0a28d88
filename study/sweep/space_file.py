"""Search space files: the YAML files in search_spaces/, read and checked into a `Space` (study/sweep/spaces.py).

    python -m study.sweep grad_clip --dry-run        # prints the plan this module computes

    space = load_space("grad_clip")                  # ./search_spaces/grad_clip.yaml, else the repo's
    tune.Tuner(trainable, param_space=space.param_space(),
               tune_config=tune.TuneConfig(scheduler=space.asha(13), num_samples=space.num_samples))

A space file is small and declarative; everything but `description` may be left out:

    description: Does clipping matter less once the rate decays?  # what the study asks
    preset: small                    # a study.config preset (default small)
    fixed:                           # run settings shared by every trial
      keep_prob: 0.9
    vary:                            # run settings that differ, one domain each
      max_grad_norm: {grid: [0.25, 1, 5, .inf]}   # every value, crossed with the other grids; .inf: no clipping
      momentum: {choice: [0, 0.9]}                # one value drawn per trial
      learning_rate: {loguniform: [0.1, 10]}      # drawn on a log scale from [low, high], 0 < low < high
      init_scale: {uniform: [0.05, 0.1]}          # drawn uniformly from [low, high]
      hidden_size: {randint: [100, 300]}          # an integer in [100, 300): as Ray's, HIGH IS EXCLUDED
      clip:                                       # a grid over whole groups of settings that go together;
        cases:                                    # the key is only a label (not a setting's name)
          - {clip_mode: global_norm, max_grad_norm: 5}
          - {clip_mode: value, max_grad_norm: 0.05}
    seeds: [0, 1]                    # every combination once per seed: a grid on `seed`
    num_samples: 1                   # Ray's num_samples: the whole grid again, with fresh draws
    scheduler:                       # ASHA; its max_t is always the run's epoch count, never set here
      grace_period: 6                # the first rung, in epochs: >= 1 and at most the epochs (default 1)
      reduction_factor: 2            # > 1 (default 4)
      brackets: 1                    # >= 1 (default 1)
    resources:                       # defaults; --cpus-per-trial / --gpus-per-trial override them
      cpus_per_trial: 1              # > 0, fractions allowed (default 1)
      gpus_per_trial: 0.25           # >= 0, fractions allowed: four trials share a GPU (default 0)

Trials = (product of the grid and cases lengths) x seeds x num_samples. `seeds` and `num_samples`
may be combined: num_samples repeats everything, the seed grid included. Each trial draws its own
sample, so trials with different seeds do not share a draw. A grid-only space cannot have
num_samples > 1: its repeats would be identical runs; list more seeds instead.

A setting goes in one place: fixed, one vary key or one cases group, `seed` in `seeds` or elsewhere.
`epochs` cannot vary: it is ASHA's max_t. Every value is checked against TrainConfig at load time,
so a sweep never starts trials that fail on their config. Each mistake is a `UsageError` of one line:
`<file>: <key>: <what is wrong>, allowed: <what is>`. The YAML itself is read by
study/sweep/yaml_file.py: at most 1 MB, each key once, no alias expanding it past 100,000 values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import study
from study.config import MAX_SEED, PRESETS, TrainConfig
from study.errors import UsageError
from study.sweep.spaces import SAMPLED, AshaSettings, Space, complete_cases
from study.sweep.yaml_file import read_yaml

SPACES_DIR = Path(study.__file__).resolve().parent.parent / "search_spaces"
SUFFIXES = (".yaml", ".yml")

KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "cases")
FIELDS = tuple(TrainConfig.model_fields)
VARIABLE = tuple(name for name in FIELDS if name != "epochs")  # epochs is ASHA's max_t


class _Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # 4, not "4", true or .inf
    grace_period: int = Field(1, ge=1, description="an integer >= 1, at most the epochs of a run")
    reduction_factor: float = Field(4.0, gt=1, description="a number > 1")
    brackets: int = Field(1, ge=1, description="an integer >= 1")


class _Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    cpus_per_trial: float = Field(1.0, gt=0, description="a number > 0, fractions allowed")
    gpus_per_trial: float = Field(0.0, ge=0, description="a number >= 0, fractions allowed")


class _SpaceFile(BaseModel):
    """The file as written; what pydantic can check alone. `_build` checks the rest."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field(min_length=1, description="one or two sentences: what the study asks")
    preset: str = Field("small", description=", ".join(PRESETS))
    fixed: dict[str, Any] = Field(default_factory=dict, description="a mapping of run settings to values")
    vary: dict[str, Any] = Field(default_factory=dict, description="a mapping of run settings to domains")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]] | None = Field(
        None, min_length=1, description=f"a non-empty list of distinct integers 0 .. {MAX_SEED}"
    )
    num_samples: int = Field(1, ge=1, description="an integer >= 1")
    scheduler: _Scheduler = Field(default_factory=_Scheduler, description="grace_period, reduction_factor, brackets")
    resources: _Resources = Field(default_factory=_Resources, description="cpus_per_trial, gpus_per_trial")


def available_spaces() -> list[str]:
    """The names `resolve_space_path` accepts: ./search_spaces/ and the repository's."""
    folders = (Path("search_spaces"), SPACES_DIR)
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.iterdir() if p.suffix in SUFFIXES})


def resolve_space_path(name_or_path: str) -> Path:
    """'grad_clip' -> ./search_spaces/grad_clip.yaml if there is one, else the repository's; a path as is."""
    given = Path(name_or_path)
    looks_like_path = given.suffix in SUFFIXES or len(given.parts) > 1
    if looks_like_path and given.is_file():
        return given
    allowed = f"allowed: {', '.join(available_spaces()) or '(none found)'}, or the path of a .yaml file"
    if len(given.parts) > 1:
        raise UsageError(f"{name_or_path}: no such file, {allowed}")
    name = given.stem if given.suffix in SUFFIXES else name_or_path
    for folder in (Path("search_spaces"), SPACES_DIR):
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    raise UsageError(f"{name_or_path}: no such search space, {allowed}")


def load_space(name_or_path: str, epochs: int | None = None, seeds: Sequence[int] | None = None) -> Space:
    """Read and validate a space. `epochs` and `seeds` (the command line's) replace the file's."""
    path = resolve_space_path(name_or_path)
    where = str(path)
    text, raw = read_yaml(path)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise UsageError(
            f"{where}: (top level): {got}, not a mapping, allowed: keys {', '.join(_SpaceFile.model_fields)}"
        )
    try:
        parsed = _SpaceFile.model_validate(raw)
    except ValidationError as error:
        raise _file_error(error, where) from None
    return _build(parsed, path, text, epochs, seeds)


def _build(parsed: _SpaceFile, path: Path, text: str, epochs: int | None, seeds: Sequence[int] | None) -> Space:
    """The checks that need TrainConfig: known keys, valid values, each setting in one place."""
    check = _Checker(str(path), parsed.preset)
    if parsed.preset not in PRESETS:
        raise check.fail("preset", f"unknown preset '{parsed.preset}'", ", ".join(PRESETS))
    fixed, vary, seed_list, seeds_key = dict(parsed.fixed), dict(parsed.vary), parsed.seeds, "seeds"
    if seeds is not None:  # the command line's seeds replace whatever the file says about seed
        seed_list, seeds_key = list(seeds), "seeds (override)"
        if not seed_list or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seed_list
        ):
            raise check.fail(seeds_key, _shown(seed_list), f"a non-empty list of integers 0 .. {MAX_SEED}")
        fixed.pop("seed", None)
        vary.pop("seed", None)
    if seed_list is not None and len(set(seed_list)) < len(seed_list):
        raise check.fail(seeds_key, f"{_shown(seed_list)} repeats a seed", "distinct integers >= 0")
    check.seeded = seed_list is not None

    check.set_fixed(fixed, epochs)
    domains = {key: check.domain(key, spec) for key, spec in vary.items()}
    if parsed.num_samples > 1 and not any(next(iter(d)) in SAMPLED for d in domains.values()):
        raise check.fail(
            "num_samples",
            f"{parsed.num_samples} would repeat identical runs (nothing is sampled)",
            "1; list more seeds under seeds to repeat the grid",
        )
    space = Space(
        name=path.stem,
        path=path,
        text=text,
        description=parsed.description.strip(),
        preset=parsed.preset,
        fixed=check.fixed,
        vary=domains,
        seeds=tuple(seed_list) if seed_list is not None else None,
        num_samples=parsed.num_samples,
        scheduler=AshaSettings(**parsed.scheduler.model_dump()),
        cpus_per_trial=parsed.resources.cpus_per_trial,
        gpus_per_trial=parsed.resources.gpus_per_trial,
    )
    space._check_grace(space.base_config().epochs)
    return space


class _Checker:
    """Checks one file's `fixed` and `vary` against TrainConfig; remembers where each setting is set."""

    def __init__(self, where: str, preset: str):
        self.where, self.preset = where, preset
        self.fixed: dict[str, Any] = {}
        self.seeded = False  # whether `seeds` sets seed
        self.owner: dict[str, str] = {}  # setting -> the key path in vary that sets it

    def fail(self, key_path: str, wrong: str, allowed: str) -> UsageError:
        return UsageError(f"{self.where}: {key_path}: {wrong}, allowed: {allowed}")

    def config(self, overrides: dict[str, Any], key_path: str) -> TrainConfig:
        """The preset with fixed and `overrides`, as make_config builds it. An error names `key_path`
        (its `{}` replaced by the bad setting's name) and what that setting allows."""
        try:
            return TrainConfig.model_validate({**PRESETS[self.preset].model_dump(), **self.fixed, **overrides})
        except ValidationError as error:
            item = error.errors()[0]
            name = str(item["loc"][0]) if item["loc"] else ""
            allowed = _allowed(name) if name in FIELDS else "a consistent run configuration"
            wrong = f"{_shown(item['input'])} is not valid ({_lower(item['msg'])})"
            raise self.fail(key_path.replace("{}", name), wrong, allowed) from None

    def set_fixed(self, fixed: dict[str, Any], epochs: int | None) -> None:
        for key in fixed:
            if key not in FIELDS:
                raise self.fail(f"fixed.{key}", "not a run setting", ", ".join(FIELDS))
            if key == "seed" and self.seeded:
                raise self.fail("fixed.seed", "also varied by seeds", "seed in fixed or in seeds, not both")
        config = self.config(fixed, "fixed.{}")
        if epochs is not None:
            config = self.config({**fixed, "epochs": epochs}, "epochs (override)")
            fixed = {**fixed, "epochs": epochs}
        self.fixed = {key: getattr(config, key) for key in fixed}

    def claim(self, name: str, key_path: str) -> None:
        """Refuse a setting that is already set elsewhere, or that may not vary."""
        if name == "epochs":
            raise self.fail(key_path, "epochs cannot vary: it is ASHA's max_t", ", ".join(VARIABLE))
        if name in self.fixed:
            raise self.fail(key_path, f"{name} is also set in fixed", "a setting in fixed or in vary, not both")
        if name == "seed" and self.seeded:
            raise self.fail(key_path, "seed is also varied by seeds", "seed in vary or in seeds, not both")
        if name in self.owner:
            raise self.fail(key_path, f"{name} is also varied by {self.owner[name]}", "each setting in one place")
        self.owner[name] = key_path

    def domain(self, key: str, spec: Any) -> dict[str, Any]:
        """One vary entry as {kind: values}, its values as TrainConfig reads them."""
        at = f"vary.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            one = isinstance(spec, dict) and len(spec) == 1
            wrong = f"unknown domain '{next(iter(spec))}'" if one else f"{_shown(spec)} is not one domain"
            raise self.fail(at, wrong, f"one of {', '.join(KINDS)}, as {{grid: [1, 2]}}")
        kind, values = next(iter(spec.items()))
        if kind == "cases":
            if key in FIELDS:
                raise self.fail(
                    at, f"'{key}' is a run setting, so it cannot label cases", "any other label, such as 'group'"
                )
            return {kind: self.cases(values, f"{at}.{kind}")}
        if key not in FIELDS:
            raise self.fail(at, "not a run setting", f"{', '.join(VARIABLE)}, or any label with {{cases: [...]}}")
        self.claim(key, at)
        if kind in ("grid", "choice"):
            return {kind: self.listed(key, values, f"{at}.{kind}")}
        return {kind: self.bounds(key, kind, values, f"{at}.{kind}")}

    def listed(self, key: str, values: Any, at: str) -> list:
        if not isinstance(values, list) or not values:
            raise self.fail(at, f"{_shown(values)} is not a non-empty list", f"a list of values for {key}")
        read = [getattr(self.config({key: value}, f"{at}[{i}]"), key) for i, value in enumerate(values)]
        repeated = [value for i, value in enumerate(read) if value in read[:i]]
        if repeated:
            raise self.fail(
                at, f"{repeated[0]!r} appears twice", "each value once (it would run the same trials again)"
            )
        return read

    def bounds(self, key: str, kind: str, values: Any, at: str) -> list:
        """[low, high] of uniform and loguniform (float settings) or randint (integer settings, high excluded)."""
        wanted = int if kind == "randint" else float
        if TrainConfig.model_fields[key].annotation is not wanted:
            fitting = ", ".join(name for name in VARIABLE if TrainConfig.model_fields[name].annotation is wanted)
            kind_of = "an integer" if wanted is int else "a number"
            raise self.fail(at, f"{key} is not {kind_of} setting", f"{kind} on {fitting}; grid or choice on any")
        numbers = (
            isinstance(values, list)
            and len(values) == 2
            and all(
                not isinstance(v, bool) and isinstance(v, int if wanted is int else (int, float)) and math.isfinite(v)
                for v in values
            )
        )
        if not numbers or values[0] >= values[1]:
            what = (
                "integers [low, high], low < high (high excluded)"
                if wanted is int
                else "finite numbers [low, high], low < high"
            )
            raise self.fail(at, f"{_shown(values)} is not [low, high] with low < high", f"two {what}")
        low, high = values
        if kind == "loguniform" and low <= 0:
            raise self.fail(at, f"low {low!r} is not > 0", "[low, high] with 0 < low < high")
        self.config({key: low}, f"{at}[0]")
        self.config({key: high - 1 if kind == "randint" else high}, f"{at}[1]")
        return [wanted(low), wanted(high)]

    def cases(self, values: Any, at: str) -> list[dict[str, Any]]:
        """A non-empty list of distinct mappings of run settings, each valid with fixed."""
        if not isinstance(values, list) or not values:
            raise self.fail(
                at,
                f"{_shown(values)} is not a non-empty list",
                "a list of mappings of run settings, such as [{clip_mode: none}]",
            )
        read: list[dict[str, Any]] = []
        for i, case in enumerate(values):
            if not isinstance(case, dict):
                raise self.fail(f"{at}[{i}]", f"{_shown(case)} is not a mapping", "a mapping of run settings to values")
            for name in case:
                if name not in FIELDS:
                    raise self.fail(f"{at}[{i}].{name}", "not a run setting", ", ".join(VARIABLE))
                if all(name not in earlier for earlier in read):
                    self.claim(name, f"{at}[{i}].{name}")
            config = self.config(case, f"{at}[{i}]." + "{}")
            read.append({name: getattr(config, name) for name in case})
        complete = complete_cases(read, self.config({}, "fixed.{}").model_dump())
        for i, case in enumerate(complete):
            if case in complete[:i]:
                raise self.fail(f"{at}[{i}]", f"the same settings as {at}[{complete.index(case)}]", "distinct cases")
        return read


def _allowed(name: str) -> str:
    """What a TrainConfig field accepts, from its type and bounds: 'a number > 0 and <= 1 (...)'."""
    field = TrainConfig.model_fields[name]
    kind = field.annotation
    if get_origin(kind) is Literal:
        text = "one of " + ", ".join(get_args(kind))
    else:
        text = {bool: "true or false", int: "an integer"}.get(kind, "a number")
    bounds = [
        f"{symbol} {getattr(rule, attr):g}"
        for rule in field.metadata
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if hasattr(rule, attr)
    ]
    return text + (" " + " and ".join(bounds) if bounds else "") + f" ({field.description})"


def _file_error(error: ValidationError, where: str) -> UsageError:
    """The first pydantic error of the file's structure, as one line naming its key."""
    item = error.errors()[0]
    loc = item["loc"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    model, field = _SpaceFile, None
    for part in loc[:-1] if item["type"] == "extra_forbidden" else loc:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            field = model.model_fields[part]
            model = (
                field.annotation
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
                else None
            )
    if item["type"] == "extra_forbidden":
        return UsageError(f"{where}: {key}: unknown key, allowed: {', '.join(model.model_fields)}")
    wrong = "missing" if item["type"] == "missing" else f"{_shown(item['input'])} is not valid ({_lower(item['msg'])})"
    return UsageError(
        f"{where}: {key}: {wrong}, allowed: {field.description if field else 'see study/sweep/space_file.py'}"
    )


def _shown(value: Any) -> str:
    """repr(value), cut to a readable length: an error is one line, whatever the file holds."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]
