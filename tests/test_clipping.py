import io
import math

import numpy as np
import pytest
import torch

import study.clipping
from study import metrics as m
from study.clipping import Clipper
from study.config import make_config


def with_grads(*grads: list[float]) -> list[torch.nn.Parameter]:
    """Parameters whose .grad are the given float32 vectors."""
    parameters = []
    for grad in grads:
        parameter = torch.nn.Parameter(torch.zeros(len(grad)))
        parameter.grad = torch.tensor(grad, dtype=torch.float32)
        parameters.append(parameter)
    return parameters


def grads_of(parameters) -> list[list[float]]:
    return [p.grad.tolist() for p in parameters]


def clip_once(clipper: Clipper, *grads: list[float]) -> tuple[list[list[float]], dict[str, float]]:
    parameters = with_grads(*grads)
    clipper.clip_(parameters)
    return grads_of(parameters), clipper.epoch_summary()


def test_global_norm_scales_every_gradient_by_c_over_the_norm():
    # Global norm of [3, 4] and [0] is 5; c = 2.5 halves everything, exactly (no +1e-6 in the divisor).
    grads, summary = clip_once(Clipper("global_norm", 2.5), [3.0, 4.0], [0.0])
    assert grads == [[1.5, 2.0], [0.0]]
    assert summary[m.GRAD_NORM_MAX] == 5.0  # the norm before clipping
    assert summary[m.CLIP_FRACTION] == 1.0


@pytest.mark.parametrize(
    "grads, c",
    [
        (([0.1, -0.2], [0.3]), 5.0),  # well under
        (([1.5, -2.0], [6.0]), 6.5),  # exactly at: the norm is 6.5 and TF's factor c / max(c, c) is 1
    ],
)
def test_global_norm_at_or_under_the_threshold_is_left_bit_for_bit(grads, c):
    parameters = with_grads(*grads)
    before = [p.grad.clone() for p in parameters]
    clipper = Clipper("global_norm", c)
    clipper.clip_(parameters)
    assert all(torch.equal(p.grad, b) for p, b in zip(parameters, before))
    assert clipper.epoch_summary()[m.CLIP_FRACTION] == 0.0


def test_value_clamps_each_element():
    grads, summary = clip_once(Clipper("value", 2.0), [3.0, -4.0, 0.5], [-1.0])
    assert grads == [[2.0, -2.0, 0.5], [-1.0]]
    assert summary[m.GRAD_NORM_MAX] == pytest.approx(math.sqrt(9 + 16 + 0.25 + 1))
    assert summary[m.CLIP_FRACTION] == 1.0

    # Every |element| <= c: untouched and not counted as clipped, although the norm (5.1) exceeds c.
    grads, summary = clip_once(Clipper("value", 4.0), [3.0, -4.0, 0.5], [-1.0])
    assert grads == [[3.0, -4.0, 0.5], [-1.0]]
    assert summary[m.CLIP_FRACTION] == 0.0


def test_per_tensor_norm_clips_each_tensor_on_its_own():
    # Norms 5 and 1: only the first exceeds c = 2.5; a global-norm clip would scale the second too.
    grads, summary = clip_once(Clipper("per_tensor_norm", 2.5), [3.0, 4.0], [0.6, 0.8])
    assert grads[0] == [1.5, 2.0]
    assert grads[1] == torch.tensor([0.6, 0.8]).tolist()  # bit for bit
    assert summary[m.GRAD_NORM_MAX] == pytest.approx(math.sqrt(26))
    assert summary[m.CLIP_FRACTION] == 1.0

    grads, summary = clip_once(Clipper("per_tensor_norm", 5.0), [3.0, 4.0], [0.6, 0.8])
    assert grads == [[3.0, 4.0], torch.tensor([0.6, 0.8]).tolist()]
    assert summary[m.CLIP_FRACTION] == 0.0


def test_none_changes_nothing_but_records_the_norm():
    grads, summary = clip_once(Clipper("none", 1.0), [30.0, 40.0])
    assert grads == [[30.0, 40.0]]
    assert summary[m.GRAD_NORM_MAX] == 50.0
    assert summary[m.CLIP_FRACTION] == 0.0


@pytest.mark.parametrize("mode", ["global_norm", "value", "per_tensor_norm"])
def test_inf_threshold_means_no_clipping_and_no_nan(mode):
    grads, summary = clip_once(Clipper(mode, math.inf), [3.0, 4.0], [0.0])
    assert grads == [[3.0, 4.0], [0.0]]
    assert summary[m.GRAD_NORM_MAX] == 5.0
    assert summary[m.CLIP_FRACTION] == 0.0


