"""`python -m study.train`: see study/train/cli.py."""

import sys

from study.train.cli import main

sys.exit(main())
