"""Train and evaluate one run of the Zaremba PTB LSTM, epoch by epoch.

    python -m study.train --preset small --data-dir ../shared/data/ptb --threads 2   # study/train/cli.py

The semantics are TF ptb_word_lm's (see design.md): cost summed over time steps and averaged over
the batch, state carried through an epoch and reset at its start, validation with the training batch
shape, test with batch size 1. `Trainer` is what a Ray Tune trial drives: `run_epoch()` returns the
epoch's metrics dict, `state_dict()` / `load_state_dict()` save and restore everything a resumed run
needs to continue exactly as if it had never stopped; `train_steps(n)` times an epoch's first n steps.
Each step is `take_step`: the config's `step` path, fast (study/train/fast.py) or plain (here: autograd
through nn.Linear and sequence_cost, Clipper.clip_, torch.optim.SGD), the reference the fast one is
tested against. Evaluation is the plain forward on either path.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from study import metrics as m
from study.config import Precision, TrainConfig
from study.train.clipping import Clipper
from study.train.data import Corpus, batches, batchify, num_batches
from study.train.fast import FastStep
from study.train.model import LSTMLanguageModel, State
from study.train.schedules import make_schedule

# Longest slice of the test stream fed to the LSTM at once: bounds the [1, chunk, vocab] logits.
TEST_CHUNK = 2048
# Progress lines per epoch, at its tenths (fewer when it has under ten steps); the tenth tenth is the
# epoch's own line. The divergence check shares their host sync. TF's tutorial prints ten a little
# after each tenth.
PROGRESS_LINES = 9


def perplexity(total_loss: float, words: int) -> float:
    """exp(mean cross-entropy); +inf for a non-finite or overflowing loss, never NaN."""
    mean = total_loss / max(words, 1)
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf


class SummedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of logits [words, vocab] for targets [words], summed over the words.

    Same value and gradient as F.cross_entropy(reduction="sum"), cheaper on the CPU: one exp per
    logit in all, in the forward's fused softmax, whose output the backward turns into the gradient
    (softmax minus one-hot) in place, instead of a log-softmax now and its exp again later.
    The log-normaliser comes exactly from the largest probability, which is 1 / sum(exp(logit - max))
    and never below 1 / vocab, so it cannot underflow: log Z = max logit - log(max probability)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=1)  # [words, vocab]
        log_normaliser = logits.amax(dim=1) - probs.amax(dim=1).log()  # [words]
        ctx.save_for_backward(probs, targets)
        return log_normaliser.sum() - logits.gather(1, targets[:, None]).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, targets = ctx.saved_tensors
        gradient = probs  # softmax minus one-hot, in the probabilities' memory
        gradient[torch.arange(len(targets), device=targets.device), targets] -= 1
        return gradient.mul_(grad), None


def sequence_cost(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference cost of logits [steps, batch, vocab] for targets [batch, steps]: cross-entropy
    summed over the time steps and averaged over the batch (TF sequence_loss with
    average_across_timesteps=False). Also returns the cross-entropy summed over every word."""
    summed = SummedCrossEntropy.apply(logits.flatten(0, 1), targets.t().flatten())
    return summed / targets.shape[0], summed


def detach(state: State) -> State:
    """Cut the graph at the window boundary: truncated backprop through time."""
    return state[0].detach(), state[1].detach()


def forward(
    model: LSTMLanguageModel, x: torch.Tensor, state: State, precision: Precision
) -> tuple[torch.Tensor, State]:
    """The model's forward at `precision`. bf16: autocast on x's device runs the matrix products (LSTM,
    softmax layer) in bfloat16 from the float32 master weights, and the state comes back bfloat16;
    the logits come back float32 either way, so the cost's softmax and sums are float32."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, state = model(x, state)
    return logits.float(), state  # .float() is the tensor itself under fp32


@torch.no_grad()
def evaluate(
    model: LSTMLanguageModel,
    windows: Iterator[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    precision: Precision = "fp32",
) -> float:
    """Perplexity of `model` over `windows` of (x, y) [batch, steps], state carried from one to the next."""
    model.eval()
    state = model.initial_state(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=state[0].device)
    words = 0
    for x, y in windows:
        logits, state = forward(model, x, state, precision)
        total += sequence_cost(logits, y)[1]
        words += y.numel()
    return perplexity(total.item(), words)


def stream_windows(ids: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole stream as batch size 1, every word after the first predicted: TF's test model
    (batch 1, num_steps 1) in chunks of `chunk` steps, which gives the same result because the
    state carries over and nothing is truncated at evaluation."""
    stream = ids.view(1, -1)  # [1, words]
    for start in range(0, stream.shape[1] - 1, chunk):
        y = stream[:, start + 1 : start + 1 + chunk]
        yield stream[:, start : start + y.shape[1]], y


