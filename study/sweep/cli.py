"""Run a named study as Ray Tune trials with ASHA, then write its tables.

    python -m study.sweep smoke --data-dir ../shared/data/ptb          # seconds, on a laptop
    python -m study.sweep grad_clip --dry-run                          # the plan of the real study
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m study.sweep grad_clip --storage /shared/results

The study is a YAML file in search_spaces/ (see study/sweep/space_file.py). Results go to
`<storage>/<study>/`: Ray's experiment folder (checkpoints, TensorBoard events, progress) and the
report's tables. `--resume` continues an interrupted sweep without rerunning finished trials.
Trials that differ only in settings that act late train their shared first epochs once
(study/sweep/prefix.py, study/sweep/prefix_search.py); `--no-prefix-sharing` trains every trial from scratch.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from dataclasses import replace
from pathlib import Path

import ray
from ray import tune

from study.errors import UsageError, main_with_errors
from study.redact import redact
from study.sweep.board import quiet_ray, start_board
from study.sweep.capacity import (
    Node,
    autoscaling,
    check_address,
    check_capacity,
    check_resource_flag,
    check_shared_storage,
    live_nodes,
    trials_at_once,
)
from study.sweep.progress import SweepProgress
from study.sweep.space_file import load_space
from study.sweep.tuner import (
    LAYOUT,
    SweepOptions,
    SweepResult,
    check_storage,
    experiment_exists,
    experiment_started,
    plan,
    plan_timing,
    read_study_file,
    run_sweep,
    saved_by_sharing,
    storage_uri,
)
from study.train import DATA_ENV, available_cpus, load_corpus


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.sweep", allow_abbrev=False, description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "space", help="a study in search_spaces/ (grad_clip, clip_modes, lr_schedules, smoke) or a YAML path"
    )
    parser.add_argument(
        "--data-dir", help=f"folder with ptb.{{train,valid,test}}.txt (else ${DATA_ENV}, the cache, a download)"
    )
    parser.add_argument(
        "--storage",
        help="where results go: a folder or a URI every node reaches (default results/; required on a cluster or as a Ray job)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS as set by ray job submit, else a private local Ray, never another one running here)",
    )
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial, fractions allowed (default: the space's)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default: the space's)")
    parser.add_argument("--num-samples", type=int, help="repeats of the grid / samples drawn (default: the space's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run every setting with (default: the space's)")
    parser.add_argument("--epochs", type=int, help="epochs per trial, also ASHA's max_t (default: the space's)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a trial whose worker dies (default 2)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep in <storage>/<study>")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit without training")
    parser.add_argument(
        "--verbose", action="store_true", help="Ray Tune's own console output instead of the compact progress view"
    )
    parser.add_argument(
        "--no-prefix-sharing",
        action="store_true",
        help="train every trial from its first epoch, even those that share their first epochs with others (same results)",
    )
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    for flag in ("cpus_per_trial", "gpus_per_trial", "num_samples", "epochs", "max_failures"):
        check_resource_flag(
            f"--{flag.replace('_', '-')}",
            getattr(args, flag),
            positive=flag in ("cpus_per_trial", "num_samples", "epochs"),
        )
    space = load_space(args.space, epochs=args.epochs, seeds=args.seeds)
    return SweepOptions(
        space=space,
        epochs=space.base_config().epochs,
        storage=storage_uri(args.storage or "results"),
        cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else space.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial if args.gpus_per_trial is not None else space.gpus_per_trial,
        num_samples=args.num_samples or space.num_samples,
        max_failures=args.max_failures,
        resume=args.resume,
        verbose=args.verbose,
        prefix_sharing=not args.no_prefix_sharing,
    )


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from_args(args)
    check_storage(options.storage)
    if options.resume:
        args, options = to_resume(args, options)
    elif experiment_exists(options.experiment):
        raise UsageError(
            f"{redact(options.experiment)} already holds this study: add --resume to continue it, or choose another --storage"
        )
    elif experiment_started(options.experiment):  # killed before Ray saved anything: nothing to lose
        print(
            f"{redact(options.experiment)}: a sweep started here and stopped before Ray saved its state; starting it again"
        )
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not args.verbose:
        quiet_ray()
    if args.dry_run:
        nodes = None if address else [Node(available_cpus(), 0)]
        timing = plan_timing(options, None)  # the cache, else time on the data if it is here (no download)
        if isinstance(timing, str):
            try:
                timing = plan_timing(options, load_corpus(args.data_dir, urls=()))
            except UsageError as error:  # a wrong --data-dir says so; no data at all keeps the reason above
                timing = str(error) if args.data_dir else timing
        print(redact(plan(options, nodes, timing, saved_by_sharing(options))))
        return 0
    check_address(address)  # seconds, where ray.init would retry for minutes
    corpus = load_corpus(args.data_dir)  # before Ray starts: a data problem is one line, not a trial error
    options.space.check_corpus_fits(corpus)
    if note := corpus.dropped_note():
        print(note)
    timing = plan_timing(options, corpus)  # before Ray starts, so that nothing else runs meanwhile
    # Without an address, a private Ray of this process ("local"): ray.init() alone would join any
    # Ray already running on the machine. Ray 2.60 binds its servers to every interface (it turns a
    # loopback node address into the host's), and guards them with its token (~/.ray/auth_token).
    ray.init(
        address=address or "local",
        log_to_driver=False,
        include_dashboard=False if address is None else None,
        logging_level=logging.INFO if args.verbose else logging.WARNING,
    )
    nodes = live_nodes()
    check_shared_storage(args.storage is not None, nodes)
    capacity_warning = check_capacity(options.cpus_per_trial, options.gpus_per_trial, nodes, autoscaling())
    print(redact(plan(options, nodes, timing, saved_by_sharing(options))), flush=True)
    if capacity_warning:
        print(capacity_warning, flush=True)
    tracker = SweepProgress.for_sweep(
        options.space,
        options.epochs,
        options.num_samples,
        timing,
        trials_at_once(options.cpus_per_trial, options.gpus_per_trial, nodes),
        start_board(),
        verbose=args.verbose,
        shared_epochs_saved=saved_by_sharing(options),
    )
    again = resume_command(args, options, corpus.folder)
    try:
        outcome = run_sweep(options, corpus, [tracker], resume_with=again)
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune was saving its state
        outcome = None
    finally:
        tracker.close()
    if outcome is not None:
        print(redact(closing_summary(options, outcome.results, again)))
    if outcome is None or tracker.interrupted:
        print(redact("\n".join(tracker.interruption_lines(options.experiment, again))))
        return 130  # as a shell reports a command stopped by SIGINT
    return exit_code(outcome)


def exit_code(outcome: SweepResult) -> int:
    """1 when a trial ended in error after its retries, no trial finished an epoch, or the report's
    plots or summary failed; else 0."""
    results = outcome.results
    failed = any(result.error for result in results) or outcome.report_failure
    return 1 if failed or not any(result.metrics for result in results) else 0


RESUMED_FLAGS = ("epochs", "seeds", "num_samples")  # fixed when a sweep starts: its trials and ASHA's rungs


def to_resume(args: argparse.Namespace, options: SweepOptions) -> tuple[argparse.Namespace, SweepOptions]:
    """The arguments and options that continue the sweep in options.experiment as it started:
    its epochs, seeds and samples come from study.json; a flag that would change them, or a space
    file edited since, is refused. A folder whose sweep stopped before Ray saved its state is
    started again from the beginning."""
    where = redact(options.experiment)
    if not experiment_exists(options.experiment):
        if experiment_started(options.experiment):
            print(f"{where}: the sweep stopped before Ray saved its state, so nothing is lost; starting it again")
            return args, replace(options, resume=False)
        raise UsageError(f"--resume: no sweep to continue in {where}")
    study = read_study_file(options.experiment)
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
    started = {flag: study.get(flag) for flag in RESUMED_FLAGS}
    for flag, value in started.items():
        given = getattr(args, flag)
        if given is not None and value is not None and given != value:
            name = "--" + flag.replace("_", "-")
            raise UsageError(
                f"{name} {given}: --resume continues the sweep in {where} as it started ({flag} {value}); "
                f"to run with {name} {given}, start a new study with another --storage"
            )
    if args.no_prefix_sharing and study.get("prefix_sharing"):
        raise UsageError(
            f"--no-prefix-sharing: the sweep in {where} started with shared prefixes, and continues with them"
        )
    filled = argparse.Namespace(
        **{
            **vars(args),
            **{flag: value for flag, value in started.items() if value is not None},
            "no_prefix_sharing": args.no_prefix_sharing or study.get("prefix_sharing") is False,
        }
    )
    return filled, options_from_args(filled)


def resume_command(args: argparse.Namespace, options: SweepOptions, data_dir: str) -> str:
    """The command that continues this sweep: the space as given, the storage and data folder it
    used, and whatever else was given that a resumed run still reads."""
    words = ["python", "-m", "study.sweep", args.space, "--storage", options.storage, "--data-dir", data_dir]
    for flag in ("address", "cpus_per_trial", "gpus_per_trial", "num_samples", "epochs"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    if args.max_failures != SweepOptions.max_failures:
        words += ["--max-failures", str(args.max_failures)]
    if args.verbose:
        words.append("--verbose")
    if args.no_prefix_sharing:
        words.append("--no-prefix-sharing")
    return shlex.join([*words, "--resume"])


def exception_line(error: BaseException) -> str:
    """The last line of an exception (a trial's error): for a StateError, the refusal naming the checkpoint."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def closing_summary(options: SweepOptions, results: tune.ResultGrid, resume_with: str | None = None) -> str:
    """The lines printed when the sweep ends: errors and where the results are. The best setting is
    the report's to name (printed just before, in its labels, ranked as its tables rank settings)."""
    errored = [result for result in results if result.error]
    lines = [f"{len(results)} trials, {len(errored)} errored" + ("." if not errored else " after their retries:")]
    lines += [f"  {Path(result.path).name}: {exception_line(result.error)}" for result in errored]
    if errored and resume_with:
        lines.append(f"Once the cause is fixed, retry them from their last checkpoints: {resume_with}")
    if results and not any(result.metrics for result in results):
        lines.append("No trial finished an epoch: there is nothing to compare.")
    lines.append(
        f"Tables and summary: {options.experiment} (trials.parquet, epochs.parquet, comparison.parquet, summary.md)"
    )
    lines.append(f"TensorBoard: tensorboard --logdir {options.experiment}")
    return "\n".join(lines)
