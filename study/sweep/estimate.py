"""How long a study will take: its trial-epochs, this machine's seconds per epoch, the wall time.

    python -m study.sweep grad_clip --dry-run --data-dir ../shared/data/ptb   # the plan prints this estimate

    counts = trial_epochs(space, epochs=13, num_samples=1)      # grad_clip: 832 full grid, 592 with ASHA
    timing = calibration(space.base_config(), corpus, threads=1, device="cpu")   # seconds per epoch, cached
    print("\\n".join(estimate_lines(counts, timing, concurrency=2)))

Trial-epochs with ASHA are an expectation: at each rung 1/reduction_factor of the trials that reach
it go on (ASHA's ideal; early arrivals at a rung always go on, so real sweeps run somewhat more).
The calibration trains a handful of steps of the study's base run (preset + fixed settings) on the
loaded corpus with the trial's thread count, after as many steps of warm-up, and converts them to
seconds per epoch: steps per epoch x seconds per step + the validation pass. The test pass at the
end of a completed trial (under 3% of a trial on PTB) is left out. Results are cached per machine
and run shape in `$XDG_CACHE_HOME/study/calibration.json` (else ~/.cache/...), so a second plan is instant.
The cache is read as data from disk, never trusted: an entry whose values are not plausible
seconds and counts (text, NaN, infinite, negative, 1e308 s, steps x step time that do not add up)
is timed afresh with one warning line, and a cache that cannot be written never stops a sweep.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from study.config import TrainConfig
from study.errors import StorageError
from study.storage import write_bytes
from study.sweep.spaces import AshaSettings, Space
from study.train import Corpus, Trainer, cache_dir, num_batches, set_threads

CACHE_FILE = "calibration.json"
TIMED_STEPS = 16  # per timed pass; as many again warm up (allocations, thread pool, first calls)


@dataclass(frozen=True)
class TrialEpochs:
    """A study's planned work, in epochs of one trial."""

    trials: int
    epochs: int  # per trial, ASHA's max_t
    asha: float  # expected trial-epochs with ASHA's stops
    rungs: tuple[int, ...]
    reduction_factor: float
    shared_saved: int = 0  # trial-epochs that shared prefixes train once instead of per trial

    @property
    def full(self) -> int:
        return self.trials * self.epochs

    @property
    def planned(self) -> float:
        """What the sweep is expected to train: ASHA's expectation less the shared prefixes."""
        return max(self.asha - self.shared_saved, 0.0)


def expected_epochs(rungs: tuple[int, ...] | list[int], reduction_factor: float, max_t: int, done: int = 0) -> float:
    """Epochs a trial is expected to train in all, having trained `done` and still running:
    at each rung past `done`, 1/reduction_factor of the trials go on."""
    total, alive, at = float(done), 1.0, done
    for rung in [r for r in rungs if r > done] + [max_t]:
        total += alive * (rung - at)
        alive /= reduction_factor
        at = rung
    return total


def brackets(space: Space, epochs: int) -> list[tuple[float, tuple[int, ...]]]:
    """(share of the trials, rungs) per ASHA bracket. Bracket s has bracket 0's milestones with the
    grace period times rf**s; Ray puts a trial in bracket s with weight e**(its rung count)."""
    settings = space.scheduler
    found = []
    for s in range(settings.brackets):
        grace = settings.grace_period * settings.reduction_factor**s
        one = replace(space, scheduler=AshaSettings(grace, settings.reduction_factor, 1))
        found.append(tuple(one.rungs(epochs)) if grace <= epochs else ())
    weights = [math.exp(len(rungs)) for rungs in found]
    return [(weight / sum(weights), rungs) for weight, rungs in zip(weights, found)]


