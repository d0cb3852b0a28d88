"""`python -m study.sweep`: see study/sweep/cli.py."""

import sys

from study.sweep.cli import main

sys.exit(main())
