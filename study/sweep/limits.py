"""Sizes a sweep cannot work with, refused before Ray starts: too many trials, a trial too large
for any node's memory.

    python -m study.sweep smoke --num-samples 1000000000000     # error: ... at most 10,000 trials in one sweep
    python -m study.sweep big.yaml --dry-run                    # a grid hidden_size of 5e7: error: ... needs about 1.6 PB

Ray Tune creates every trial of a sweep as an object in the driver and a record in its state
file, so `--num-samples 10**12` would hang creating them: a sweep holds at most MAX_TRIALS. A
trial's memory is estimated from its run config: the parameters (the embedding and the softmax
layer are vocabulary x hidden_size each, every LSTM layer 8 x hidden_size**2), held as weights,
gradients, a momentum buffer when momentum > 0 and the copies a checkpoint makes while it is
encoded; the activations kept for backprop (per word of a batch: the embedding, each layer's
gates and cell, the logits, their softmax and its gradient); and a worker's own footprint (torch,
Ray). The largest trial of the space must fit in the memory of one node: this machine's (its
cgroup limit where lower) for a local Ray, each live node's for a cluster (Ray's resources).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

from study.config import TrainConfig
from study.errors import UsageError
from study.sweep.spaces import Space

MAX_TRIALS = 10_000  # grad_clip has 64; a random search of 10,000 draws is already days of work
PTB_VOCABULARY = 10_000  # the vocabulary when the corpus is not loaded yet (a dry run)
WORKER_BYTES = 600 * 2**20  # a trial's process before its model: Python, torch, Ray's worker
# The settings a trial's memory depends on (the vocabulary comes from the corpus).
SIZE_KEYS = ("num_layers", "hidden_size", "num_steps", "batch_size", "momentum", "precision")


def check_trial_count(trials: int, where: str) -> None:
    """Refuse a sweep of more than MAX_TRIALS trials; `where` names what set the count."""
    if trials > MAX_TRIALS:
        raise UsageError(
            f"{where}: {trials:,} trials, allowed: at most {MAX_TRIALS:,} in one sweep "
            "(Ray Tune keeps every trial in the driver's memory and its state file)"
        )


def parameter_count(config: TrainConfig, vocab_size: int) -> int:
    """Weights of the model: embedding, LSTM layers (4 gates over [input; state], two biases), softmax."""
    h = config.hidden_size
    return vocab_size * h + config.num_layers * (4 * h * 2 * h + 2 * 4 * h) + h * vocab_size + vocab_size


def trial_bytes(config: TrainConfig, vocab_size: int) -> int:
    """About the most memory one trial of `config` holds at once, in bytes (float32 throughout)."""
    parameters = parameter_count(config, vocab_size)
    copies = 2 + (config.momentum > 0) + 3  # weights, gradients, momentum buffer, a checkpoint being encoded
    copies += 0.5 * (config.precision == "bf16")  # autocast's bfloat16 copy of the weights
    h, words = config.hidden_size, config.num_steps * config.batch_size
    activations = words * (2 * h + config.num_layers * 8 * h + 3 * vocab_size)
    return int(4 * (copies * parameters + activations)) + WORKER_BYTES


def size_variants(space: Space) -> list[dict[str, Any]]:
    """The distinct combinations of SIZE_KEYS the space's trials take, each value varied at its
    largest where it is drawn (memory grows with each of them); every trial is one of these."""
    options = []
    for key, spec in space.vary.items():
        kind, values = next(iter(spec.items()))
        if kind == "cases":
            found = [{name: case[name] for name in case if name in SIZE_KEYS} for case in values]
        elif key not in SIZE_KEYS:
            found = [{}]
        elif kind in ("grid", "choice"):
            found = [{key: value} for value in values]
        else:  # uniform, loguniform (momentum) or randint (sizes; its high is excluded)
            found = [{key: values[1] - 1 if kind == "randint" else values[1]}]
        options.append(list({json.dumps(item, sort_keys=True): item for item in found}.values()))
    return [dict(item for part in combo for item in part.items()) for combo in itertools.product(*options)]


def largest_trial(space: Space, vocab_size: int, base_only: bool = False) -> tuple[int, TrainConfig]:
    """(bytes, config) of the space's largest trial; `base_only`: of its base run (the plan times it)."""
    base = space.base_config()
    configs = [base] if base_only else [base.model_copy(update=sizes) for sizes in size_variants(space)]
    return max(((trial_bytes(config, vocab_size), config) for config in configs), key=lambda pair: pair[0])


def machine_memory() -> int:
    """Bytes of memory of this machine, or of its cgroup (a container's limit) where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_memory(
    space: Space, vocab_size: int, memory: list[float], where: str = "the largest node", base_only: bool = False
) -> None:
    """Refuse a space whose largest trial needs more than the most `memory` (bytes per node; 0:
    unknown) offers, naming the trial's sizes."""
    most = max(memory, default=0)
    if not most:
        return
    need, config = largest_trial(space, vocab_size, base_only)
    if need <= most:
        return
    sizes = ", ".join(f"{key} {getattr(config, key)}" for key in SIZE_KEYS[:4])
    what = "its base run (timed here for the plan)" if base_only else "a trial"
    raise UsageError(
        f"{space.path}: {what} with {sizes} and a vocabulary of {vocab_size:,} words needs about "
        f"{format_bytes(need)} of memory ({parameter_count(config, vocab_size):,} parameters), and {where} "
        f"has {format_bytes(most)}; allowed: trials that fit (a smaller hidden_size, num_layers or batch)"
    )


def format_bytes(count: float) -> str:
    """'512 MB', '23.5 GB', '1.6 PB' (powers of 1024, as memory is sold)."""
    units = ("bytes", "KB", "MB", "GB", "TB", "PB", "EB")
    power = min(int(math.log(max(count, 1), 1024)), len(units) - 1)
    value = count / 1024**power
    return f"{value:.0f} {units[power]}" if value >= 100 or power == 0 else f"{value:.1f} {units[power]}"