def test_adaptive_threshold_is_the_percentile_of_all_norms_so_far():
    # One scalar gradient g per step, so its global norm is g and clipping leaves min(g, c).
    clipper = Clipper("adaptive", threshold=5.0, percentile=30.0)
    norms = [4.0, 1.0, 3.0, 2.0, 5.0, 0.5, 7.0, 2.5]
    clipped = []
    for step, norm in enumerate(norms):
        parameters = with_grads([norm])
        clipper.clip_(parameters)
        c = np.percentile(norms[: step + 1], 30.0)  # the current norm included
        assert parameters[0].grad.item() == pytest.approx(min(norm, c), rel=1e-6)
        clipped.append(norm > c)
    summary = clipper.epoch_summary()
    assert summary[m.CLIP_FRACTION] == pytest.approx(np.mean(clipped))
    assert 0 < summary[m.CLIP_FRACTION] < 1  # the sequence exercises both branches


def test_epoch_summary_of_a_known_sequence_then_a_new_epoch():
    clipper = Clipper("global_norm", 3.5)
    for norm in [1.0, 2.0, 3.0, 4.0, 10.0]:
        clipper.clip_(with_grads([norm]))
    summary = clipper.epoch_summary()
    assert list(summary) == list(m.GRAD_METRICS)
    assert summary[m.GRAD_NORM_MEAN] == pytest.approx(4.0)
    assert summary[m.GRAD_NORM_P50] == pytest.approx(3.0)
    assert summary[m.GRAD_NORM_P90] == pytest.approx(7.6)  # 4 + 0.6 * (10 - 4), linear interpolation
    assert summary[m.GRAD_NORM_MAX] == pytest.approx(10.0)
    assert summary[m.CLIP_FRACTION] == pytest.approx(0.4)

    empty = clipper.epoch_summary()
    assert all(math.isnan(empty[name]) for name in m.GRAD_METRICS[:4])
    assert empty[m.CLIP_FRACTION] == 0.0

    clipper.clip_(with_grads([2.0]))
    assert clipper.epoch_summary()[m.GRAD_NORM_MEAN] == pytest.approx(2.0)  # only the new epoch's step


def test_adaptive_epoch_summary_covers_the_epoch_only():
    clipper = Clipper("adaptive", 1.0)
    for norm in [1.0, 2.0]:
        clipper.clip_(with_grads([norm]))
    clipper.epoch_summary()
    clipper.clip_(with_grads([10.0]))
    summary = clipper.epoch_summary()
    assert summary[m.GRAD_NORM_MEAN] == summary[m.GRAD_NORM_MAX] == pytest.approx(10.0)


def test_adaptive_restored_from_a_checkpoint_clips_as_if_never_stopped(monkeypatch):
    monkeypatch.setattr(study.clipping, "MIN_CAPACITY", 2)  # so both clippers grow their record
    generator = torch.Generator().manual_seed(0)
    steps = [[torch.randn(3, generator=generator) * 4, torch.randn(2, generator=generator)] for _ in range(20)]

    def step(clipper, grads):
        parameters = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(parameters, grads):
            p.grad = g.clone()
        clipper.clip_(parameters)
        return [p.grad for p in parameters]

    original = Clipper("adaptive", 5.0, percentile=25.0)
    for grads in steps[:5]:
        step(original, grads)
    original.epoch_summary()
    for grads in steps[5:9]:  # the checkpoint falls inside an epoch
        step(original, grads)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = Clipper("adaptive", 5.0, percentile=25.0)
    restored.load_state_dict(torch.load(buffer))

    for grads in steps[9:]:
        for a, b in zip(step(original, grads), step(restored, grads)):
            assert torch.equal(a, b)
    assert original.epoch_summary() == restored.epoch_summary()


def test_state_of_another_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        Clipper("adaptive", 5.0).load_state_dict(Clipper("global_norm", 5.0).state_dict())


@pytest.mark.parametrize("mode", ["global_norm", "value", "per_tensor_norm", "adaptive", "none"])
def test_nan_and_inf_gradients_are_recorded_not_raised(mode):
    clipper = Clipper(mode, 1.0)
    clipper.clip_(with_grads([1.0]))
    clipper.clip_(with_grads([math.inf, 1.0]))
    assert clipper.epoch_summary()[m.GRAD_NORM_MAX] == math.inf
    clipper.clip_(with_grads([math.nan, 1.0]))
    assert math.isnan(clipper.epoch_summary()[m.GRAD_NORM_MEAN])


def test_inf_gradient_becomes_nan_under_global_norm_as_in_tf():
    grads, _ = clip_once(Clipper("global_norm", 1.0), [math.inf, 1.0])
    assert all(math.isnan(g) for g in grads[0])


def test_from_config_takes_mode_threshold_and_percentile():
    config = make_config({"clip_mode": "adaptive", "max_grad_norm": 2.0, "clip_percentile": 50.0})
    clipper = Clipper.from_config(config, "cpu", steps_per_epoch=300, epochs=2)
    assert (clipper.mode, clipper.threshold, clipper.percentile) == ("adaptive", 2.0, 50.0)
    assert clipper.state_dict()["norms"].numel() == 0
