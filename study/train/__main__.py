"""`python -m study.train`: see study/train/trainer.py."""

import sys

from study.train.trainer import main

sys.exit(main())
