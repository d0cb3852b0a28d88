"""`python -m study.sweep`: see study/sweep/cli.py."""

import sys

from study.loading import loaded
from study.sweep.cli import main

loaded()  # a Ctrl-C from here on is the command's to handle (study/loading.py)
sys.exit(main())
