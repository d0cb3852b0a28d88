"""Training and evaluation speed of a preset on this machine, against its matrix-multiply peak.

    python -m study.bench --preset small --threads 2 --data-dir ../shared/data/ptb --precision both

Training words/s of the real training loop (the median of several timed windows), the PTB test set's evaluation
time (batch size 1, the whole set), and the share of the machine's matmul peak in the run's precision
(measured here with a large square matmul) that training reaches, counting 3x the forward FLOPs per
word (forward, and backward for inputs and weights). `--precision both` trains an fp32 and a bf16 run
taking turns window by window, so that both see the same drift of a shared machine's speed, and
prints their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from study.config import PRESETS, make_config
from study.errors import UsageError, main_with_errors
from study.train import Trainer, available_cpus, load_corpus, select_device, set_threads

PRECISIONS = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16")}  # --precision -> the runs timed
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a [size, size] @ [size, size] product in `dtype`, the best of `repeats`."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 2):
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_speeds(trainers: list[Trainer], steps: int, windows: int) -> list[list[float]]:
    """Words/s of `windows` windows of `steps` training steps for each trainer, each window an
    epoch's first steps (Trainer.train_steps), after a warm-up; the trainers take turns window by
    window. Several windows, because a shared machine's speed drifts by 10% and more from one minute
    to the next: their median and range say how much, and taking turns puts every trainer through
    the same drift."""
    warmup = min(20, trainers[0].steps_per_epoch)  # a pass that warms up the allocator and oneDNN's kernels
    speeds: list[list[float]] = [[] for _ in trainers]
    for count in [warmup] + [steps] * windows:
        for trainer, own in zip(trainers, speeds):
            words, seconds = trainer.train_steps(count)
            own.append(words / seconds)
    return [own[1:] for own in speeds]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.bench", allow_abbrev=False, description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", default="small", choices=list(PRESETS))
    parser.add_argument("--data-dir", help="folder with ptb.{train,valid,test}.txt")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=50, help="training steps per timed window (default 50)")
    parser.add_argument("--windows", type=int, default=6, help="timed windows (default 6)")
    parser.add_argument(
        "--precision", default="fp32", help="fp32, bf16, or both taking turns window by window (default fp32)"
    )
    return parser.parse_args(argv)


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag in ("threads", "steps", "windows"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision {args.precision}: choose one of {', '.join(PRECISIONS)}")
    set_threads(args.threads)
    device = select_device(args.device)
    corpus = load_corpus(args.data_dir)
    precisions = PRECISIONS[args.precision]
    trainers = [Trainer(make_config({"precision": p}, preset=args.preset), corpus, device) for p in precisions]
    steps = min(args.steps, trainers[0].steps_per_epoch)
    speeds = training_speeds(trainers, steps, args.windows)
    flops_per_word = 3 * trainers[0].model.flops_per_word()
    both = len(precisions) > 1
    setting = {"fp32": "", "bf16": ", bf16 autocast", "both": ", fp32 and bf16 taking turns window by window"}
    print(f"preset {args.preset} on {device}, {args.threads} threads{setting[args.precision]}")
    for precision, own in zip(precisions, speeds):
        words_per_sec = statistics.median(own)
        achieved = words_per_sec * flops_per_word
        peak = matmul_peak(device, DTYPES[precision])
        label = f" {precision}" if both else ""
        print(
            f"training{label}:{'' if both else '  '} {words_per_sec:,.0f} words/s, median of {len(own)} windows of {steps} steps "
            f"(range {min(own):,.0f}-{max(own):,.0f}); {flops_per_word / 1e6:.1f} MFLOP/word -> {achieved / 1e9:.1f} GFLOP/s"
        )
        print(
            f"matmul peak{label}: {peak / 1e9:.1f} GFLOP/s ({str(DTYPES[precision]).removeprefix('torch.')} 2048x2048); "
            f"training reaches {achieved / peak:.0%} of it"
        )
    if both:
        pairs = [bf16 / fp32 for fp32, bf16 in zip(*speeds)]
        print(
            f"bf16 / fp32: {statistics.median(speeds[1]) / statistics.median(speeds[0]):.2f}x words/s "
            f"(window by window {min(pairs):.2f}-{max(pairs):.2f}x)"
        )
    for precision, trainer in zip(precisions, trainers):
        started = time.perf_counter()
        test_ppl = trainer.test()
        seconds, words = time.perf_counter() - started, len(trainer.test_ids)
        label = f" {precision}" if both else ""
        print(
            f"test set{label}:{'' if both else '  '} {words:,} words evaluated in {seconds:.1f} s at batch size 1 "
            f"({(words - 1) / seconds:,.0f} words/s; untrained perplexity {test_ppl:.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
