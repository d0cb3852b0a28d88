"""The Ray Tune side of the study: search spaces, the Tuner and its command line, the trainable,
shared prefixes, the live progress view, the time estimate and the cluster's capacity.

    python -m study.sweep grad_clip --dry-run

What users and benchmarks import is listed here; the modules behind it are the wing's own.
"""

from study.sweep.space_file import available_spaces, load_space
from study.sweep.spaces import Space, trial_config
from study.sweep.tuner import SweepOptions, run_sweep

__all__ = ["Space", "SweepOptions", "available_spaces", "load_space", "run_sweep", "trial_config"]
