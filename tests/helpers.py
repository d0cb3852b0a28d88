"""Helpers that several test modules use: a tiny corpus, sweeps run in-process or as a command,
fake experiment folders. (Test modules import from here, never from each other.)"""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from study import metrics as m
from study.sweep.cli import options_from_args, parse_args
from study.sweep.tuner import run_sweep

_TINY_WORDS = ("the", "cat", "dog", "sat", "ran", "on", "a", "mat", "and", "<unk>", "N", "big")
HIDDEN = ("cell", "stop")  # keys of fake_experiment's trial dicts that are not settings


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """The process's output once it ends; killed (never left behind) if it outlives `timeout`."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def run_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def sweep(args: list[str], corpus, callbacks=None):
    options = options_from_args(parse_args(args))
    return options, run_sweep(options, corpus, callbacks).results


def empty_experiment(folder: Path) -> Path:
    """An experiment before any trial was created: study.json and Ray's state with no trials."""
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"space": "empty", "varied": ["max_grad_norm"], "epochs": 2}))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [], "runner_data": {}, "stats": {}})
    )
    return folder


def fake_experiment(folder: Path, vary: str, trials: list[dict], epochs: int, stopped_after: int | None = None) -> Path:
    """An experiment folder of `trials` (their configs): validation perplexity by formula, falling
    with the epochs, plus a trial's "cell" offset; a trial with "stop" ends after `stopped_after`
    epochs, as ASHA stops a trial ("cell" and "stop" are not settings)."""
    folder.mkdir()
    varied = [key for key in trials[0] if key not in HIDDEN and len({json.dumps(t.get(key)) for t in trials}) > 1]
    space = f"description: {folder.name}\npreset: test\nvary:\n{vary}\n"
    study = {"space": folder.name, "space_text": space, "preset": "test", "epochs": epochs, "varied": varied}
    (folder / "study.json").write_text(json.dumps(study))
    entries = []
    for index, config in enumerate(trials):
        trial_id, offset, last = f"t{index:02d}", config.get("cell", 0), stopped_after if config.get("stop") else epochs
        config = {k: v for k, v in config.items() if k not in HIDDEN} | {"epochs": epochs}
        (folder / trial_id).mkdir()
        lines = []
        for epoch in range(1, last + 1):
            valid = (
                100
                + 10 * config.get("momentum", 0)
                + 5 * config.get("seed", 0)
                + 7 * config.get("learning_rate", 0)
                + 20 / epoch
            )
            valid += {"value": 3, "none": 9}.get(config.get("clip_mode"), 0) + offset
            report = {
                m.EPOCH: epoch,
                m.VALID_PPL: valid,
                m.DIVERGED: False,
                m.GRAD_NORM_P50: 1.0 + epoch,
                m.GRAD_NORM_P90: 2.0 + epoch,
                m.CLIP_FRACTION: 0.1,
                m.EPOCH_SECONDS: 1.0,
            }
            lines.append(json.dumps(report | ({m.TEST_PPL: valid - 4} if epoch == epochs else {})))
        (folder / trial_id / "result.json").write_text("\n".join(lines) + "\n")
        trial = {"trial_id": trial_id, "status": "TERMINATED", "config": config, "relative_logdir": trial_id}
        entries.append([json.dumps(trial), json.dumps({})])
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    return folder


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def tiny_text() -> dict[str, str]:
    """Three splits in PTB's layout (" w w w \\n" lines): 400 / 120 / 120 words of 12 kinds.

    Deterministic. The valid file holds one "zebra", a word train lacks (dropped by the reader),
    so that a test can count it. Large enough for the `test` preset (batch 4 x 5 steps).
    """
    rng = random.Random(0)

    def lines(words: int) -> list[str]:
        out, left = [], words
        while left:
            n = min(left, rng.randint(4, 12))
            out.append(" " + " ".join(rng.choice(_TINY_WORDS) for _ in range(n)) + " \n")
            left -= n
        return out

    valid = lines(119)
    valid[0] = " zebra" + valid[0]
    return {"ptb.train.txt": "".join(lines(400)), "ptb.valid.txt": "".join(valid), "ptb.test.txt": "".join(lines(120))}


def sweep_args(space, storage, data_dir, address: str, *extra: str) -> list[str]:
    """The command line of a sweep of `space` into `storage` on the Ray at `address`."""
    return [str(space), "--storage", str(storage), "--data-dir", str(data_dir), "--address", address, *extra]


def record_turns(trainers, setting: str) -> list:
    """Wrap each trainer's train_steps to append its config's `setting` to the list returned, in
    the order the trainers are called (to see the bench take turns)."""
    order = []
    for trainer in trainers:
        steps = trainer.train_steps
        trainer.train_steps = lambda count, steps=steps, trainer=trainer: (
            order.append(getattr(trainer.config, setting)) or steps(count)
        )
    return order


def sweep_until_first_result(args: list[str], experiment: Path, timeout: float) -> subprocess.Popen:
    """`python -m study.sweep *args` started, returned once a trial of `experiment` has reported an
    epoch (or `timeout` seconds passed)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "study.sweep", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    while not list(experiment.glob("*/result.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    return process
