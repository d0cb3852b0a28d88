"""Train and evaluate one run of the Zaremba PTB LSTM, epoch by epoch.

    python -m study.train --preset small --data-dir ../shared/data/ptb --threads 2

The command line of the train wing: flags from the run configuration (study/config.py) and the
run's own (data, device, threads, table, saved state); the training itself is study/train/trainer.py.
It prints the configuration, the progress lines, one line per epoch and the test perplexity.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from study import metrics as m
from study.config import PRESETS, add_config_arguments, make_config, overrides_from_args
from study.errors import UsageError, main_with_errors
from study.storage import check_output_file
from study.tables import write_table
from study.train.data import DATA_ENV, load_corpus
from study.train.state import check_identity, read_state, run_identity, save_state
from study.train.trainer import Trainer, available_cpus, select_device, set_threads


def epoch_line(result: dict[str, Any]) -> str:
    """One line per epoch, in the spirit of ptb_word_lm's output."""
    return (
        f"Epoch: {result[m.EPOCH]} Learning rate: {result[m.LR]:.3f} Train Perplexity: {result[m.TRAIN_PPL]:.3f} "
        f"Valid Perplexity: {result[m.VALID_PPL]:.3f} | {result[m.WORDS_PER_SEC]:.0f} wps, "
        f"clipped {result[m.CLIP_FRACTION]:.0%} of steps, {result[m.EPOCH_SECONDS]:.0f} s"
        + (" | DIVERGED" if result[m.DIVERGED] else "")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.train", allow_abbrev=False, description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--preset", default="small", choices=list(PRESETS), help="starting configuration (default small)"
    )
    parser.add_argument(
        "--data-dir", help=f"folder with ptb.{{train,valid,test}}.txt (else ${DATA_ENV}, the cache, a download)"
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available"
    )
    parser.add_argument(
        "--threads", type=int, default=available_cpus(), help="torch CPU threads (default: CPUs available)"
    )
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
            raise UsageError(
                f"--resume continues the saved run's configuration; drop --{next(iter(overrides)).replace('_', '-')}"
            )
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
    print(
        f"{args.preset if saved is None else 'resumed'} run on {device} with {args.threads} threads, "
        f"{trainer.steps_per_epoch} steps per epoch: {config.model_dump()}"
    )
    for result in trainer.epochs():
        print(epoch_line(result))
        rows.append(result)
        if args.table:
            write_table(
                pd.DataFrame(rows), args.table, provenance={"config": config.model_dump(), "data": corpus.sha256}
            )
        if args.save:
            save_state(args.save, {**trainer.state_dict(), "rows": rows}, identity)
    if m.TEST_PPL in rows[-1]:
        print(f"Test Perplexity: {rows[-1][m.TEST_PPL]:.3f}")
    return 0
