"""Scheduling overhead of a sweep: its wall time against the sum of its trials' own training time
at the sweep's concurrency.

    python benchmarks/sweep_overhead.py --data-dir ../shared/data/ptb        # the smoke study, ~1 minute

overhead = wall - (sum of trial seconds) / concurrency: what Ray Tune adds on top of training
(worker start, torch import, checkpoint uploads, ASHA bookkeeping, result syncing).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
import ray

from study.sweep.cli import options_from_args, parse_args
from study.sweep.tuner import run_sweep
from study.train.data import load_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="smoke")
    parser.add_argument("--data-dir")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        options = options_from_args(parse_args([args.space, "--storage", storage]))
        corpus = load_corpus(args.data_dir)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        run_sweep(options, corpus)
        wall = time.perf_counter() - started
        ray.shutdown()
        trials = pd.read_parquet(f"{options.experiment}/trials.parquet")
    concurrency = min(args.cpus // options.cpus_per_trial, len(trials))
    training = trials["seconds"].sum()
    ideal = training / concurrency
    print(
        f"{len(trials)} trials at concurrency {concurrency:g}: wall {wall:.1f} s, trials' own time {training:.1f} s "
        f"(ideal wall {ideal:.1f} s); overhead {wall - ideal:.1f} s = {(wall - ideal) / len(trials):.1f} s per trial"
    )


if __name__ == "__main__":
    main()
