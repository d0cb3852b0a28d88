"""The configuration of one training run, and the presets of TF's ptb_word_lm.

    from study.config import make_config
    config = make_config({"max_grad_norm": 1.0}, preset="small")

A run is fully described by one `TrainConfig`: a frozen pydantic model, so a misspelt key or an
out-of-range value is an error that names it. Where the machine runs it (device, threads) is not
part of the run and lives on the command line.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from study.errors import UsageError, describe_validation_error

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits; torch takes 64
ClipMode = Literal["global_norm", "value", "per_tensor_norm", "adaptive", "none"]
Schedule = Literal["zaremba", "exponential", "plateau", "constant"]
Precision = Literal["fp32", "bf16"]
Step = Literal["fast", "plain"]


class TrainConfig(BaseModel):
    """Every setting of one run. Field names follow TF's ptb_word_lm where it has one."""

    # Numbers are finite (max_grad_norm's inf excepted), and true/false or text is not taken for one.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Model: sizes of the Zaremba LSTM (the vocabulary size comes from the data).
    num_layers: int = Field(2, ge=1, description="LSTM layers")
    hidden_size: int = Field(200, ge=1, description="LSTM units per layer, also the embedding size")
    num_steps: int = Field(20, ge=1, description="time steps of truncated backprop")
    batch_size: int = Field(20, ge=1, description="sequences per batch")
    init_scale: float = Field(0.1, gt=0, description="weights start uniform in [-init_scale, init_scale]")
    keep_prob: float = Field(1.0, gt=0, le=1, description="dropout keep probability, in (0, 1]")

    # Optimisation.
    learning_rate: float = Field(1.0, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum, 0 for the reference's plain SGD")
    epochs: int = Field(13, ge=1, description="epochs to train (TF max_max_epoch); also ASHA's max_t")
    lr_schedule: Schedule = Field("zaremba", description="learning-rate schedule")
    lr_decay: float = Field(
        0.5, gt=0, le=1, description="decay factor of every schedule (zaremba: per epoch after decay_start)"
    )
    decay_start: int = Field(4, ge=0, description="zaremba: epochs at the initial rate (TF max_epoch)")
    decay_steps: int = Field(2000, ge=1, description="exponential: steps per factor of lr_decay")
    staircase: bool = Field(False, description="exponential: decay in whole steps of decay_steps")
    plateau_patience: int = Field(0, ge=0, description="plateau: epochs without validation improvement before decaying")

    # Gradient clipping.
    clip_mode: ClipMode = Field("global_norm", description="gradient clipping strategy")
    max_grad_norm: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=True,
        description="clipping threshold c (norm, or value for 'value'); inf disables clipping",
    )
    clip_percentile: float = Field(10.0, gt=0, le=100, description="adaptive: percentile of past norms used as c")

    # Data and randomness.
    max_words: int = Field(0, ge=0, description="use only the first N words of each split, 0 for all")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of initialisation and dropout (numpy takes 0 .. 2**32 - 1)"
    )

    # Arithmetic.
    step: Step = Field(
        "fast",
        description="fast (softmax layer and cost by hand, sparse embedding update, clipping fused into SGD) or plain (the autograd reference); same mathematics",
    )
    precision: Precision = Field(
        "fp32",
        description="bf16: matrix products in bfloat16 (autocast); weights, cost, gradient norms and clipping stay float32",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_words_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false or a quoted "5" where a number belongs is an error, not 1.0 or 5.0;
        a yes/no setting takes true or false only."""
        annotation = cls.model_fields[info.field_name].annotation
        if annotation in (int, float) and isinstance(value, (bool, str)):
            raise ValueError(f"must be a number, not {type(value).__name__} {value!r}")
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _not_nan(cls, value: float) -> float:
        if math.isnan(value):
            raise ValueError("must be a number > 0 (or inf for no clipping)")
        return value

    @property
    def clips(self) -> bool:
        """Whether this run clips gradients at all."""
        if self.clip_mode == "adaptive":  # its threshold comes from the run's own norms
            return True
        return self.clip_mode != "none" and math.isfinite(self.max_grad_norm)


PRESETS: dict[str, TrainConfig] = {
    "small": TrainConfig(),
    "medium": TrainConfig(
        hidden_size=650,
        num_steps=35,
        init_scale=0.05,
        keep_prob=0.5,
        epochs=39,
        decay_start=6,
        lr_decay=0.8,
    ),
    "large": TrainConfig(
        hidden_size=1500,
        num_steps=35,
        init_scale=0.04,
        keep_prob=0.35,
        epochs=55,
        decay_start=14,
        lr_decay=1 / 1.15,
        max_grad_norm=10.0,
    ),
    # Tiny and quick: for tests and smoke sweeps, not for results.
    "test": TrainConfig(
        num_layers=1,
        hidden_size=16,
        num_steps=5,
        batch_size=4,
        epochs=3,
        decay_start=1,
        max_words=4000,
    ),
}


def make_config(overrides: dict[str, Any] | None = None, preset: str = "small", where: str = "config") -> TrainConfig:
    """The preset with `overrides` applied and validated; errors name `where` and the key."""
    if preset not in PRESETS:
        raise UsageError(f"{where}: unknown preset '{preset}', choose one of {', '.join(PRESETS)}")
    unknown = sorted(set(overrides or {}) - set(TrainConfig.model_fields))
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}', allowed keys: {', '.join(TrainConfig.model_fields)}")
    values = {**PRESETS[preset].model_dump(), **(overrides or {})}
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, where)) from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per TrainConfig field, generated from the model so the two cannot drift apart.
    A flag left out keeps the preset's value."""
    group = parser.add_argument_group("run configuration (defaults: the chosen preset; small shown)")
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = PRESETS["small"].model_dump()[name]
        help_text = f"{field.description} (small: {default})"
        if field.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        kind = str if choices else field.annotation
        group.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices,
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=None if choices else name.upper(),
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    return {name: getattr(args, name) for name in TrainConfig.model_fields if hasattr(args, name)}


def flatten_cases(tune_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Ray's trial config with each `cases` group (a dict under its label) merged into the top level,
    a case overriding a plain value beside it. Returns (flat config, {label: the keys its group sets}).
    The one reading of cases: the sweep's trials and the report's tables both go through it."""
    flat = {key: value for key, value in tune_config.items() if not isinstance(value, dict)}
    groups: dict[str, list[str]] = {}
    set_by: dict[str, str] = {}
    for label, group in tune_config.items():
        if not isinstance(group, dict):
            continue
        groups[label] = list(group)
        for key, value in group.items():
            if key in set_by:
                raise UsageError(
                    f"trial config: {label}.{key}: also set by {set_by[key]}.{key}, allowed: each setting in one group"
                )
            set_by[key] = label
            flat[key] = value
    return flat, groups
