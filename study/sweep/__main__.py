"""`python -m study.sweep`: see study/sweep/cli.py. A Ctrl-C while Ray and torch load is one line, exit 130."""

import sys

try:
    from study.sweep.cli import main
except KeyboardInterrupt:
    print("interrupted while loading Ray and torch; nothing was started", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
