"""The fast training step against the plain one (autograd through nn.Linear, sequence_cost,
Clipper.clip_, torch.optim.SGD): one step at a time from the same state, along a trajectory.

Multi-step runs cannot stay equal (at learning rate 1 the training is chaotic: 1e-7 apart at the
start, 10% apart by step 50), so every step starts both from the plain trainer's exact state.
The fast step's tests run on both of its softmax paths: the compiled row kernel (where it builds)
and PyTorch ops."""

import copy
import itertools
import resource
import subprocess
import sys

import pytest
import torch

from study.config import make_config
from study.errors import UsageError
from study.train.data import batches, load_corpus
from study.train.trainer import Trainer

from helpers import record_turns

EPS = torch.finfo(torch.float32).eps
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["kernel", "ops"])
def kernel(request) -> bool:
    """Whether the fast step takes the compiled row kernel (True) or PyTorch ops (False)."""
    if request.param == "kernel":
        request.getfixturevalue("compiled_rows")  # skips where the kernel is off or does not build
    return request.param == "kernel"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over the whole tensor, in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_dense() if grad.is_sparse else grad  # a sparse gradient's duplicate rows summed


@torch.no_grad()
def update_error(before: torch.Tensor, fast: torch.Tensor, plain: torch.Tensor) -> float:
    """How far the two updated weights differ beyond one float32 rounding of the weight, as a share
    of the largest update: a weight of 0.1 moved by 1e-4 is stored to 1e-8, 1e-4 of the update."""
    step = (plain.double() - before.double()).abs().max().item()
    beyond = ((fast.double() - plain.double()).abs() - EPS * plain.double().abs()).clamp(min=0)
    return beyond.max().item() / step


def one_step_each(config, corpus, windows: int, device: str = "cpu", kernel: bool = True) -> list[dict]:
    """Walk a plain trainer over the first `windows` training windows, state carried; before each
    step put a fast trainer into the plain one's exact state (weights, optimizer, clipping record,
    random state: the same dropout) and take the same step with both. Per step: what they agree on."""
    plain = Trainer(config.model_copy(update={"step": "plain"}), corpus, device)
    fast = Trainer(config.model_copy(update={"step": "fast"}), corpus, device, row_kernel=kernel)
    captured = {}
    clip, decide = plain.clipper.clip_, fast.clipper.decide_

    def capture_plain(parameters):  # the gradients as backward left them, before clipping
        captured["plain"] = [p.grad.clone() for p in parameters]
        clip(parameters)

    def capture_fast(squares, gradients):
        captured["fast"] = [dense(p.grad).clone() for p in fast.parameters]
        return decide(squares, gradients)

    plain.clipper.clip_, fast.clipper.decide_ = capture_plain, capture_fast
    state = plain.model.initial_state(config.batch_size)
    steps = []
    for x, y in itertools.islice(batches(plain.train_data, config.num_steps), windows):
        fast.load_state_dict(copy.deepcopy(plain.state_dict()))  # a copy: the optimizer keeps the tensors it is given
        before = [p.detach().clone() for p in plain.parameters]
        rng = torch.get_rng_state()
        plain_loss, plain_state = plain.take_step(x, y, state)
        after_plain = torch.get_rng_state()
        torch.set_rng_state(rng)
        fast_loss, fast_state = fast.take_step(x, y, state)
        assert torch.equal(torch.get_rng_state(), after_plain)  # the same random draws
        plain_record, fast_record = plain.clipper.state_dict(), fast.clipper.state_dict()
        steps.append(
            {
                "cost": abs(fast_loss.item() - plain_loss.item()) / plain_loss.item(),
                "grads": [relative(f, p) for f, p in zip(captured["fast"], captured["plain"])],
                "update": [update_error(b, f, p) for b, f, p in zip(before, fast.parameters, plain.parameters)],
                "norm": relative(fast_record["norms"][-1], plain_record["norms"][-1]),
                "clipped": (bool(plain_record["clipped"][-1]), bool(fast_record["clipped"][-1])),
                "state": all(torch.equal(f, p) for f, p in zip(fast_state, plain_state)),
                "plain_grads": captured["plain"],
                "fast_grads": captured["fast"],
            }
        )
        state = plain_state[0].detach(), plain_state[1].detach()
    return steps


