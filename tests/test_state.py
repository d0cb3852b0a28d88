"""Saved run states: plain torch.load(weights_only=True) files; crafted, corrupted, truncated and
foreign ones are refused in one line and never used, by study.train --resume and by the library."""

import io
import os
import pickle
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from study.config import make_config
from study.train.data import load_corpus
from study.train.state import (
    StateError,
    decode_state,
    encode_state,
    load_into,
    load_state,
    read_state,
    run_identity,
    save_state,
)
from study.train.trainer import Trainer


@pytest.fixture
def corpus(tiny_corpus_dir):
    return load_corpus(tiny_corpus_dir)


def tiny(**overrides):
    return make_config({"max_words": 0, "epochs": 2, **overrides}, preset="test")


def saved_run(tmp_path: Path, corpus, **overrides) -> tuple[Path, dict]:
    trainer = Trainer(tiny(**overrides), corpus)
    trainer.run_epoch()
    identity = run_identity(trainer.config, corpus.sha256)
    path = tmp_path / "run.pt"
    save_state(path, trainer.state_dict(), identity)
    return path, identity


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.train", "--threads", "1", *args], capture_output=True, text=True
    )


def test_a_saved_state_is_a_plain_weights_only_file_and_round_trips(tmp_path, corpus):
    path, identity = saved_run(tmp_path, corpus)
    raw = torch.load(path, weights_only=True)  # what anyone may do with it: no code can run
    assert raw["identity"] == identity and raw["state"]["epoch"] == 1
    state = load_state(path, identity)
    resumed = Trainer(tiny(), corpus)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and not resumed.finished


class Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_given_to_resume_runs_no_code(tmp_path, tiny_corpus_dir):
    marker, crafted = tmp_path / "ran.txt", tmp_path / "crafted.pt"
    torch.save({"format": "study-run-state/1", "state": Payload(marker)}, crafted)
    done = train_cli("--resume", str(crafted), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert str(crafted) in done.stderr and "nothing in it was run" in done.stderr
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"  # a bare pickle, not even a torch file
    plain.write_bytes(pickle.dumps(Payload(marker)))
    done = train_cli("--resume", str(plain), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and not marker.exists()


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's data, leaving the file a valid zip."""
    with zipfile.ZipFile(path) as archive:
        biggest = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        offset = biggest.header_offset + 30 + len(biggest.filename.encode()) + len(biggest.extra)
    data = bytearray(path.read_bytes())
    data[offset + biggest.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, says",
    [
        (flip_tensor_byte, "corrupted, its contents do not match the checksum"),
        (
            lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
            "corrupted or not a saved run state",
        ),
    ],
    ids=["flipped-byte", "truncated"],
)
def test_a_damaged_state_is_refused_in_one_line(tmp_path, corpus, tiny_corpus_dir, damage, says):
    path, identity = saved_run(tmp_path, corpus)
    damage(path)
    with pytest.raises(StateError, match=says):
        load_state(path, identity)
    done = train_cli("--resume", str(path), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(path) in done.stderr
    assert says in done.stderr and "Epoch" not in done.stdout


def test_another_runs_state_is_refused_naming_the_setting(tmp_path, corpus):
    path, _ = saved_run(tmp_path, corpus, seed=1)
    with pytest.raises(StateError, match="seed=1, this run has seed=0"):
        load_state(path, run_identity(tiny(), corpus.sha256))


def test_a_state_of_another_corpus_is_refused_in_one_line(tmp_path, corpus, tiny_corpus_dir):
    path, _ = saved_run(tmp_path, corpus)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (other / name).write_text((tiny_corpus_dir / name).read_text() + " big cat \n")
    done = train_cli("--resume", str(path), "--data-dir", str(other))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "another corpus" in done.stderr and "Traceback" not in done.stderr


def test_a_foreign_but_loadable_file_is_not_taken_for_a_state(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, path)  # a plain state dict of someone else's
    with pytest.raises(StateError, match="not a saved run state of this version"):
        decode_state(path.read_bytes(), str(path))


def test_a_state_edited_by_hand_is_refused(tmp_path, corpus):
    data = encode_state({"epoch": 1}, run_identity(tiny(), corpus.sha256))
    saved = torch.load(io.BytesIO(data), weights_only=True)
    saved["state"]["epoch"] = 2  # edited by hand, checksum left as it was
    path = tmp_path / "edited.pt"
    torch.save(saved, path)
    with pytest.raises(StateError, match="checksum"):
        decode_state(path.read_bytes(), str(path))


def tamper_then_kill(how: dict[float, str]):
    """A Tune callback: damage every checkpoint a trial saves in the way `how` names for its
    max_grad_norm, and SIGKILL its worker when it reports epoch 2, so that Ray restores it from one
    of them (the worker may have saved more before it died: each one it reports is damaged too)."""
    from ray import tune

    pristine: dict[float, bytes] = {}
    damaged: set[Path] = set()

    def damage(state: Path, threshold: float) -> None:
        if how[threshold] == "flip":
            flip_tensor_byte(state)
        elif how[threshold] == "truncate":
            state.write_bytes(state.read_bytes()[:1000])
        else:  # another trial's checkpoint, intact
            state.write_bytes(next(data for key, data in pristine.items() if key != threshold))
        damaged.add(state)

    class TamperThenKill(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            threshold = trial.config["max_grad_norm"]
            states = sorted(Path(trial.storage.trial_fs_path).glob("checkpoint_*/state.pt"))
            if result["epoch"] == 1:
                pristine[threshold] = states[0].read_bytes()
            for state in states:
                if state not in damaged:
                    damage(state, threshold)
            if result["epoch"] == 2:  # epoch 1's checkpoint is registered with Tune by now
                os.kill(result["pid"], signal.SIGKILL)

    return TamperThenKill()


@pytest.mark.slow
def test_a_trial_restored_from_a_damaged_or_foreign_checkpoint_ends_in_error_with_that_line(
    ray_session, tiny_corpus_dir, tmp_path
):
    from study.sweep.cli import closing_summary, options_from_args, parse_args
    from study.sweep.tuner import run_sweep

    space = tmp_path / "tamper.yaml"
    space.write_text(
        "description: damaged checkpoints\npreset: test\nfixed: {epochs: 20, max_words: 0}\n"
        "vary:\n  max_grad_norm: {grid: [1.0, 2.0, 5.0]}\nseeds: [0]\nscheduler: {grace_period: 20}\n"
    )
    callback = tamper_then_kill({1.0: "flip", 2.0: "truncate", 5.0: "swap"})
    options = options_from_args(parse_args([str(space), "--storage", str(tmp_path / "out"), "--max-failures", "1"]))
    results = run_sweep(options, load_corpus(tiny_corpus_dir), [callback]).results
    trials = pd.read_parquet(Path(options.experiment) / "trials.parquet").set_index("max_grad_norm")
    assert trials["status"].to_dict() == {1.0: "error", 2.0: "error", 5.0: "error"}
    closing = closing_summary(options, results)
    assert "3 trials, 3 errored after their retries:" in closing
    lines = {line.split(": ", 1)[1] for line in closing.splitlines()[1:4]}
    assert sum("corrupted, its contents do not match the checksum" in line for line in lines) == 1
    assert sum("corrupted or not a saved run state" in line for line in lines) == 1
    assert sum("saved by another run (max_grad_norm=" in line for line in lines) == 1
    assert all("/checkpoint_0" in line and "/state.pt: " in line and "not used" in line for line in lines)
    summary = (Path(options.experiment) / "summary.md").read_text()
    assert summary.count("not used") == 3


def malformed(state: dict, how: str) -> dict:
    """`state` damaged in one way that its checksum cannot tell: it is computed after the damage."""
    model = dict(state["model"])
    first = next(iter(model))
    if how == "no model":
        return {key: value for key, value in state.items() if key != "model"}
    if how == "wrong shape":
        return {**state, "model": {**model, first: torch.zeros(3, 3)}}
    if how == "epoch text":
        return {**state, "epoch": "1"}
    if how == "momentum shape":
        return {**state, "optimizer": {**state["optimizer"], "state": {0: {"momentum_buffer": torch.zeros(2)}}}}
    if how == "extra weight":
        return {**state, "model": {**model, "extra.weight": torch.zeros(1)}}
    if how == "histories":
        return {**state, "clipper": {**state["clipper"], "clipped": torch.zeros(1, dtype=torch.bool)}}
    if how == "epoch beyond":
        return {**state, "epoch": 99}
    return {**state, "rng": {**state["rng"], "torch": torch.zeros(8, dtype=torch.uint8)}}  # "rng"


MALFORMED = {
    "no model": "state has no 'model' entry",
    "wrong shape": "state.model.embedding.weight has shape (3, 3), not (13, 16)",
    "epoch text": "state.epoch='1' is str, not int",
    "momentum shape": "state.optimizer.state[0].momentum_buffer has shape (2,), not (13, 16)",
    "extra weight": "state.model has the weights ['extra.weight'] of another model",
    "histories": "state.clipper's histories have the lengths",
    "epoch beyond": "state.epoch=99 is not in 0..2",
    "rng": "state.rng.torch has shape (8,), not (5056,)",
}


@pytest.mark.parametrize("how", MALFORMED)
def test_an_intact_state_of_the_wrong_structure_is_refused_before_the_trainer_takes_it(tmp_path, corpus, how):
    trainer = Trainer(tiny(momentum=0.9, clip_mode="adaptive"), corpus)
    trainer.run_epoch()
    identity = run_identity(trainer.config, corpus.sha256)
    path = tmp_path / "malformed.pt"
    path.write_bytes(encode_state(malformed(trainer.state_dict(), how), identity))
    state, _ = read_state(path)  # loadable and intact: the checksum matches
    fresh = Trainer(tiny(momentum=0.9, clip_mode="adaptive"), corpus)
    before = {name: tensor.clone() for name, tensor in fresh.model.state_dict().items()}
    with pytest.raises(StateError, match=rf"^{path}: not a run state of this run \(.*\); not used$") as refused:
        load_into(fresh, state, str(path))
    assert MALFORMED[how] in str(refused.value)
    assert all(torch.equal(before[name], tensor) for name, tensor in fresh.model.state_dict().items())  # untouched
    with pytest.raises(StateError, match=re.escape(MALFORMED[how])):
        read_state(path, expected=identity, fits=fresh)  # as a trial reads its checkpoint


@pytest.mark.parametrize("how", ["no model", "wrong shape", "epoch text", "momentum shape"])
def test_resume_of_an_intact_state_of_the_wrong_structure_is_one_line(tmp_path, corpus, tiny_corpus_dir, how):
    trainer = Trainer(tiny(momentum=0.9), corpus)
    trainer.run_epoch()
    path = tmp_path / "malformed.pt"
    path.write_bytes(encode_state(malformed(trainer.state_dict(), how), run_identity(trainer.config, corpus.sha256)))
    done = train_cli("--resume", str(path), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Epoch" not in done.stdout, done.stderr
    assert done.stderr == f"error: {path}: not a run state of this run ({MALFORMED[how]}); not used\n"


def test_a_state_that_the_trainer_itself_refuses_is_one_line(tmp_path, corpus):
    trainer = Trainer(tiny(), corpus)
    state = trainer.state_dict()
    state["clipper"] = {**state["clipper"], "threshold": 7.0}  # shaped right, but not this clipper's setting
    with pytest.raises(StateError, match=r"run\.pt: its run state does not fit this run \(ValueError: clipper state"):
        load_into(Trainer(tiny(), corpus), state, str(tmp_path / "run.pt"))
