"""Saved run states that cannot run code, and are refused when corrupted or someone else's.

    identity = run_identity(config, corpus.sha256)
    save_state(Path("run.pt"), trainer.state_dict(), identity)
    trainer.load_state_dict(load_state(Path("run.pt"), identity))   # StateError if not this run's

A saved state is one `torch.save` file of tensors and plain values only (dicts, lists, tuples,
str, int, float, bool, None), so it loads with `torch.load(weights_only=True)`, which refuses any
other object: nothing a crafted file says can execute. Beside the state it holds the run's identity
(its configuration and the checksums of the corpus it trains on) and a SHA-256 over identity and
state, computed from the tensors' bytes and the plain values (not from the file, whose bytes torch
may lay out differently). Loading checks the three in turn: loadable, intact, this run's; and
before a trainer takes it, that it has the structure of the trainer's own state (`load_into`,
`check_state`): the checksum proves the bytes are what their writer saved, not that the writer was
study. Each refusal is one line naming the file and what is wrong, and the state is never used.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from study.errors import UsageError
from study.storage import write_bytes

FORMAT = "study-run-state/1"


class StateError(UsageError):
    """A saved state that must not be used: unloadable, corrupted, or another run's."""


def run_identity(config, data_sha256: dict[str, str]) -> dict[str, Any]:
    """What a state must match to be resumed by a run: its whole configuration and its corpus."""
    return {"config": config.model_dump(), "data_sha256": dict(data_sha256)}


def encode_state(state: dict[str, Any], identity: dict[str, Any]) -> bytes:
    """The bytes of a saved state: format, identity, checksum and state, for `decode_state`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "identity": identity, "sha256": _checksum(identity, state), "state": state}, buffer)
    return buffer.getvalue()


def decode_state(
    data: bytes,
    where: str,
    expected: dict[str, Any] | None = None,
    fits=None,
    run_entry: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, identity) of bytes from `encode_state`, checked in turn to be loadable, intact, the
    run `expected` describes (check_identity; when given) and to have the structure of the state of
    `fits` (a Trainer; when given; check_state): the state itself, or its `run_entry` (a stored
    prefix keeps its run state under "run")."""
    try:
        with warnings.catch_warnings():  # torch warns about a bare pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).split("WeightsUnpickler error:")[-1].strip().split(". ")[0].splitlines()[0]
        raise StateError(
            f"{where}: refused, it holds more than tensors and plain values ({detail}); nothing in it was run"
        ) from None
    except Exception as error:  # truncated, flipped or foreign bytes: zip, pickle and storage errors of many kinds
        raise StateError(f"{where}: corrupted or not a saved run state ({type(error).__name__}); not used") from None
    if (
        not isinstance(saved, dict)
        or saved.get("format") != FORMAT
        or not {"identity", "sha256", "state"} <= set(saved)
    ):
        raise StateError(
            f"{where}: not a saved run state of this version of study (expected format {FORMAT}); not used"
        )
    try:
        intact = _checksum(saved["identity"], saved["state"]) == saved["sha256"]
    except TypeError:  # a value weights_only admits but a state never holds
        intact = False
    if not intact:
        raise StateError(f"{where}: corrupted, its contents do not match the checksum saved with them; not used")
    state = saved["state"]
    if expected is not None:
        check_identity(saved["identity"], expected, where)
    if fits is not None:
        run = state.get(run_entry) if run_entry is not None and isinstance(state, dict) else state
        check_state(run, fits, where)
    return state, saved["identity"]


# Settings added after states were first saved, with the value that states saved before them ran
# with: a state from study 0.1 was trained by the plain step.
SETTINGS_BEFORE_THEY_EXISTED = {"step": "plain"}