def trial_epochs(
    space: Space, epochs: int, num_samples: int | None = None, shared_epochs_saved: int = 0
) -> TrialEpochs:
    """The study's trial-epochs: the full grid, ASHA's expectation, and what sharing saves."""
    trials = space.trial_count(num_samples)
    per_trial = sum(
        share * expected_epochs(rungs, space.scheduler.reduction_factor, epochs)
        for share, rungs in brackets(space, epochs)
    )
    return TrialEpochs(
        trials=trials,
        epochs=epochs,
        asha=trials * per_trial,
        rungs=tuple(space.rungs(epochs)),
        reduction_factor=space.scheduler.reduction_factor,
        shared_saved=shared_epochs_saved,
    )


@dataclass(frozen=True)
class Calibration:
    """Seconds per epoch of one trial on this machine, and what they are made of."""

    seconds_per_epoch: float
    step_seconds: float
    steps_per_epoch: int
    valid_seconds: float
    threads: int
    device: str
    corpus: str  # sha256 of the training file it was timed on
    measured: str  # local time of the measurement, YYYY-MM-DD HH:MM
    cached: bool = False  # read from the cache rather than timed now


def cache_path() -> Path:
    """Beside the PTB cache: $XDG_CACHE_HOME/study/calibration.json, else ~/.cache/study/..."""
    return cache_dir().parent / CACHE_FILE


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def calibration_key(config: TrainConfig, threads: int, device: str) -> str:
    """What makes a step faster or slower: the machine, torch, threads and the run's shape."""
    shape = {
        name: getattr(config, name)
        for name in ("num_layers", "hidden_size", "num_steps", "batch_size", "max_words", "precision", "step")
    }
    key = {"threads": threads, "device": device, "torch": torch.__version__, "cpu": cpu_model(), **shape}
    return json.dumps(key, sort_keys=True)


