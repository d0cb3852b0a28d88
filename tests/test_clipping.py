import io
import math

import numpy as np
import pytest
import torch

import study.train.clipping
from study import metrics as m
from study.config import make_config
from study.train.clipping import Clipper


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
    monkeypatch.setattr(study.train.clipping, "MIN_CAPACITY", 2)  # so both clippers grow their record
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


def offset_gradient(elements: int, seed: int) -> torch.Tensor:
    """A float32 gradient whose elements share a mean offset: the case where one float32 running
    sum of squares loses the most (every square is alike, so the sum's rounding never cancels)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(elements, generator=generator) * 1e-5 + 3e-3


def float64_norm(*grads: torch.Tensor) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads))


def as_parameters(*grads: torch.Tensor) -> list[torch.nn.Parameter]:
    parameters = []
    for grad in grads:
        parameter = torch.nn.Parameter(torch.zeros_like(grad))
        parameter.grad = grad.clone()
        parameters.append(parameter)
    return parameters


@pytest.mark.parametrize("mode", study.train.clipping.MODES)
def test_recorded_norm_of_a_multi_million_element_gradient_is_exact_to_1e_6(mode):
    # The small preset's softmax-weight gradient has 2M elements; torch's float32 norm kernel is
    # over 1e-5 low on this 4M-element one (asserted, so the test keeps its teeth).
    big, small = offset_gradient(4_000_000, 0), offset_gradient(1000, 1)
    reference = float64_norm(big, small)
    assert abs(float(torch.linalg.vector_norm(big)) - float64_norm(big)) / float64_norm(big) > 1e-5
    clipper = Clipper(mode, threshold=1e9)  # far above the norm: the record is what is tested
    clipper.clip_(as_parameters(big, small))
    recorded = clipper.epoch_summary()[m.GRAD_NORM_MAX]
    assert abs(recorded - reference) / reference < 1e-6


@pytest.mark.parametrize("mode", ["global_norm", "per_tensor_norm", "adaptive"])
@pytest.mark.parametrize("side", [1, -1])
def test_clipping_decision_is_exact_just_around_the_threshold(mode, side):
    """A 4M-element gradient whose float64 norm is 1e-6 above c is clipped to c and recorded as
    clipped; 1e-6 below c it stays bit for bit and is recorded as not clipped. (A float32 running
    sum reads this norm ~1e-4 low: the step above c would pass unclipped.)"""
    grad = offset_gradient(4_000_000, 2)
    c = float64_norm(grad) / (1 + side * 1e-6)
    clipper = Clipper(mode, threshold=c, percentile=1e-9)
    if mode == "adaptive":  # c = the (nearly) 0th percentile of the history: a first step of norm c
        first = grad * (c / float64_norm(grad))
        c = float64_norm(first)
        grad = first * (1 + side * 1e-6)
        clipper.clip_(as_parameters(first))
        clipper.epoch_summary()
    parameters = as_parameters(grad)
    clipper.clip_(parameters)
    summary = clipper.epoch_summary()
    if side > 0:
        assert summary[m.CLIP_FRACTION] == 1.0
        assert abs(float64_norm(parameters[0].grad) - c) / c < 1e-6
    else:
        assert summary[m.CLIP_FRACTION] == 0.0
        assert torch.equal(parameters[0].grad, grad)


@pytest.mark.parametrize("mode", study.train.clipping.MODES)
def test_decide_records_as_clip_does_and_returns_the_factor_clip_applies(mode):
    """The fast step's half of clipping: decide_ takes the squared norms, records the same norm and
    decision as clip_, and returns the factor (None: leave the gradients; value clamps them itself)."""
    raw = [[3.0, 4.0], [0.6, 0.8]]  # norms 5 and 1
    threshold = 2.0 if mode == "value" else 2.5
    reference = Clipper(mode, threshold)
    clipped = with_grads(*raw)
    reference.clip_(clipped)
    decider = Clipper(mode, threshold)
    grads = [torch.tensor(g) for g in raw]
    factor = decider.decide_(study.train.clipping.squared_norms(grads), grads)
    if factor is None:
        assert mode in ("none", "value")
        applied = grads
    else:
        assert factor.dtype == torch.float64 and factor.dim() == (1 if mode == "per_tensor_norm" else 0)
        applied = [g * f for g, f in zip(grads, factor.expand(len(grads)))]
    assert all(torch.equal(p.grad, g) for p, g in zip(clipped, applied))
    assert decider.epoch_summary() == reference.epoch_summary()
