"""The report of a sweep: reads Ray's experiment folder as text (no torch, no Ray, nothing
unpickled) and writes tidy tables, a comparison of settings, plots and a summary.

    python -m study.report results/grad_clip

What the sweep and users import is listed here; the modules behind it are the wing's own.
"""

from study.report.build import ReportFailed, ReportPaths, write_report
from study.report.collect import Experiment, collect, load_experiment
from study.report.provenance import code_versions, git_state
from study.report.scale import ppl_text

__all__ = [
    "Experiment",
    "ReportFailed",
    "ReportPaths",
    "code_versions",
    "collect",
    "git_state",
    "load_experiment",
    "ppl_text",
    "write_report",
]
