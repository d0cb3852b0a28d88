"""Run a named study as Ray Tune trials with ASHA, then write its tables.

    python -m study.sweep smoke --data-dir ../shared/data/ptb          # seconds, on a laptop
    python -m study.sweep grad_clip --dry-run                          # the plan of the real study
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m study.sweep grad_clip --storage /shared/results

The study is a YAML file in search_spaces/ (see study/sweep/space_file.py). Results go to
`<storage>/<study>/`: Ray's experiment folder (checkpoints, TensorBoard events, progress) and the
report's tables. `--resume` continues an interrupted sweep without rerunning finished trials.
Trials that differ only in settings that act late train their shared first epochs once
(study/sweep/prefix.py, study/sweep/prefix_search.py); `--no-prefix-sharing` trains every trial from scratch.
Ctrl-C or SIGTERM stops a sweep, keeping its finished epochs (study/sweep/signals.py); what it says
at the end and its exit status: study/sweep/closing.py.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

import ray

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
from study.sweep.closing import closing_summary, exit_code
from study.sweep.credentials import credentials_to_environment, keep_out_of_runtime_env
from study.sweep.limits import PTB_VOCABULARY, check_memory, check_trial_count, machine_memory
from study.sweep.progress import SweepProgress
from study.sweep.resume import check_resumed_corpus, resume_command, starts_again, to_resume
from study.sweep.signals import Stopped, StopRequests
from study.sweep.space_file import load_space
from study.sweep.tuner import (
    SweepOptions,
    check_storage,
    experiment_exists,
    experiment_started,
    plan,
    plan_timing,
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
    if args.storage is not None and not args.storage.strip():
        raise UsageError(f"--storage {args.storage!r}: empty; allowed: a folder, or a URI (s3://bucket/path, gs://…)")
    space = load_space(args.space, epochs=args.epochs, seeds=args.seeds)
    if args.num_samples is not None and args.num_samples > 1 and not space.draws:
        raise UsageError(
            f"--num-samples {args.num_samples}: {space.path} draws nothing (grid only), so its repeats would be "
            "identical runs; allowed: 1, or more seeds with --seeds"
        )
    num_samples = args.num_samples or space.num_samples
    given = f"--num-samples {num_samples}" if args.num_samples else f"{space.path} (grid x seeds x num_samples)"
    check_trial_count(space.trial_count(num_samples), given)
    return SweepOptions(
        space=space,
        epochs=space.base_config().epochs,
        storage=storage_uri(args.storage or "results"),
        cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else space.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial if args.gpus_per_trial is not None else space.gpus_per_trial,
        num_samples=num_samples,
        max_failures=args.max_failures,
        resume=args.resume,
        verbose=args.verbose,
        prefix_sharing=not args.no_prefix_sharing,
    )


@main_with_errors
def main(argv: list[str] | None = None) -> int:
    stops = StopRequests()
    stops.install()  # Ctrl-C and SIGTERM alike, from here to the last line (study/sweep/signals.py)
    try:
        return sweep_command(parse_args(argv), stops)
    except Stopped as stopped:  # before the sweep began: nothing of it is written yet
        print(f"Stopped ({stopped}) before the sweep started; nothing was changed.")
        return stops.exit_status
    finally:
        stops.uninstall()


def sweep_command(args: argparse.Namespace, stops: StopRequests) -> int:
    options = options_from_args(args)
    check_storage(options.storage)
    study = {}
    if options.resume:
        args, options, study = to_resume(args, options, options_from_args)
    elif experiment_exists(options.experiment):
        raise UsageError(
            f"{redact(options.experiment)} already holds this study: add --resume to continue it, or choose another --storage"
        )
    elif experiment_started(options.experiment):  # killed before Ray saved anything: nothing to lose
        print(
            f"{redact(options.experiment)}: a sweep started here and stopped before Ray saved its state; "
            f"{starts_again(args)}"
        )
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not args.verbose:
        quiet_ray()
    here = [machine_memory()]  # a local Ray's trials run here; with an address, the plan's timing still does
    if args.dry_run:
        check_memory(options.space, PTB_VOCABULARY, here, "this machine", base_only=address is not None)
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
    check_resumed_corpus(study, corpus, options.experiment)
    options.space.check_corpus_fits(corpus)
    check_memory(options.space, len(corpus.vocab), here, "this machine", base_only=address is not None)
    if note := corpus.dropped_note():
        print(note)
    timing = plan_timing(options, corpus)  # before Ray starts, so that nothing else runs meanwhile
    again = resume_command(args, options, corpus.folder)  # as given: a URI's credentials show as ***
    if address is None:  # its processes inherit them: nothing Ray or study writes holds them
        options = replace(options, storage=credentials_to_environment(options.storage))
        keep_out_of_runtime_env()
    # Without an address, a private Ray of this process ("local"): ray.init() alone would join any
    # Ray already running on the machine. Ray 2.60 binds its servers to every interface (it turns a
    # loopback node address into the host's), and guards them with its token (~/.ray/auth_token).
    try:
        ray.init(
            address=address or "local",
            log_to_driver=False,
            include_dashboard=False if address is None else None,
            logging_level=logging.INFO if args.verbose else logging.WARNING,
        )
    except ConnectionError as error:  # an address that answered the probe, then not as a Ray
        flag = "--address" if args.address else "$RAY_ADDRESS"
        raise UsageError(f"{flag} {address}: {str(error).splitlines()[0]}") from None
    stops.install()  # ray.init set its own SIGTERM handler, which exits from inside Tune's loop
    nodes = live_nodes()
    check_shared_storage(args.storage is not None, nodes)
    if address is not None:
        check_memory(options.space, len(corpus.vocab), [node.memory for node in nodes])
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
    stops.on_stop = tracker.stop_requested  # says at once that it is stopping, and what to wait for
    try:
        outcome = run_sweep(options, corpus, [tracker, stops], resume_with=again)
    except KeyboardInterrupt:  # a second stop request while Tune saved its state, or one during the report
        outcome = None
    finally:
        tracker.close()
    if outcome is None and tracker.ended is not None and not tracker.interrupted:
        print(
            f"Stopped ({stops.signal_name}) while writing the report: every trial had "
            f"finished, and the report published before is whole; write it again with: "
            f"python -m study.report {redact(options.experiment)}"
        )
        return stops.exit_status
    if outcome is not None:
        if options.resume and not tracker.trials_started and not tracker.interrupted:
            print(f"The sweep in {redact(options.experiment)} had finished: nothing was left to run.")
        print(redact(closing_summary(options, outcome.results, again)))
    if outcome is None or tracker.interrupted:
        print(redact("\n".join(tracker.interruption_lines(options.experiment, again))))
        return stops.exit_status  # 130 (SIGINT) or 143 (SIGTERM), as a shell reports a stopped command
    return exit_code(outcome)
