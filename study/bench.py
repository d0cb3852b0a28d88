"""Training and evaluation speed of a preset on this machine, against its matrix-multiply peak.

    python -m study.bench --preset small --threads 2 --data-dir ../shared/data/ptb

Training words/s of the real training loop (the median of several timed windows), the PTB test set's evaluation
time (batch size 1, the whole set), and the share of the machine's float32 matmul peak (measured
here with a large square matmul) that training reaches, counting 3x the forward FLOPs per word
(forward, and backward for inputs and weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from study.config import PRESETS, make_config
from study.data import load_corpus
from study.errors import UsageError, main_with_errors
from study.train import Trainer, available_cpus, evaluate, select_device, set_threads, stream_windows, TEST_CHUNK


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Float32 FLOP/s of a [size, size] @ [size, size] product, the best of `repeats`."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_speed(trainer: Trainer, steps: int, windows: int) -> list[float]:
    """Words/s of `windows` consecutive windows of `steps` training steps each, through the trainer's
    own epoch loop, after a warm-up. Several windows, because a shared machine's speed drifts by
    10% and more from one minute to the next: their median and range say how much."""
    config, full = trainer.config, trainer.train_data
    speeds = []
    for count in [20] + [steps] * windows:  # the first pass warms up the allocator and oneDNN's kernels
        trainer.train_data = full[:, : count * config.num_steps + 1]  # [batch, count steps + 1]
        trainer.steps_per_epoch = count
        started = time.perf_counter()
        trainer._train_epoch()
        speeds.append(count * config.batch_size * config.num_steps / (time.perf_counter() - started))
    return speeds[1:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.bench", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--data-dir", help="folder with ptb.{train,valid,test}.txt")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed window (default 50)")
    parser.add_argument("--windows", type=int, default=6, help="timed windows (default 6)")
    return parser.parse_args(argv)


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag in ("threads", "steps", "windows"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    set_threads(args.threads)
    device = select_device(args.device)
    config = make_config({}, preset=args.preset)
    corpus = load_corpus(args.data_dir)
    trainer = Trainer(config, corpus, device)
    peak = matmul_peak(device)
    speeds = training_speed(trainer, min(args.steps, trainer.steps_per_epoch), args.windows)
    words_per_sec = statistics.median(speeds)
    started = time.perf_counter()
    test_ppl = evaluate(trainer.model, stream_windows(trainer.test_ids, TEST_CHUNK), batch_size=1)
    test_seconds = time.perf_counter() - started
    flops_per_word = 3 * trainer.model.flops_per_word()
    achieved = words_per_sec * flops_per_word
    print(f"preset {args.preset} on {device}, {args.threads} threads")
    print(f"training:   {words_per_sec:,.0f} words/s, median of {len(speeds)} windows of {args.steps} steps "
          f"(range {min(speeds):,.0f}-{max(speeds):,.0f}); {flops_per_word / 1e6:.1f} MFLOP/word -> {achieved / 1e9:.1f} GFLOP/s")
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s (float32 2048x2048); training reaches {achieved / peak:.0%} of it")
    print(f"test set:   {len(trainer.test_ids):,} words evaluated in {test_seconds:.1f} s at batch size 1 "
          f"({(len(trainer.test_ids) - 1) / test_seconds:,.0f} words/s; untrained perplexity {test_ppl:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
