"""`--resume`: continue a sweep exactly as it started, or refuse in one line what would change it.

    python -m study.sweep smoke --storage results --data-dir ../shared/data/ptb --resume

A sweep's trials, ASHA's rungs and its results bit for bit are fixed when it starts: its epochs,
seeds and samples, its resources per trial (a trial's torch threads follow its CPUs, and its
device its GPUs) and its corpus. study.json records them; a resumed sweep takes them from there,
so the resume command needs none of them, and refuses a flag that differs, a space file edited
since, or a --data-dir whose files are not the ones the sweep trained on (the tables would mix two
corpora under one provenance).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from study.errors import UsageError
from study.redact import redact
from study.sweep.state_copy import plan_repair
from study.sweep.tuner import LAYOUT, SweepOptions, experiment_exists, experiment_started, read_study_file
from study.train import Corpus

# Fixed when a sweep starts, kept in study.json: its trials and ASHA's rungs, then its results bit for bit.
TRIAL_FLAGS = ("epochs", "seeds", "num_samples")
RESOURCE_FLAGS = ("cpus_per_trial", "gpus_per_trial")


def starts_again(args: argparse.Namespace) -> str:
    """What happens to a folder whose sweep stopped before Ray saved its state."""
    return "a run without --dry-run starts it again" if args.dry_run else "starting it again"


def to_resume(
    args: argparse.Namespace, options: SweepOptions, options_from_args: Callable[[argparse.Namespace], SweepOptions]
) -> tuple[argparse.Namespace, SweepOptions, dict[str, Any]]:
    """The arguments and options that continue the sweep in options.experiment as it started, and
    its study.json: its fixed settings come from there; a flag that would change them, or a space
    file edited since, is refused. A folder whose sweep stopped before Ray saved its state is
    started again from the beginning, with the settings it started with."""
    where = redact(options.experiment)
    saved = experiment_exists(options.experiment)
    if not saved and not experiment_started(options.experiment):
        raise UsageError(f"--resume: no sweep to continue in {where}")
    study = read_study_file(options.experiment)
    if saved:
        check_unchanged(args, options, study, where)
        plan_repair(options.experiment)  # a torn state of Ray's with no whole copy: said now, not started over
    else:
        print(f"{where}: the sweep stopped before Ray saved its state, so nothing is lost; {starts_again(args)}")
    kept = {flag: study.get(flag) for flag in (*TRIAL_FLAGS, *RESOURCE_FLAGS)}
    unsaid = {flag: value for flag, value in kept.items() if value is not None and getattr(args, flag) is None}
    filled = argparse.Namespace(
        **{
            **vars(args),
            **{flag: value for flag, value in unsaid.items() if flag in TRIAL_FLAGS},
            "no_prefix_sharing": args.no_prefix_sharing or study.get("prefix_sharing") is False,
        }
    )
    # The resources go to the options only, so that the resume command shows just the flags given.
    resources = {flag: value for flag, value in unsaid.items() if flag in RESOURCE_FLAGS}
    return filled, replace(options_from_args(filled), resume=saved, **resources), study if saved else {}


def check_unchanged(args: argparse.Namespace, options: SweepOptions, study: dict[str, Any], where: str) -> None:
    """Refuse what would continue the saved sweep in `where` as another one."""
    if study and study.get("layout") != LAYOUT:
        commit = f" (git commit {study['git_commit']})" if study.get("git_commit") else ""
        raise UsageError(
            f"--resume: the sweep in {where} was started by study {study.get('versions', {}).get('study', 'before 0.2')}, "
            f"whose modules Ray saved under names this version no longer has; continue it with the code that "
            f"started it{commit}, or start a new study with another --storage"
        )
    if study.get("space_text") not in (None, options.space.text):
        raise UsageError(
            f"{options.space.path}: changed since the sweep in {where} started; --resume continues the sweep "
            "as it started (study.json holds that space): restore the file, or start a new study with another --storage"
        )
    for flag in (*TRIAL_FLAGS, *RESOURCE_FLAGS):
        given, value = getattr(args, flag), study.get(flag)
        if given is not None and value is not None and given != value:
            name = "--" + flag.replace("_", "-")
            shown, was = (f"{v:g}" if isinstance(v, float) else str(v) for v in (given, value))
            why = (
                ": a trial's threads and device follow it, and with them its results" if flag in RESOURCE_FLAGS else ""
            )
            raise UsageError(
                f"{name} {shown}: --resume continues the sweep in {where} as it started ({flag} {was}{why}); "
                f"to run with {name} {shown}, start a new study with another --storage"
            )
    if args.no_prefix_sharing and study.get("prefix_sharing"):
        raise UsageError(
            f"--no-prefix-sharing: the sweep in {where} started with shared prefixes, and continues with them"
        )


def check_resumed_corpus(study: dict[str, Any], corpus: Corpus, experiment: str) -> None:
    """Refuse to continue a sweep on other data than it started on: the checksums in study.json."""
    started = study.get("data_sha256")
    if not isinstance(started, dict) or started == corpus.sha256:
        return
    name = next((name for name in sorted(started) if started[name] != corpus.sha256.get(name)), "ptb.train.txt")
    raise UsageError(
        f"--data-dir {corpus.folder}: {name} is not the file the sweep in {redact(experiment)} started with "
        f"(sha256 {str(corpus.sha256.get(name))[:12]}…, the sweep's {str(started[name])[:12]}…); --resume "
        "continues it on the same corpus, whose folder the printed resume command names"
    )


def resume_command(args: argparse.Namespace, options: SweepOptions, data_dir: str) -> str:
    """The command that continues this sweep: the space as given, the storage and data folder it
    used, and whatever else was given that a resumed run still reads. Its epochs, seeds and samples
    are left out: study.json holds them (a resumed sweep takes them from there)."""
    words = ["python", "-m", "study.sweep", args.space, "--storage", options.storage, "--data-dir", data_dir]
    for flag in ("address", *RESOURCE_FLAGS):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if args.max_failures != SweepOptions.max_failures:
        words += ["--max-failures", str(args.max_failures)]
    if args.verbose:
        words.append("--verbose")
    if args.no_prefix_sharing:
        words.append("--no-prefix-sharing")
    return shlex.join([*words, "--resume"])
