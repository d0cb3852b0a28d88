"""One label per setting: the live view, the sweep's closing line and the report print values and settings alike."""

import math

import numpy as np
import pandas as pd

from study.labels import case_label, setting_label, value_label


def test_values_print_as_the_report_prints_them():
    values = (math.inf, -math.inf, 5.0, np.float32(0.25), 1, np.int64(2323), True, np.bool_(False), "value")
    assert [value_label(v) for v in values] == ["none", "-inf", "5", "0.25", "1", "2323", "true", "false", "value"]


def test_a_setting_is_key_value_pairs_in_order_from_a_dict_or_a_table_row():
    setting = {"max_grad_norm": math.inf, "lr_decay": 0.5, "seed": 1}
    assert setting_label(setting) == "max_grad_norm=none, lr_decay=0.5, seed=1"
    assert setting_label(pd.Series(setting), ["lr_decay", "max_grad_norm"]) == "lr_decay=0.5, max_grad_norm=none"
    assert setting_label(setting, []) == ""


def test_a_cases_group_is_one_case_without_the_keys_its_mode_ignores():
    keys = ["clip_mode", "max_grad_norm", "clip_percentile"]
    assert (
        case_label({"clip_mode": "global_norm", "max_grad_norm": 5.0, "clip_percentile": 10.0}, keys)
        == "global_norm (max_grad_norm=5)"
    )
    assert case_label({"clip_mode": "none", "max_grad_norm": 5.0, "clip_percentile": 10.0}, keys) == "none"
    assert case_label({"max_grad_norm": 5.0}, ["max_grad_norm"]) == "max_grad_norm=5"  # no mode named: the key acts
    run = {"clip_mode": "adaptive", "max_grad_norm": 5.0, "clip_percentile": 10.0, "lr_decay": 0.5, "seed": 0}
    assert setting_label(run, [*keys, "seed"], {"clip": keys}) == "adaptive (clip_percentile=10), seed=0"
    # A key outside a group is printed whatever the mode: two settings never share a label.
    assert setting_label({"clip_mode": "none", "max_grad_norm": 5.0}) == "clip_mode=none, max_grad_norm=5"
