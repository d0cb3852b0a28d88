"""`python -m study.report`: see study/report/build.py."""

import sys

from study.report.build import main

sys.exit(main())