def measure(config: TrainConfig, corpus: Corpus, threads: int, device: str, steps: int = TIMED_STEPS) -> Calibration:
    """Time `steps` training steps and a validation pass of `config` after a warm-up of as many,
    on the first words of `corpus`; scale to a whole epoch of the corpus."""
    full = corpus.truncated(config.max_words)
    bs, ns = config.batch_size, config.num_steps
    steps_per_epoch = num_batches(len(full.train) // bs, ns, batch_size=bs)
    valid_words = num_batches(len(full.valid) // bs, ns, batch_size=bs) * bs * ns
    steps = min(steps, steps_per_epoch)
    # The first words of each split: an epoch of `steps` steps and a validation pass as short.
    probe = config.model_copy(update={"max_words": bs * (steps * ns + 1)})
    previous = torch.get_num_threads()
    set_threads(threads)
    try:
        trainer = Trainer(probe, corpus, device)
        trainer.train_steps(steps)  # warm-up of both
        trainer.validate()
        train_words, train_seconds = trainer.train_steps(steps)
        started = time.perf_counter()
        trainer.validate()
        probe_valid_seconds = time.perf_counter() - started
    finally:
        set_threads(previous)
    probe_valid_words = num_batches(trainer.valid_data.shape[1], ns) * bs * ns
    valid_seconds = probe_valid_seconds / probe_valid_words * valid_words
    step_seconds = train_seconds * bs * ns / train_words
    return Calibration(
        seconds_per_epoch=steps_per_epoch * step_seconds + valid_seconds,
        step_seconds=step_seconds,
        steps_per_epoch=steps_per_epoch,
        valid_seconds=valid_seconds,
        threads=threads,
        device=device,
        corpus=corpus.sha256.get("ptb.train.txt", ""),
        measured=time.strftime("%Y-%m-%d %H:%M"),
    )


def calibration(
    config: TrainConfig, corpus: Corpus | None, threads: int, device: str = "cpu", cache: Path | None = None
) -> Calibration | str:
    """The cached calibration of this machine and run shape, else a new one (then cached); without
    a corpus to time on and no usable cache entry: the reason, as a phrase for the plan. The cache
    is data from disk: a damaged file or entry is ignored and timed afresh with one warning line on
    stderr, and a cache that cannot be written is warned about, never an error."""
    cache = cache_path() if cache is None else cache
    key = calibration_key(config, threads, device)
    entries, problem = read_cache(cache)
    if key in entries:
        cached = cached_calibration(entries[key], threads, device)
        if isinstance(cached, str):
            problem = f"its entry for this machine and run shape is damaged ({cached})"
        elif corpus is None or cached.corpus == corpus.sha256.get("ptb.train.txt", ""):
            return cached
    if corpus is None:
        reason = "no corpus on this machine to time a few steps on (give --data-dir)"
        return f"{reason}; the cache {cache} is unusable: {problem}" if problem else f"{reason} and none timed before"
    if device == "cuda" and not torch.cuda.is_available():
        return "the trials use GPUs and this machine has none to time them on"
    if problem == NOT_A_FILE:  # nothing to write over
        _warn(f"{cache}: {problem}; ignored, timing a few steps afresh (not cached)")
        return measure(config, corpus, threads, device)
    if problem:
        _warn(f"{cache}: {problem}; ignored, timing a few steps afresh")
    timing = measure(config, corpus, threads, device)
    entries = {**entries, key: {**asdict(timing), "cached": False}}
    try:  # never half a file, even with two plans at once
        write_bytes(cache, json.dumps(entries, indent=1).encode())
    except StorageError as error:  # a full or read-only disk: said in a warning, the sweep goes on
        _warn(f"{error}; the next plan times again")
    except OSError as error:  # a file where a folder of the path should be
        _warn(f"{cache}: not cached ({error.strerror or error}); the next plan times again")
    return timing


NOT_A_FILE = "is not a file"
CACHE_LIMIT_BYTES = 1 << 22  # a cache of thousands of entries; anything larger is not one
MAX_STEP_SECONDS = 3600.0  # an hour a step: no model of this study on any machine
MAX_VALID_SECONDS = 10 * 24 * 3600.0
MAX_STEPS_PER_EPOCH = 10**8


def read_cache(cache: Path) -> tuple[dict[str, Any], str | None]:
    """The cache's entries by key, and what is wrong with the file (None when nothing, or it is absent)."""
    try:
        if not cache.exists():
            return {}, None
        if not cache.is_file():  # a folder or a pipe (reading one would wait forever)
            return {}, NOT_A_FILE
        with cache.open("rb") as stream:
            data = stream.read(CACHE_LIMIT_BYTES + 1)
    except OSError as error:
        return {}, f"cannot be read ({error.strerror or error})"
    if len(data) > CACHE_LIMIT_BYTES:
        return {}, f"is larger than {CACHE_LIMIT_BYTES} bytes"
    try:
        entries = json.loads(data)
    except RecursionError:
        return {}, "nests deeper than a cache does"
    except ValueError:  # not UTF-8, or not JSON
        return {}, "is not JSON"
    if not isinstance(entries, dict):
        return {}, "holds no object of entries"
    return entries, None


def cached_calibration(entry: Any, threads: int, device: str) -> Calibration | str:
    """The Calibration an entry of the cache holds, or what is wrong with it: any value may be there."""
    names = [field.name for field in fields(Calibration)]
    if not isinstance(entry, dict) or set(entry) != set(names):
        return f"not the fields {', '.join(names)}"
    longest = MAX_STEPS_PER_EPOCH * MAX_STEP_SECONDS + MAX_VALID_SECONDS
    for name, upper in (
        ("seconds_per_epoch", longest),
        ("step_seconds", MAX_STEP_SECONDS),
        ("valid_seconds", MAX_VALID_SECONDS),
    ):
        value, lowest = entry[name], 0.0 if name != "step_seconds" else math.ulp(0.0)  # a step takes some time
        if type(value) not in (int, float) or not lowest <= value <= upper:  # NaN is in no range
            return f"{name}={value!r}: not a number of seconds in {'[0' if lowest == 0 else '(0'}, {upper:g}]"
    steps = entry["steps_per_epoch"]
    if type(steps) is not int or not 1 <= steps <= MAX_STEPS_PER_EPOCH:
        return f"steps_per_epoch={steps!r}: not a count from 1 to {MAX_STEPS_PER_EPOCH:g}"
    total = steps * entry["step_seconds"] + entry["valid_seconds"]
    seconds = entry["seconds_per_epoch"]
    if not math.isclose(seconds, total, rel_tol=1e-6):
        return f"seconds_per_epoch={seconds!r}: not its steps x seconds a step + validation ({total:.6g})"
    if entry["threads"] != threads or type(entry["threads"]) is not int:
        return f"threads={entry['threads']!r}: not {threads}, the thread count of its key"
    if entry["device"] != device:
        return f"device={entry['device']!r}: not {device}, the device of its key"
    for name in ("corpus", "measured"):
        if not isinstance(entry[name], str):
            return f"{name}={entry[name]!r}: not text"
    return Calibration(**{**entry, "seconds_per_epoch": float(seconds), "cached": True})


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def format_duration(seconds: float) -> str:
    """A human duration: 'about 45 s', 'about 12 min', 'about 7 h 40 min', 'about 3 d 4 h'."""
    seconds = max(seconds, 0.0)
    if not seconds < 100 * 365 * 24 * 3600:  # or not finite
        return "over 100 years"
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    if minutes < 48 * 60:
        step = 10 if minutes >= 3 * 60 else 5  # a long estimate is no better than that
        minutes = round(minutes / step) * step
        hours, rest = divmod(minutes, 60)
        return f"about {hours} h" + (f" {rest} min" if rest else "")
    hours = round(seconds / 3600)
    days, rest = divmod(hours, 24)
    return f"about {days} d" + (f" {rest} h" if rest else "")


def estimate_lines(counts: TrialEpochs, timing: Calibration | str | None, concurrency: int | None) -> list[str]:
    """The plan's lines on the work and its duration."""
    asha = (
        f"{counts.asha:.0f} expected with ASHA (1/{counts.reduction_factor:g} go on at epoch"
        f"{'s' * (len(counts.rungs) > 1)} {', '.join(map(str, counts.rungs))})"
        if counts.rungs
        else f"{counts.asha:.0f} with ASHA (no rung before the last epoch)"
    )
    lines = [f"  trial-epochs: {counts.full} for the full grid ({counts.trials} x {counts.epochs}); {asha}"]
    if counts.shared_saved:
        lines[0] += f"; {counts.planned:.0f} with shared prefixes"
    if timing is None:
        return lines
    if isinstance(timing, str):
        return [*lines, f"  time: not estimated: {timing}"]
    per_epoch = (
        f"{timing.seconds_per_epoch:.0f} s an epoch = {timing.steps_per_epoch} steps x {timing.step_seconds * 1000:.0f} ms "
        f"+ {timing.valid_seconds:.0f} s validation ({timing.threads} thread{'s' if timing.threads > 1 else ''}, {timing.device}, "
        + (f"timed {timing.measured}, cached)" if timing.cached else "timed just now)")
    )
    work = counts.planned * timing.seconds_per_epoch
    stops = "ASHA's expected stops" + (", shared prefixes trained once" if counts.shared_saved else "")
    if concurrency == 0:
        return [*lines, "  time: not estimated: no node of the cluster has the resources of one trial"]
    if concurrency is None:
        return [
            *lines,
            f"  time: {format_duration(work)} of training in all; {per_epoch}",
            f"    to divide by the trials the cluster runs at once (unknown before joining it); assumes {stops}",
        ]
    at_once = min(concurrency, counts.trials)
    return [
        *lines,
        f"  time: {format_duration(work / at_once)}; {per_epoch}",
        f"    assumes every node as fast as this one, {at_once} trial{'s' if at_once > 1 else ''} at once, {stops}",
    ]