def assert_agree(steps: list[dict], tolerance: float = 1e-6) -> None:
    for index, step in enumerate(steps):
        where = f"step {index}: {step['clipped']}"
        assert step["cost"] <= tolerance, where
        assert max(step["grads"]) <= tolerance, (where, step["grads"])
        assert max(step["update"]) <= tolerance, (where, step["update"])
        assert step["norm"] <= tolerance, where
        assert step["clipped"][0] == step["clipped"][1], where
        assert step["state"], where  # the forward is the same computation: the LSTM state is bit for bit


@pytest.mark.parametrize("device", DEVICES)
def test_one_fast_step_agrees_with_the_plain_one_on_real_ptb_clipped_or_not(ptb_dir, device, kernel):
    """The small preset (TF's), fp32, the first 8 windows of PTB: the cost, every gradient (the
    embedding's sparse one summed into dense rows), the recorded global norm and the update within
    1e-6 relative; the same clipping decision, on steps clipped at c = 5 and steps that are not."""
    steps = one_step_each(make_config(preset="small"), load_corpus(ptb_dir), windows=8, device=device, kernel=kernel)
    assert {step["clipped"][0] for step in steps} == {True, False}  # both kinds happened
    # A GPU's reductions (cuBLAS, atomics in the sparse and LSTM gradients) round in other orders:
    # 6e-7 typical, 2.4e-6 the largest on an H200, with cuDNN's RNN in IEEE float32 (float32_rnn).
    assert_agree(steps, tolerance=1e-6 if device == "cpu" else 1e-5)


