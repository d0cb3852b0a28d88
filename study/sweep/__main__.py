"""`python -m study.sweep`: see study/sweep/cli.py. A Ctrl-C while Ray and torch load is one line, exit 130."""

import os
import signal
import sys


def _interrupted_while_loading(signum, frame):
    # Nothing has started yet, so leaving at once loses nothing. Raising KeyboardInterrupt instead
    # can land inside a library's own import and surface as some other error (a half-imported numpy
    # then fails scipy's import with a RecursionError).
    print("interrupted while loading Ray and torch; nothing was started", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_loading)
from study.sweep.cli import main  # noqa: E402 - after the handler: the imports take seconds

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())
