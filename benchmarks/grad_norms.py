"""What exact gradient norms cost: training words/s with study's norms (float32 norms of 256-element
blocks added in float64, study.train.clipping.squared_norms) against torch's float32 norm kernels on
whole tensors (~1e-3 low on PTB's 2M-element softmax gradient), taking turns window by window in one process so that both see the same drift;
then the time of the clipping call alone, which drifts less.

    python benchmarks/grad_norms.py --data-dir ../shared/data/ptb --threads 2      # ~2 minutes
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import study.train.clipping
from study.config import make_config
from study.train import Trainer, load_corpus, set_threads

EXACT = study.train.clipping.squared_norms


def float32_kernel_squared_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The norms as study computed them before: torch's float32 kernels, squared."""
    return torch.stack(torch._foreach_norm(grads)).double().square()


VARIANTS = {"exact (block sums)": EXACT, "float32 kernels": float32_kernel_squared_norms}


def window(trainer: Trainer, steps: int) -> float:
    """Words/s of an epoch's first `steps` training steps."""
    words, seconds = trainer.train_steps(steps)
    return words / seconds


def clip_seconds(trainer: Trainer, repeats: int) -> dict[str, float]:
    """Median seconds of one `Clipper.clip_` call on the trainer's real gradients, per variant,
    taking turns call by call (the threshold is far above the norm: nothing is scaled)."""
    clipper = study.train.clipping.Clipper("global_norm", 1e9, capacity=2 * repeats * len(VARIANTS))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, squared_norms in VARIANTS.items():
            study.train.clipping.squared_norms = squared_norms
            started = time.perf_counter()
            clipper.clip_(trainer.parameters)
            times[name].append(time.perf_counter() - started)
    study.train.clipping.squared_norms = EXACT
    return {name: statistics.median(own) for name, own in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="steps per window")
    parser.add_argument("--windows", type=int, default=8, help="windows per variant")
    args = parser.parse_args()
    set_threads(args.threads)
    trainer = Trainer(
        make_config({"step": "plain"}, preset=args.preset), load_corpus(args.data_dir)
    )  # the plain step: its dense gradients are what both norms read
    steps = min(args.steps, trainer.steps_per_epoch)
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    window(trainer, min(20, trainer.steps_per_epoch))  # warm-up
    for _ in range(args.windows):
        for name, squared_norms in VARIANTS.items():
            study.train.clipping.squared_norms = squared_norms
            speeds[name].append(window(trainer, steps))
    study.train.clipping.squared_norms = EXACT
    print(f"preset {args.preset}, {args.threads} threads, {args.windows} windows of {steps} steps each, taking turns")
    for name, own in speeds.items():
        print(f"{name:>22}: {statistics.median(own):,.0f} words/s median (range {min(own):,.0f}-{max(own):,.0f})")
    ratios = [a / b for a, b in zip(*speeds.values())]
    print(f"exact / float32: {statistics.median(ratios):.3f} (window by window {min(ratios):.3f}-{max(ratios):.3f})")
    for name, seconds in clip_seconds(trainer, repeats=200).items():
        print(f"{name:>22}: {seconds * 1e3:.2f} ms per clip_ call (median of 200, on the real gradients)")


if __name__ == "__main__":
    main()
