"""The Ray Tune side of the study: search spaces, the Tuner and its command line, the trainable,
shared prefixes, the live progress view, the time estimate and the cluster's capacity.

    python -m study.sweep grad_clip --dry-run

What users and benchmarks import is listed here; the modules behind it are the wing's own. They
load on first use (Ray and torch take seconds), so that importing one part loads no more than it needs.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from study.sweep.space_file import available_spaces, load_space
    from study.sweep.spaces import Space, trial_config
    from study.sweep.tuner import SweepOptions, run_sweep

_SURFACE = {
    "Space": "study.sweep.spaces",
    "SweepOptions": "study.sweep.tuner",
    "available_spaces": "study.sweep.space_file",
    "load_space": "study.sweep.space_file",
    "run_sweep": "study.sweep.tuner",
    "trial_config": "study.sweep.spaces",
}
__all__ = ["Space", "SweepOptions", "available_spaces", "load_space", "run_sweep", "trial_config"]


def __getattr__(name: str):
    if name not in _SURFACE:
        raise AttributeError(f"module 'study.sweep' has no attribute {name!r}")
    return getattr(import_module(_SURFACE[name]), name)
