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
from study.config import PRESETS, TrainConfig, add_config_arguments, make_config, overrides_from_args
from study.errors import UsageError, main_with_errors
from study.storage import check_output_file
from study.tables import write_table
from study.train.data import DATA_ENV, load_corpus
from study.train.state import StateError, check_identity, load_into, read_state, run_identity, save_state
from study.train.trainer import Trainer, available_cpus, select_device, set_threads

STEP_WORDS = {  # Trainer.step_path, as the start line says it
    "plain": "plain step",
    "fast": "fast step (its softmax on the compiled row kernel)",
    "fast-ops": "fast step (its softmax in PyTorch ops: the compiled kernel is off or does not build here)",
}


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
        "--preset",
        choices=list(PRESETS),
        help="starting configuration (default small; with --resume, the saved run's, which it must match)",
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
        if args.preset is not None:
            check_preset(args.preset, saved, config, args.resume)
    else:
        config = make_config(overrides_from_args(args), preset=args.preset or "small", where="command line")
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
    preset = args.preset or "small"  # kept in the states it writes, for `check_preset`
    if saved is not None:
        load_into(trainer, saved, str(args.resume))
        rows = saved_rows(saved, trainer.epoch, str(args.resume))
        preset = saved.get("preset") if isinstance(saved.get("preset"), str) else None
        print(f"Resumed {args.resume} after epoch {trainer.epoch}")
        if trainer.finished:  # a finished run's state, or a trial's last checkpoint: said, not an error
            ended = "diverged" if trainer.diverged else f"finished its {config.epochs} epoch{'s' * (config.epochs > 1)}"
            test = rows[-1].get(m.TEST_PPL) if rows else None
            test = f" (test perplexity {test:.3f})" if isinstance(test, float) else ""
            print(f"{args.resume}: the run {ended}{test}; nothing is left to train")
            return 0
    print(
        f"{preset if saved is None else 'resumed'} run on {device} with {args.threads} threads, "
        f"{trainer.steps_per_epoch} steps per epoch, {STEP_WORDS[trainer.step_path]}: {config.model_dump()}"
    )
    for result in trainer.epochs():
        print(epoch_line(result))
        rows.append(result)
        if args.table:
            write_table(
                pd.DataFrame(rows), args.table, provenance={"config": config.model_dump(), "data": corpus.sha256}
            )
        if args.save:
            save_state(args.save, {**trainer.state_dict(), "rows": rows, "preset": preset}, identity)
    if m.TEST_PPL in rows[-1]:
        print(f"Test Perplexity: {rows[-1][m.TEST_PPL]:.3f}")
    return 0


def check_preset(preset: str, saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse `--preset` with `--resume` when the saved run is not that preset's: the one it was
    started with, where the state says (study.train writes it), else its settings."""
    started = saved.get("preset")
    if isinstance(started, str):
        if started != preset:
            raise UsageError(
                f"--preset {preset}: {path} holds a run started with --preset {started}; "
                "--resume continues it as saved: drop --preset"
            )
        return
    theirs, ours = config.model_dump(), PRESETS[preset].model_dump()
    for key in theirs:
        if theirs[key] != ours.get(key):
            raise UsageError(
                f"--preset {preset}: {path} holds another run ({key}={theirs[key]!r}, preset {preset} has "
                f"{key}={ours.get(key)!r}); --resume continues it as saved: drop --preset"
            )


def saved_rows(saved: dict[str, Any], epoch: int, where: str) -> list[dict[str, Any]]:
    """The per-epoch metrics saved with a state: one plain dict per epoch trained, or none (a
    trial's checkpoint keeps its metrics in Ray's files)."""
    rows = saved.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows) or len(rows) not in (0, epoch):
        raise StateError(f"{where}: its metrics are not one row per epoch trained ({epoch}); not used")
    return list(rows)
