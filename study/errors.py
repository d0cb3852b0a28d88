"""Errors a user can cause, reported at the edge in one line with a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

from pydantic import ValidationError

from study.redact import redact


class UsageError(Exception):
    """A mistake in the user's input (flag, file, value): printed as one line, exit status 2."""


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
    """Wrap a command's main so that a UsageError prints one line on stderr and exits 2."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UsageError as error:
            print(f"error: {redact(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C outside the sweep's own handling (loading, starting Ray, the report)
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
