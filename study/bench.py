"""Training and evaluation speed of a preset on this machine, against its matrix-multiply peak.

    python -m study.bench --preset small --threads 1 --data-dir ../shared/data/ptb --step both --precision both

Training words/s of the real training loop (the median of several timed windows), the PTB test set's evaluation
time (batch size 1, the whole set), and the share of the machine's matmul peak in the run's precision
(measured here with a large square matmul) that training reaches, counting 3x the forward FLOPs per
word (forward, and backward for inputs and weights). Beside wall time, each window's process CPU time
and minor page faults (getrusage): on a shared machine CPU time drifts far less than wall time, and
the faults count the fresh memory a step touches. `--step both` trains the plain (autograd
reference) and the fast step, `--step all` adds the fast step on PyTorch ops in place of its
compiled softmax kernel (fast-ops), `--precision both` an fp32 and a bf16 run, all taking turns
window by window, so that every run sees the same drift of a shared machine's speed; the ratios are
printed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from study.config import PRESETS, make_config
from study.errors import UsageError, main_with_errors
from study.train import Trainer, available_cpus, load_corpus, select_device, set_threads

PRECISIONS = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16")}  # --precision -> the runs timed
STEPS = {"fast": ("fast",), "plain": ("plain",), "both": ("plain", "fast"), "all": ("plain", "fast-ops", "fast")}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Window:
    """One timed window of training steps."""

    words: int
    seconds: float  # wall clock, the device's work included
    cpu_seconds: float  # this process's CPU time, all its threads
    faults: int  # minor page faults: fresh pages the process touched

    @property
    def words_per_sec(self) -> float:
        return self.words / self.seconds


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


def timed_windows(trainers: list[Trainer], steps: int, windows: int) -> list[list[Window]]:
    """`windows` windows of `steps` training steps for each trainer, each window an epoch's first
    steps (Trainer.train_steps), after a warm-up; the trainers take turns window by window. Several
    windows, because a shared machine's speed drifts by 10% and more from one minute to the next:
    their median and range say how much, and taking turns puts every trainer through the same drift."""
    warmup = min(20, trainers[0].steps_per_epoch)  # a pass that warms up the allocator and oneDNN's kernels
    timed: list[list[Window]] = [[] for _ in trainers]
    for count in [warmup] + [steps] * windows:
        for trainer, own in zip(trainers, timed):
            faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
            words, seconds = trainer.train_steps(count)
            cpu_seconds = time.process_time() - cpu
            own.append(Window(words, seconds, cpu_seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return [own[1:] for own in timed]


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
    parser.add_argument(
        "--step",
        help="the training step: fast, plain (the autograd reference), both taking turns window by window, "
        "or all: both and the fast step on PyTorch ops instead of its compiled kernel (default: the preset's, fast)",
    )
    return parser.parse_args(argv)


def ratio_line(name: str, slower: list[Window], faster: list[Window]) -> str:
    """How much faster `faster` ran than `slower`, by CPU time and by wall time, window by window."""
    by_cpu = [s.cpu_seconds / s.words / (f.cpu_seconds / f.words) for s, f in zip(slower, faster)]
    by_wall = [f.words_per_sec / s.words_per_sec for s, f in zip(slower, faster)]
    return (
        f"{name}: {statistics.median(by_cpu):.2f}x by CPU time (window by window {min(by_cpu):.2f}-{max(by_cpu):.2f}x), "
        f"{statistics.median(by_wall):.2f}x words/s ({min(by_wall):.2f}-{max(by_wall):.2f}x)"
    )


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag in ("threads", "steps", "windows"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision {args.precision}: choose one of {', '.join(PRECISIONS)}")
    step = args.step or PRESETS[args.preset].step
    if step not in STEPS:
        raise UsageError(f"--step {step}: choose one of {', '.join(STEPS)}")
    set_threads(args.threads)
    device = select_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    corpus = load_corpus(args.data_dir)
    runs = [(precision, path) for precision in PRECISIONS[args.precision] for path in STEPS[step]]
    trainers = [
        Trainer(
            make_config({"precision": precision, "step": path.removesuffix("-ops")}, preset=args.preset),
            corpus,
            device,
            row_kernel=path == "fast",
        )
        for precision, path in runs
    ]
    steps = min(args.steps, trainers[0].steps_per_epoch)
    timed = dict(zip(runs, timed_windows(trainers, steps, args.windows)))
    flops_per_word = 3 * trainers[0].model.flops_per_word()
    labelled = len(runs) > 1
    both = {"fp32": "", "bf16": ", bf16 autocast", "both": ", fp32 and bf16"}[args.precision]
    paths = {"fast": "", "plain": ", plain step", "both": ", plain and fast steps", "all": ", plain and fast steps"}[
        step
    ]
    turns = ", taking turns window by window" if labelled else ""
    print(f"preset {args.preset} on {device}, {args.threads} threads{both}{paths}{turns}")
    kernels = {t.step_path for t, (_, path) in zip(trainers, runs) if path == "fast"}
    if kernels:
        print(
            "fast step's softmax: " + ("compiled row kernel" if kernels == {"fast"} else "PyTorch ops (no kernel here)")
        )
    for precision in PRECISIONS[args.precision]:
        peak = matmul_peak(device, DTYPES[precision])
        for path in STEPS[step]:
            own = timed[precision, path]
            label = f" {precision} {path}" if labelled else ""
            words_per_sec = statistics.median(w.words_per_sec for w in own)
            achieved = words_per_sec * flops_per_word
            per_step = [w.cpu_seconds * 1e3 / steps for w in own]
            print(
                f"training{label}:{'' if labelled else '  '} {words_per_sec:,.0f} words/s, median of {len(own)} windows of {steps} steps "
                f"(range {min(w.words_per_sec for w in own):,.0f}-{max(w.words_per_sec for w in own):,.0f}); "
                f"CPU {statistics.median(per_step):.1f} ms per step ({min(per_step):.1f}-{max(per_step):.1f}); "
                f"{statistics.median(w.faults / steps for w in own):,.0f} page faults per step; "
                f"{flops_per_word / 1e6:.1f} MFLOP/word -> {achieved / 1e9:.1f} GFLOP/s, {achieved / peak:.0%} of the peak"
            )
        label = f" {precision}" if labelled else ""
        print(
            f"matmul peak{label}: {peak / 1e9:.1f} GFLOP/s ({str(DTYPES[precision]).removeprefix('torch.')} 2048x2048)"
        )
    if len(STEPS[step]) > 1:
        pairs = [("plain", "fast")] + ([("plain", "fast-ops"), ("fast-ops", "fast")] if step == "all" else [])
        for precision in PRECISIONS[args.precision]:
            for slower, faster in pairs:
                print(
                    ratio_line(f"{faster} / {slower} {precision}", timed[precision, slower], timed[precision, faster])
                )
    if len(PRECISIONS[args.precision]) > 1:
        for path in STEPS[step]:
            name = "bf16 / fp32" + (f" {path}" if len(STEPS[step]) > 1 else "")
            print(ratio_line(name, timed["fp32", path], timed["bf16", path]))
    for precision in PRECISIONS[args.precision]:  # evaluation is one path, whichever the step
        trainer = trainers[runs.index((precision, STEPS[step][0]))]
        started = time.perf_counter()
        test_ppl = trainer.test()
        seconds, words = time.perf_counter() - started, len(trainer.test_ids)
        label = f" {precision}" if len(PRECISIONS[args.precision]) > 1 else ""
        print(
            f"test set{label}:{'' if label else '  '} {words:,} words evaluated in {seconds:.1f} s at batch size 1 "
            f"({(words - 1) / seconds:,.0f} words/s; untrained perplexity {test_ppl:.0f})"
        )
    return 0


if __name__ == "__main__":
    from study.loading import loaded

    loaded()  # a Ctrl-C from here on is the bench's to handle (study/loading.py)
    sys.exit(main())
