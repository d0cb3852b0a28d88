"""Saved run states that cannot run code, and are refused when corrupted or someone else's.

    identity = run_identity(config, corpus.sha256)
    save_state(Path("run.pt"), trainer.state_dict(), identity)
    trainer.load_state_dict(load_state(Path("run.pt"), identity))   # StateError if not this run's

A saved state is one `torch.save` file of tensors and plain values only (dicts, lists, tuples,
str, int, float, bool, None), so it loads with `torch.load(weights_only=True)`, which refuses any
other object: nothing a crafted file says can execute. Beside the state it holds the run's identity
(its configuration and the checksums of the corpus it trains on) and a SHA-256 over identity and
state, computed from the tensors' bytes and the plain values (not from the file, whose bytes torch
may lay out differently). Loading checks the three in turn: loadable, intact, this run's. Each
refusal is one line naming the file and what is wrong, and the state is never used.
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


def decode_state(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, identity) of bytes from `encode_state`, checked to be loadable and intact."""
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
    return saved["state"], saved["identity"]


def check_identity(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Refuse a state saved by another run: name the first setting or corpus file that differs."""
    if found.get("data_sha256") != expected["data_sha256"]:
        raise StateError(
            f"{where}: saved by a run on another corpus (data checksums differ from {_files(expected)}); not used"
        )
    theirs, ours = found.get("config", {}), expected["config"]
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise StateError(
                f"{where}: saved by another run ({key}={theirs.get(key)!r}, this run has {key}={ours.get(key)!r}); not used"
            )


def save_state(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Write to a temporary name, then rename: a crash never leaves half a state."""
    write_bytes(path, encode_state(state, identity))


def read_state(path: Path, where: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, identity) of the file at `path`, checked to be loadable and intact (not whose it is).
    Errors name `where` (default: the path), e.g. a checkpoint's place in storage."""
    where = where or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{where}: no such file") from None
    except OSError as error:
        raise StateError(f"{where}: cannot read ({error.strerror})") from None
    return decode_state(data, where)


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The state saved at `path`, if it is loadable, intact and the run `expected` describes."""
    state, identity = read_state(path)
    check_identity(identity, expected, str(path))
    return state


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