@dataclass(frozen=True)
class EpochProgress:
    """Where a run is inside an epoch, at one of its progress points; prints as TF's tutorial line."""

    epoch: int  # the epoch under way, 1-based
    fraction: float  # of its steps done, in (0, 1)
    perplexity: float  # training perplexity of the epoch so far
    words_per_sec: float  # training words per second since the epoch began

    def __str__(self) -> str:
        return f"{self.fraction:.3f} perplexity: {self.perplexity:.3f} speed: {self.words_per_sec:.0f} wps"


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def float32_rnn(device: torch.device) -> None:
    """fp32 means float32 products on a GPU too. PyTorch lets cuDNN run its RNNs in TF32 (a 10-bit
    mantissa) by default: on an H200 that put 1.4e-4 between two computations of one LSTM gradient,
    which float32 holds to 1e-7. Process-wide, as the setting is; a trial is a process of its own."""
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cudnn.rnn, "fp32_precision"):  # torch >= 2.9
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


class Trainer:
    """One run: model, optimizer, schedule, clipper and data on one device."""

    def __init__(
        self,
        config: TrainConfig,
        corpus: Corpus,
        device: torch.device | str = "cpu",
        progress: Callable[[EpochProgress], None] | None = None,
        row_kernel: bool = True,  # the fast step's compiled softmax kernel where it builds (False: PyTorch ops)
    ):
        self.config = config
        self.device = torch.device(device)
        float32_rnn(self.device)
        self.progress = progress
        corpus = corpus.truncated(config.max_words)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.model = LSTMLanguageModel(
            len(corpus.vocab), config.hidden_size, config.num_layers, config.keep_prob, config.init_scale
        ).to(self.device)
        self.train_data = batchify(corpus.train, config.batch_size).to(self.device)  # [batch, batch_len]
        self.valid_data = batchify(corpus.valid, config.batch_size).to(self.device)
        self.test_ids = corpus.test.to(self.device)  # [words]
        self.steps_per_epoch = num_batches(self.train_data.shape[1], config.num_steps, batch_size=config.batch_size)
        num_batches(self.valid_data.shape[1], config.num_steps, batch_size=config.batch_size)  # valid fills a step too
        self.parameters = self.model.trainable_parameters()
        self.optimizer = torch.optim.SGD(self.parameters, lr=config.learning_rate, momentum=config.momentum)
        self.schedule = make_schedule(config)
        self.clipper = Clipper.from_config(config, self.device, self.steps_per_epoch, config.epochs)
        self.fast_step = None
        if config.step == "fast":
            self.fast_step = FastStep(self.model, self.optimizer, self.clipper, config, row_kernel)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.diverged = False

    @property
    def step_path(self) -> str:
        """Which step trains: 'plain', 'fast' (its softmax on the compiled row kernel) or 'fast-ops'
        (the fast step where the kernel is off or does not build), as the bench names them."""
        if self.fast_step is None:
            return "plain"
        return "fast" if self.fast_step.softmax.kernel is not None else "fast-ops"

    @property
    def finished(self) -> bool:
        return self.diverged or self.epoch >= self.config.epochs

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Run the remaining epochs, yielding each one's metrics."""
        while not self.finished:
            yield self.run_epoch()

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate, and after the last epoch test; the metrics of design.md."""
        started = time.perf_counter()
        lr = self.schedule.rate(self.epoch, self.step)
        train_loss, train_words = self._train(self.steps_per_epoch)
        train_seconds = time.perf_counter() - started
        train_ppl = perplexity(train_loss, train_words)
        self.diverged = not math.isfinite(train_ppl)
        valid_ppl = math.inf
        if not self.diverged:
            valid_ppl = self.validate()
            self.diverged = not math.isfinite(valid_ppl)
        self.schedule.observe(self.epoch, valid_ppl)
        self.epoch += 1
        result = {
            m.EPOCH: self.epoch,
            m.LR: lr,
            m.TRAIN_PPL: train_ppl,
            m.VALID_PPL: valid_ppl,
            **self.clipper.epoch_summary(),
            m.WORDS_PER_SEC: train_words / train_seconds,
            m.DIVERGED: self.diverged,
        }
        if self.epoch == self.config.epochs and not self.diverged:
            result[m.TEST_PPL] = self.test()
        result[m.EPOCH_SECONDS] = time.perf_counter() - started
        return result

    def validate(self) -> float:
        """Validation perplexity of the model as it is, with the training batch shape."""
        return evaluate(
            self.model, batches(self.valid_data, self.config.num_steps), self.config.batch_size, self.config.precision
        )

    def test(self) -> float:
        return evaluate(
            self.model, stream_windows(self.test_ids, TEST_CHUNK), batch_size=1, precision=self.config.precision
        )

    def train_steps(self, steps: int) -> tuple[int, float]:
        """Train the first `steps` steps of an epoch and time them: what the bench and the sweep's
        time estimate measure. The steps are exactly an epoch's first ones (state reset, the first
        windows of the training data, the schedule's rate, clipping, the progress lines among them);
        then no validation or test. Returns (words trained, seconds, the device's work included);
        fewer words if the loss diverged at a progress line. The weights and the step count advance,
        the epoch count does not: the trainer is left mid-epoch, for more timing, not to go on with."""
        if not 1 <= steps <= self.steps_per_epoch:
            raise ValueError(f"steps {steps}: must be from 1 to the epoch's {self.steps_per_epoch}")
        started = time.perf_counter()
        words = self._train(steps)[1]
        return words, time.perf_counter() - started

    def _train(self, steps: int) -> tuple[float, int]:
        """The first `steps` steps of a pass over the training data (all of them: an epoch); returns
        (summed cross-entropy, predicted words). The loss stays on the device; the host reads it only
        at the progress steps and at the end."""
        config, model = self.config, self.model
        model.train()
        state = model.initial_state(config.batch_size)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        words_per_step = config.batch_size * config.num_steps
        tenths = PROGRESS_LINES + 1
        progress_steps = {max(1, round(self.steps_per_epoch * k / tenths)) for k in range(1, tenths)}
        started = time.perf_counter()
        windows = itertools.islice(batches(self.train_data, config.num_steps), steps)
        for index, (x, y) in enumerate(windows, start=1):
            lr = self.schedule.rate(self.epoch, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, state = self.take_step(x, y, detach(state))
            self.step += 1
            total += loss
            if index in progress_steps:
                seen = total.item()
                if not math.isfinite(seen):
                    return seen, index * words_per_step
                if self.progress:
                    elapsed = time.perf_counter() - started
                    self.progress(
                        EpochProgress(
                            self.epoch + 1,
                            index / self.steps_per_epoch,
                            perplexity(seen, index * words_per_step),
                            index * words_per_step / elapsed,
                        )
                    )
        return total.item(), steps * words_per_step

    def take_step(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One optimizer step on the window x, y [batch, steps] from `state` (cut from its graph), at
        the optimizer's learning rate: forward, cost, backward, clipping, update, by the config's
        `step` path. Returns the window's summed cross-entropy (0-d, on the device) and the state after it."""
        if self.fast_step is not None:
            return self.fast_step(x, y, state)
        logits, state = forward(self.model, x, state, self.config.precision)
        cost, loss = sequence_cost(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        cost.backward()
        self.clipper.clip_(self.parameters)
        self.optimizer.step()
        return loss.detach(), state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: restoring it continues exactly as if never stopped."""
        # Tensors and plain values only, so that it loads with torch.load(weights_only=True):
        # numpy's generator key (a uint32 array) goes as a tensor.
        generator, key, position, has_gauss, gauss = np.random.get_state()
        numpy_rng = (generator, torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss), float(gauss))
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_rng}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "clipper": self.clipper.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "diverged": self.diverged,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.clipper.load_state_dict(state["clipper"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        generator, key, position, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state((generator, key.numpy().astype(np.uint32), position, has_gauss, gauss))
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch, self.step, self.diverged = state["epoch"], state["step"], state["diverged"]


def set_threads(threads: int) -> None:
    """One intra-op thread per CPU this run owns; more only fight each other for the cores."""
    torch.set_num_threads(threads)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