@pytest.mark.parametrize("mode", ["global_norm", "value", "per_tensor_norm", "adaptive", "none"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_clip_mode_with_or_without_momentum_and_dropout_agrees(tiny_corpus_dir, mode, momentum, kernel):
    """The tiny corpus (13 words: every window repeats words, so the sparse rows must sum them) with
    dropout; thresholds that clip some steps. With momentum the buffers come from the plain steps
    before, through the saved state, so both paths read the same optimizer state."""
    threshold = {"value": 0.05, "per_tensor_norm": 0.3}.get(mode, 0.6)
    config = make_config(
        {"clip_mode": mode, "max_grad_norm": threshold, "momentum": momentum, "keep_prob": 0.7, "clip_percentile": 50},
        preset="test",
    )
    steps = one_step_each(config, load_corpus(tiny_corpus_dir), windows=6, kernel=kernel)
    assert_agree(steps)
    if mode != "none":
        assert any(step["clipped"][0] for step in steps)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_fast_step_takes_the_bias_gradient_in_float32(ptb_dir, device, kernel):
    """bf16 runs the products in bfloat16 on both paths, so their gradients differ at bfloat16's
    precision; the fast path's bias gradient comes from the float32 gradient of the logits, and is
    nearer the fp32 step's than autocast's, which sums the bfloat16 one."""
    corpus = load_corpus(ptb_dir)
    config = make_config(preset="small")
    reference = one_step_each(config, corpus, windows=3, device=device, kernel=kernel)
    low = one_step_each(
        config.model_copy(update={"precision": "bf16"}), corpus, windows=3, device=device, kernel=kernel
    )
    for exact, step in zip(reference, low):
        assert step["cost"] <= 1e-3 and step["norm"] <= 2e-2
        for fp32, fast, plain in zip(exact["plain_grads"], step["fast_grads"], step["plain_grads"]):
            assert relative(fast, fp32) <= 3e-2 and relative(plain, fp32) <= 3e-2
        bias = -1  # softmax.bias, the last trainable parameter
        fast_error = relative(step["fast_grads"][bias], exact["plain_grads"][bias])
        plain_error = relative(step["plain_grads"][bias], exact["plain_grads"][bias])
        assert fast_error < plain_error / 2, (fast_error, plain_error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_bf16_on_a_gpu_runs_the_lstm_in_bfloat16_not_float16(tiny_corpus_dir):
    """Autocast's cuDNN RNN wrapper casts to float16 whatever autocast's dtype: bf16 must still
    mean bfloat16 in the LSTM, its gradients float32 in the master weights, and fp32 IEEE float32."""
    for step in ("plain", "fast"):
        trainer = Trainer(
            make_config({"precision": "bf16", "step": step}, preset="test"), load_corpus(tiny_corpus_dir), "cuda"
        )
        x, y = next(batches(trainer.train_data, trainer.config.num_steps))
        state = trainer.model.initial_state(trainer.config.batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden, (h, c) = trainer.model.features(x, state)
        assert hidden.dtype == h.dtype == c.dtype == torch.bfloat16
        trainer.take_step(x, y, state)
        assert all(p.grad.dtype == torch.float32 for p in trainer.parameters)
    rnn = torch.backends.cudnn.rnn  # fp32_precision from torch 2.9, allow_tf32 before
    assert rnn.fp32_precision == "ieee" if hasattr(rnn, "fp32_precision") else not torch.backends.cudnn.allow_tf32


def test_the_fast_step_allocates_no_large_buffer_per_step(ptb_dir, kernel):
    """After a warm-up, a fast step at the small preset touches no fresh memory: a new [400, 10000]
    float32 buffer alone would fault 4,096 pages of 4 kB in."""
    trainer = Trainer(make_config(preset="small"), load_corpus(ptb_dir), row_kernel=kernel)
    windows = batches(trainer.train_data, trainer.config.num_steps)
    state = trainer.model.initial_state(trainer.config.batch_size)
    for x, y in itertools.islice(windows, 3):
        state = [s.detach() for s in trainer.take_step(x, y, state)[1]]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for x, y in itertools.islice(windows, 5):
        state = [s.detach() for s in trainer.take_step(x, y, state)[1]]
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 5 < 400


def test_the_fast_step_is_the_default_and_plain_stays_selectable():
    assert make_config({}).step == "fast"
    assert make_config({"step": "plain"}, preset="test").step == "plain"
    with pytest.raises(UsageError) as caught:
        make_config({"step": "quick"}, where="run.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("run.yaml: step=") and "'fast' or 'plain'" in message


def test_a_fast_run_learns_as_a_plain_one_does(tiny_corpus_dir):
    """Two epochs of the tiny run on each path: at learning rate 1 the runs drift apart, but they
    learn alike, and both leave float32 gradients in every trainable parameter."""
    results = {}
    for step in ("plain", "fast"):
        trainer = Trainer(make_config({"epochs": 2, "step": step}, preset="test"), load_corpus(tiny_corpus_dir))
        results[step] = list(trainer.epochs())[-1]
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainer.parameters)
    for metric in ("train_ppl", "valid_ppl", "test_ppl", "grad_norm_mean"):
        assert results["fast"][metric] == pytest.approx(results["plain"][metric], rel=0.02)


def test_bench_on_a_missing_gpu_or_an_unknown_step_is_one_line():
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, "-m", "study.bench", "--device", "cuda"], capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr == "error: --device cuda: no CUDA device is available; use --device cpu or auto\n"
    done = subprocess.run([sys.executable, "-m", "study.bench", "--step", "quick"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "error: --step quick: choose one of fast, plain, both, all\n"


def test_bench_takes_turns_and_times_cpu_and_page_faults(tiny_corpus_dir):
    from study.bench import timed_windows

    corpus = load_corpus(tiny_corpus_dir)
    trainers = [Trainer(make_config({"step": step}, preset="test"), corpus) for step in ("plain", "fast")]
    order = record_turns(trainers, "step")
    timed = timed_windows(trainers, steps=2, windows=3)
    assert order == ["plain", "fast"] * 4  # a warm-up pass, then three timed windows each
    for own in timed:
        assert len(own) == 3
        assert all(w.words == 2 * 4 * 5 and w.seconds > 0 and w.cpu_seconds > 0 and w.faults >= 0 for w in own)
