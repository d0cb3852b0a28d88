"""study: how gradient clipping and learning-rate decay shape the training of the Zaremba PTB LSTM."""

import os

from study.loading import guard_loading

# torch's OpenMP threads spin at every barrier by default, and oneDNN's LSTM meets one at every time
# step: where other work holds the cores, each barrier then waits for a time slice (study.bench, small
# preset, 2 threads on a busy 2-core machine: 341 words/s, 3,948 with PASSIVE). OpenMP reads this once,
# when torch loads it, so it is set here, where every `python -m study.*` and every Ray worker
# starts, before anything imports torch (study.bench imports torch before study.train). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

guard_loading()  # a Ctrl-C while `python -m study.<command>` loads torch, Ray, pandas: one line, exit 130

__version__ = "0.2.0"
