"""A Ctrl-C while a `python -m study.<command>` is still loading its libraries: one line and exit 130, at once.

`python -m study.train` imports the package `study`, then `study.train` (torch: seconds), and only
then runs study/train/__main__.py, so the guard starts in study/__init__.py, while Python is still
locating the command's module (sys.argv[0] is then "-m"), and each command's __main__.py ends it
with `loaded()` once its imports are done. A program that imports study as a library keeps its
own SIGINT handling.

Nothing has started while the imports run, so leaving at once loses nothing. Raising
KeyboardInterrupt instead can land inside a library's own import and surface as some other error (a
half-imported numpy then failed scipy's import with a RecursionError), so the handler leaves with
os._exit.
"""

from __future__ import annotations

import os
import signal
import sys


def _leave(signum, frame):
    print("interrupted while loading the libraries; nothing was started", file=sys.stderr, flush=True)
    os._exit(130)


def guard_loading() -> None:
    """Leave at once on Ctrl-C until loaded(): only for `python -m study.…`, and only where Ctrl-C
    would raise KeyboardInterrupt (a job started with `&` by a script has SIGINT ignored: it stays so)."""
    if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _leave)


def loaded() -> None:
    """Ctrl-C raises KeyboardInterrupt again, for the command's own handling."""
    if signal.getsignal(signal.SIGINT) is _leave:
        signal.signal(signal.SIGINT, signal.default_int_handler)
