"""Errors a user can cause, reported at the edge in one line with a non-zero exit."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from functools import wraps

from pydantic import ValidationError

from study.redact import redact


class UsageError(Exception):
    """A mistake in the user's input (flag, file, value): printed as one line, exit status 2."""

    exit_status = 2


# The refusals of a write that are the machine's, not the program's: what a user can free or change.
REFUSED_WRITES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the filesystem",
}

ONLY_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # causes that a read never meets


class StorageError(UsageError):
    """A write the machine refused (disk full, read-only, no permission, quota): one line naming
    the path and the cause, exit status 1 (the input was fine; the disk was not).

        error: /mnt/full/run.pt: not written (no space left on the device); the file there before is unchanged
    """

    exit_status = 1

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause  # one of REFUSED_WRITES' values

    @classmethod
    def about(cls, where: str | os.PathLike, cause: str, kept: str = "", what: str = "") -> StorageError:
        """`<where>: [<what>] not written (<cause>)[; <kept>]`."""
        text = f"{where}: {what + ' ' if what else ''}not written ({cause})" + (f"; {kept}" if kept else "")
        return cls(text, cause)

    @classmethod
    def refused(cls, error: OSError, path: str | os.PathLike | None = None, kept: str = "") -> StorageError | None:
        """The one line for `error` while writing `path` (default: the path the error names), with
        `kept` saying what is still there; None when `error` is not one of REFUSED_WRITES."""
        cause = REFUSED_WRITES.get(error.errno)
        if cause is None:
            return None
        return cls.about(path if path is not None else (error.filename or "a file"), cause, kept)


def describe_validation_error(error: ValidationError, where: str) -> str:
    """One line naming each bad key of a pydantic error, its value and what is allowed."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"{key}={item.get('input')!r}: {item['msg']}")
    return f"{where}: " + "; ".join(parts)


def main_with_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's main so that a UsageError prints one line on stderr and exits 2 (a
    StorageError: 1)."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UsageError as error:
            print(f"error: {redact(str(error))}", file=sys.stderr)
            return error.exit_status
        except OSError as error:  # a full or read-only disk under a write study does not wrap (Ray's, torch's)
            refused = StorageError.refused(error) if error.errno in ONLY_WRITES else None
            if refused is None:  # anything else, a read refused too (permission denied), is not known to be a write
                raise
            print(f"error: {redact(str(refused))}", file=sys.stderr)
            return refused.exit_status
        except KeyboardInterrupt:  # Ctrl-C outside the sweep's own handling (loading, starting Ray, the report)
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