def check_identity(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Refuse a state saved by another run: name the first setting or corpus file that differs."""
    if found.get("data_sha256") != expected["data_sha256"]:
        raise StateError(
            f"{where}: saved by a run on another corpus (data checksums differ from {_files(expected)}); not used"
        )
    theirs, ours = {**SETTINGS_BEFORE_THEY_EXISTED, **found.get("config", {})}, expected["config"]
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise StateError(
                f"{where}: saved by another run ({key}={theirs.get(key)!r}, this run has {key}={ours.get(key)!r}); not used"
            )


def save_state(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: a crash never leaves half a state."""
    write_bytes(path, encode_state(state, identity))


def read_state(
    path: Path, where: str | None = None, expected: dict[str, Any] | None = None, fits=None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, identity) of the file at `path`, checked as `decode_state` checks it: loadable and
    intact; with `expected`, this run's; with `fits` (a Trainer), shaped as its state. Errors name
    `where` (default: the path), e.g. a checkpoint's place in storage."""
    where = where or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{where}: no such file") from None
    except OSError as error:
        raise StateError(f"{where}: cannot read ({error.strerror})") from None
    return decode_state(data, where, expected, fits)


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The state saved at `path`, if it is loadable, intact and the run `expected` describes."""
    return read_state(path, expected=expected)[0]


def load_into(trainer, state: dict[str, Any], where: str) -> None:
    """Load a decoded state into `trainer`, refused in one line (StateError) unless it has the
    structure of the trainer's own: the checksum proves a state is what its writer saved, not that
    the writer was study. Checked first, what would load and fail later (an epoch that is text, a
    momentum buffer of another shape); then what the trainer's loading itself refuses."""
    check_state(state, trainer, where)
    try:
        trainer.load_state_dict(state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise StateError(
            f"{where}: its run state does not fit this run ({type(error).__name__}: {detail}); not used"
        ) from None


def check_state(state: Any, trainer, where: str) -> None:
    """Refuse a state whose structure differs from the state of `trainer`: every entry of its
    state_dict() there, each tensor of its dtype and shape (histories: of its rank), each plain value
    of its type, the optimizer's buffers shaped as its parameters, 0 <= epoch <= its epochs."""
    reference, epochs = trainer.state_dict(), trainer.config.epochs
    shapes = [parameter.shape for group in trainer.optimizer.param_groups for parameter in group["params"]]
    problem = _unlike(state, reference, "state")
    if problem is None:
        problem = _optimizer_problem(state["optimizer"], shapes)
    if problem is None and set(state["model"]) != set(reference["model"]):
        problem = (
            f"state.model has the weights {sorted(set(state['model']) ^ set(reference['model']))} of another model"
        )
    if problem is None:
        problem = _history_problem(state["clipper"])
    if problem is None and not 0 <= state["epoch"] <= epochs:
        problem = f"state.epoch={state['epoch']} is not in 0..{epochs}"
    if problem is None and state["step"] < 0:
        problem = f"state.step={state['step']} is negative"
    if problem is not None:
        raise StateError(f"{where}: not a run state of this run ({problem}); not used")


_HISTORIES = {"state.clipper.norms", "state.clipper.clipped"}  # grow with the steps taken: rank, not shape
_OPTIONAL = {"cuda"}  # a run on the CPU has no CUDA generator state, and ignores one


def _unlike(value: Any, reference: Any, at: str) -> str | None:
    """What in `value` is unlike `reference` (the first difference, as a phrase), or None."""
    if isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return f"{at} is {type(value).__name__}, not a tensor"
        if value.dtype != reference.dtype:
            return f"{at} is {value.dtype}, not {reference.dtype}"
        if value.dim() != reference.dim() or (at not in _HISTORIES and value.shape != reference.shape):
            return f"{at} has shape {tuple(value.shape)}, not {tuple(reference.shape)}"
        return None
    if isinstance(reference, dict):
        if not isinstance(value, dict):
            return f"{at} is {type(value).__name__}, not a dict"
        for key, item in reference.items():
            if key not in value:
                if key in _OPTIONAL:
                    continue
                return f"{at} has no {key!r} entry"
            if problem := _unlike(value[key], item, f"{at}.{key}"):
                return problem
        return None
    if isinstance(reference, (list, tuple)):
        if type(value) is not type(reference) or len(value) != len(reference):
            kind = (
                f"{type(value).__name__} of {len(value)}" if isinstance(value, (list, tuple)) else type(value).__name__
            )
            return f"{at} is a {kind}, not a {type(reference).__name__} of {len(reference)}"
        for index, (item, expected) in enumerate(zip(value, reference)):
            if problem := _unlike(item, expected, f"{at}[{index}]"):
                return problem
        return None
    if reference is None:  # an optional plain value (Python's gauss_next, torch's foreach)
        plain = value is None or isinstance(value, (bool, int, float, str))
        return None if plain else f"{at} is {type(value).__name__}, not a plain value"
    kinds = (int, float) if type(reference) is float else (type(reference),)  # an int rate is a rate
    if type(value) not in kinds:
        return f"{at}={value!r} is {type(value).__name__}, not {type(reference).__name__}"
    return None


def _history_problem(clipper: dict[str, Any]) -> str | None:
    """The clipper's record: one length for its histories, its epoch's start inside it."""
    lengths = {len(clipper[name.rpartition(".")[2]]) for name in _HISTORIES if name.rpartition(".")[2] in clipper}
    if len(lengths) > 1:
        return f"state.clipper's histories have the lengths {sorted(lengths)}, not one"
    start = clipper.get("epoch_start", 0)
    if lengths and type(start) is int and not 0 <= start <= lengths.pop():
        return f"state.clipper.epoch_start={start} lies outside its history"
    return None


def _optimizer_problem(optimizer: dict[str, Any], shapes: list[torch.Size]) -> str | None:
    """The optimizer's per-parameter buffers: keyed by parameter index, tensors of its shape."""
    buffers = optimizer.get("state")
    if not isinstance(buffers, dict):
        return "state.optimizer.state is not a dict"
    for index, entry in buffers.items():
        if type(index) is not int or not 0 <= index < len(shapes) or not isinstance(entry, dict):
            return f"state.optimizer.state has an entry {index!r} for no parameter"
        for name, item in entry.items():
            at = f"state.optimizer.state[{index}].{name}"
            if isinstance(item, torch.Tensor) and item.dim() and item.shape != shapes[index]:
                return f"{at} has shape {tuple(item.shape)}, not {tuple(shapes[index])}"
            if not (item is None or isinstance(item, (torch.Tensor, int, float))):
                return f"{at} is {type(item).__name__}"
    return None


def _files(identity: dict[str, Any]) -> str:
    return ", ".join(sorted(identity["data_sha256"])) or "no files"


def _checksum(identity: dict[str, Any], state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    _feed(digest, {"identity": identity, "state": state})
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    """Hash a tree of tensors and plain values: every type, key, shape, dtype and byte."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__} {value!r};".encode())
    else:
        raise TypeError(f"a saved state holds tensors and plain values only, not {type(value).__name__}")
