"""Train and evaluate one run of the Zaremba PTB LSTM, epoch by epoch.

    python -m study.train --preset small --data-dir ../shared/data/ptb --threads 2

The semantics are TF ptb_word_lm's (see design.md): cost summed over time steps and averaged over
the batch, state carried through an epoch and reset at its start, validation with the training batch
shape, test with batch size 1. `Trainer` is what a Ray Tune trial drives: `run_epoch()` returns the
epoch's metrics dict, `state_dict()` / `load_state_dict()` save and restore everything a resumed run
needs to continue exactly as if it had never stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from study import metrics as m
from study.train.clipping import Clipper
from study.config import PRESETS, Precision, TrainConfig, add_config_arguments, make_config, overrides_from_args
from study.train.data import DATA_ENV, Corpus, batchify, batches, load_corpus, num_batches
from study.errors import UsageError, main_with_errors
from study.train.model import LSTMLanguageModel, State
from study.storage import check_output_file
from study.train.schedules import make_schedule
from study.train.state import check_identity, read_state, run_identity, save_state
from study.tables import write_table

# Longest slice of the test stream fed to the LSTM at once: bounds the [1, chunk, vocab] logits.
TEST_CHUNK = 2048
# Progress lines (and the divergence check that shares their host sync) per epoch, as TF's tutorial.
PROGRESS_POINTS = 10


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


def forward(model: LSTMLanguageModel, x: torch.Tensor, state: State, precision: Precision) -> tuple[torch.Tensor, State]:
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


class Trainer:
    """One run: model, optimizer, schedule, clipper and data on one device."""

    def __init__(
        self,
        config: TrainConfig,
        corpus: Corpus,
        device: torch.device | str = "cpu",
        progress: Callable[[EpochProgress], None] | None = None,
    ):
        self.config = config
        self.device = torch.device(device)
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
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.diverged = False

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
        train_loss, train_words = self._train_epoch()
        train_seconds = time.perf_counter() - started
        train_ppl = perplexity(train_loss, train_words)
        self.diverged = not math.isfinite(train_ppl)
        valid_ppl = math.inf
        if not self.diverged:
            valid_ppl = evaluate(
                self.model, batches(self.valid_data, self.config.num_steps), self.config.batch_size, self.config.precision
            )
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

    def test(self) -> float:
        return evaluate(self.model, stream_windows(self.test_ids, TEST_CHUNK), batch_size=1, precision=self.config.precision)

    def _train_epoch(self) -> tuple[float, int]:
        """One pass over the training data; returns (summed cross-entropy, predicted words).
        The loss stays on the device; the host reads it only at the progress points."""
        config, model = self.config, self.model
        model.train()
        state = model.initial_state(config.batch_size)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        words_per_step = config.batch_size * config.num_steps
        checkpoints = {max(1, round(self.steps_per_epoch * k / PROGRESS_POINTS)) for k in range(1, PROGRESS_POINTS)}
        started = time.perf_counter()
        for index, (x, y) in enumerate(batches(self.train_data, config.num_steps), start=1):
            lr = self.schedule.rate(self.epoch, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            logits, state = forward(model, x, detach(state), config.precision)
            cost, loss = sequence_cost(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            cost.backward()
            self.clipper.clip_(self.parameters)
            self.optimizer.step()
            self.step += 1
            total += loss.detach()
            if index in checkpoints:
                seen = total.item()
                if not math.isfinite(seen):
                    return seen, index * words_per_step
                if self.progress:
                    elapsed = time.perf_counter() - started
                    self.progress(EpochProgress(
                        self.epoch + 1, index / self.steps_per_epoch,
                        perplexity(seen, index * words_per_step), index * words_per_step / elapsed,
                    ))
        return total.item(), self.steps_per_epoch * words_per_step

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


def epoch_line(result: dict[str, Any]) -> str:
    """One line per epoch, in the spirit of ptb_word_lm's output."""
    return (
        f"Epoch: {result[m.EPOCH]} Learning rate: {result[m.LR]:.3f} Train Perplexity: {result[m.TRAIN_PPL]:.3f} "
        f"Valid Perplexity: {result[m.VALID_PPL]:.3f} | {result[m.WORDS_PER_SEC]:.0f} wps, "
        f"clipped {result[m.CLIP_FRACTION]:.0%} of steps, {result[m.EPOCH_SECONDS]:.0f} s"
        + (" | DIVERGED" if result[m.DIVERGED] else "")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.train", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=list(PRESETS), help="starting configuration (default small)")
    parser.add_argument("--data-dir", help=f"folder with ptb.{{train,valid,test}}.txt (else ${DATA_ENV}, the cache, a download)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=available_cpus(), help="torch CPU threads (default: CPUs available)")
    parser.add_argument("--table", type=Path, help="write the per-epoch metrics to this Parquet file after every epoch")
    parser.add_argument("--save", type=Path, help="save the complete run state here after every epoch")
    parser.add_argument("--resume", type=Path, help="continue the run saved at this path (its configuration is used)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines within an epoch")
    add_config_arguments(parser)
    return parser.parse_args(argv)


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    set_threads(args.threads)
    for flag, path in (("--save", args.save), ("--table", args.table)):
        if path:
            check_output_file(path, flag)
    saved, saved_identity = read_state(args.resume) if args.resume else (None, None)
    if saved is not None:
        overrides = overrides_from_args(args)
        if overrides:
            raise UsageError(f"--resume continues the saved run's configuration; drop --{next(iter(overrides)).replace('_', '-')}")
        config = make_config(saved_identity["config"], where=str(args.resume))
    else:
        config = make_config(overrides_from_args(args), preset=args.preset, where="command line")
    device = select_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    corpus = load_corpus(args.data_dir)
    if note := corpus.dropped_note():
        print(note)
    identity = run_identity(config, corpus.sha256)
    if saved is not None:  # the configuration is the saved one: what can differ is the corpus
        check_identity(saved_identity, identity, str(args.resume))
    trainer = Trainer(config, corpus, device, progress=None if args.quiet else print)
    rows: list[dict[str, Any]] = []
    if saved is not None:
        trainer.load_state_dict(saved)
        rows = saved.get("rows", [])
        print(f"Resumed {args.resume} after epoch {trainer.epoch}")
    print(f"{args.preset if saved is None else 'resumed'} run on {device} with {args.threads} threads, "
          f"{trainer.steps_per_epoch} steps per epoch: {config.model_dump()}")
    for result in trainer.epochs():
        print(epoch_line(result))
        rows.append(result)
        if args.table:
            write_table(pd.DataFrame(rows), args.table, provenance={"config": config.model_dump(), "data": corpus.sha256})
        if args.save:
            save_state(args.save, {**trainer.state_dict(), "rows": rows}, identity)
    if m.TEST_PPL in rows[-1]:
        print(f"Test Perplexity: {rows[-1][m.TEST_PPL]:.3f}")
    return 0

