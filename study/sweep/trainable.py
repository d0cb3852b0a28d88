"""The Ray Tune function trainable: one trial = one training run, one `tune.report` per epoch.

    tuner = tune.Tuner(tune.with_parameters(train_trial, corpus=corpus), param_space=space.param_space())

The corpus is loaded once by the sweep and reaches every trial through Ray's object store
(`tune.with_parameters`). Each epoch's report carries a checkpoint with the complete run state, so
a trial whose worker dies is restarted from its last epoch and continues exactly as if undisturbed.
A trial that starts with no checkpoint of its own and finds its shared prefix stored (study/sweep/prefix.py)
reports the prefix's epochs again, marked `shared_prefix`, and trains on from the prefix's state.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from study import metrics as m
from study.errors import REFUSED_WRITES, StorageError
from study.sweep.board import progress_sender
from study.sweep.estimate import cpu_model
from study.sweep.prefix import SharingPlan, TrialPrefix
from study.sweep.spaces import trial_config
from study.train import Corpus, Trainer, read_state, run_identity, save_state, set_threads

CHECKPOINT_FILE = "state.pt"


def trial_threads(resources: dict[str, float]) -> int:
    """Torch threads for a trial: its whole CPUs, at least one (a fractional share gets one)."""
    return max(1, math.floor(resources.get("CPU", 1)))


def train_trial(
    config: dict[str, Any], corpus: Corpus, preset: str = "small", sharing: SharingPlan | None = None
) -> None:
    """`sharing`: the sweep's shared prefixes (study/sweep/prefix.py); None trains every epoch here."""
    run = trial_config(config, preset)
    resources = tune.get_context().get_trial_resources().required_resources
    set_threads(trial_threads(resources))
    # Ray hides every GPU but the ones it assigned to this trial, so "cuda" is the trial's own GPU.
    device = torch.device("cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu")
    if resources.get("GPU", 0) > 0 and device.type == "cpu":  # Ray's GPUs are logical: one may be declared, not there
        print(
            f"trial given {resources['GPU']:g} GPU, but torch sees no CUDA device: training on the CPU", file=sys.stderr
        )
    # Progress inside each epoch goes to the driver's live view (study/sweep/progress.py), if it has one.
    trainer = Trainer(run, corpus, device, progress=progress_sender(tune.get_context().get_trial_id()))
    identity = run_identity(run, corpus.sha256)
    prefix = sharing.prefix(run) if sharing else None
    shared = TrialPrefix(sharing, prefix, corpus.sha256, tune.get_context().get_trial_id()) if prefix else None

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # A corrupted or another trial's checkpoint raises StateError: the trial fails with that
        # one line as its error instead of training on a state that is not its own.
        where = f"{checkpoint.path}/{CHECKPOINT_FILE}"
        with checkpoint.as_directory() as folder:  # intact, this trial's, shaped as its trainer's state
            state, _ = read_state(Path(folder) / CHECKPOINT_FILE, where, expected=identity, fits=trainer)
        trainer.load_state_dict(state)
        if shared:
            shared.resume(state)
    elif shared:  # a fresh trial: fork from the stored prefix, if there is one yet
        for report in shared.take(trainer):
            tune.report(report)

    machine = where_trained(device)
    for result in trainer.epochs():
        result = {**result, **machine, m.SHARED_PREFIX: False}
        if shared:
            result = shared.noted(result)  # the first report after refusing the stored prefix says why
        extra = shared.after_epoch(trainer, result) if shared else {}  # stores the prefix after its last epoch
        with tempfile.TemporaryDirectory() as folder:
            save_state(Path(folder) / CHECKPOINT_FILE, {**trainer.state_dict(), **extra}, identity)
            with checkpoint_refused(trainer.epoch):
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def where_trained(device: torch.device) -> dict[str, str]:
    """Where this trial's epochs train (study.metrics.MACHINE): the node of a cluster, the device,
    the CPU's model and, on a GPU, its name."""
    machine = {m.NODE_ID: ray.get_runtime_context().get_node_id(), m.DEVICE: device.type, m.CPU: cpu_model()}
    if device.type == "cuda":
        machine[m.GPU] = torch.cuda.get_device_name(device)
    return machine


@contextlib.contextmanager
def checkpoint_refused(epoch: int) -> Iterator[None]:
    """A checkpoint that storage refuses (full, read-only, over quota) ends the trial with one line
    naming its folder in storage: Ray's own error would be a pyarrow traceback. Its earlier
    checkpoints stay, so `--resume` continues it from the last one once there is space again."""
    try:
        yield
    except OSError as error:
        cause = REFUSED_WRITES.get(error.errno)
        if cause is None:
            raise
        where = tune.get_context().get_storage().trial_fs_path
        kept = "its earlier checkpoints are kept: free space, then --resume continues it from the last"
        raise StorageError.about(where, cause, kept, what=f"checkpoint of epoch {epoch}") from None
