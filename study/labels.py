"""How a setting is printed, once: the live view, the sweep's closing line and the report all say it so.

    python -c "from study.labels import setting_label; print(setting_label({'max_grad_norm': float('inf'), 'lr_decay': 0.5}))"
    # max_grad_norm=none, lr_decay=0.5

A value: inf is `none` (no clipping), 5.0 is `5`, True is `true`. A setting: `key=value` per key,
joined by commas; the keys of one `cases` group are one case, its modes first and the keys that act
under them in brackets (`global_norm (max_grad_norm=5)`), a key its mode ignores left out (`none`,
not `none (max_grad_norm=5)`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MODE_KEYS = ("clip_mode", "lr_schedule")  # the settings that choose what the others mean
# A setting that acts only under some modes: (the mode's key, the modes it acts under).
ONLY_FOR = {
    "max_grad_norm": ("clip_mode", {"global_norm", "value", "per_tensor_norm"}),
    "clip_percentile": ("clip_mode", {"adaptive"}),
    "lr_decay": ("lr_schedule", {"zaremba", "exponential", "plateau"}),
    "decay_start": ("lr_schedule", {"zaremba"}),
    "decay_steps": ("lr_schedule", {"exponential"}),
    "staircase": ("lr_schedule", {"exponential"}),
    "plateau_patience": ("lr_schedule", {"plateau"}),
}


def value_label(value: Any) -> str:
    """A setting's value: inf is 'none' (no clipping), 5.0 and 5 are '5', True is 'true'."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        if math.isinf(value):
            return "none" if value > 0 else "-inf"
        return f"{value:g}"
    return str(value)


def acts(key: str, setting: Mapping[str, Any]) -> bool:
    """Whether `key` means something under the modes `setting` names (a key without modes always does)."""
    mode_key, modes = ONLY_FOR.get(key, (None, None))
    return mode_key not in setting or setting[mode_key] in modes


def case_label(setting: Mapping[str, Any], keys: Sequence[str]) -> str:
    """One `cases` group's `keys` of `setting` as one label: 'global_norm (max_grad_norm=5)', 'none'."""
    acting = [key for key in keys if acts(key, setting)]
    head = [str(setting[key]) for key in acting if key in MODE_KEYS]
    rest = [f"{key}={value_label(setting[key])}" for key in acting if key not in MODE_KEYS]
    if head:
        return " ".join(head) + (f" ({', '.join(rest)})" if rest else "")
    return ", ".join(rest) or "(default)"


def setting_label(
    setting: Mapping[str, Any],
    keys: Sequence[str] | None = None,
    cases: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """'max_grad_norm=none, lr_decay=0.5': each of `keys` of `setting` (a dict or a table row; all its
    keys by default) in order, the keys of each `cases` group ({label: keys}) as one case_label."""
    keys = list(setting.keys() if keys is None else keys)
    group_of = {key: label for label, group in (cases or {}).items() for key in group}
    parts, seen = [], set()
    for key in keys:
        label = group_of.get(key)
        if label is None:
            parts.append(f"{key}={value_label(setting[key])}")
        elif label not in seen:
            seen.add(label)
            parts.append(case_label(setting, [k for k in cases[label] if k in keys]))
    return ", ".join(parts)
