"""`python -m study.report`: see study/report/build.py."""

import sys

from study.loading import loaded
from study.report.build import main

loaded()  # a Ctrl-C from here on is the command's to handle (study/loading.py)
sys.exit(main())
