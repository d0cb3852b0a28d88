"""Output paths checked before any work: a file in the way is one line at start, not a traceback
after an epoch.

    python -m study.train --preset test --save /etc/passwd/run.pt    # error: --save …: /etc/passwd is a file; …
"""

from __future__ import annotations

import os
from pathlib import Path

from study.errors import UsageError


def nearest_existing(path: Path) -> Path:
    """`path` or the closest of its parents that exists (the folder a new path would be made in)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output_folder(path: str | os.PathLike, flag: str, given: str | os.PathLike | None = None) -> None:
    """`path` is, or can be made as, a folder this user writes in; errors show `given` (the flag's value)."""
    given = path if given is None else given
    existing = nearest_existing(Path(path))
    if not existing.is_dir():
        raise UsageError(f"{flag} {given}: {existing} is a file; allowed: a path in a folder this user can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {given}: {existing} is not writable by this user; allowed: a path in a folder this user can write")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; allowed: a file path (its folder is made if missing)")
    check_output_folder(path.parent, flag, given=path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: is not writable by this user")
