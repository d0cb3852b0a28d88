"""Run a named study as Ray Tune trials with ASHA, then write its tables.

    python -m study.sweep smoke --data-dir ../shared/data/ptb          # seconds, on a laptop
    python -m study.sweep grad_clip --dry-run                          # the plan of the real study
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m study.sweep grad_clip --storage /shared/results

The study is a YAML file in search_spaces/ (see study/spaces.py). Results go to
`<storage>/<study>/`: Ray's experiment folder (checkpoints, TensorBoard events, progress) and the
report's tables. `--resume` continues an interrupted sweep without rerunning finished trials.
Trials that differ only in settings that act late train their shared first epochs once
(study/prefix.py, study/prefix_search.py); `--no-prefix-sharing` trains every trial from scratch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray import tune

from study import metrics as m
from study.capacity import (
    Node, autoscaling, check_address, check_capacity, check_resource_flag, check_shared_storage, live_nodes, trials_at_once,
)
from study.data import DATA_ENV, Corpus, load_corpus
from study.errors import UsageError, main_with_errors
from study.outputs import check_output_folder
from study.estimate import Calibration, calibration, estimate_lines, trial_epochs
from study.prefix import SharingPlan, epochs_saved
from study.prefix_search import PrefixSearch
from study.progress import SweepProgress, quiet_ray, start_board
from study.redact import redact
from study.collect import STUDY_FILE
from study.experiment_reader import child_location, filesystem_and_path
from study.provenance import code_versions, git_state
from study.report import ReportFailed, write_report
from study.spaces import Space, load_space, trial_config
from study.trainable import train_trial, trial_threads
from study.train import available_cpus



@dataclass(frozen=True)
class SweepOptions:
    space: Space
    epochs: int
    storage: str  # a local folder or a URI Ray accepts (s3://, gs://, file://)
    cpus_per_trial: float
    gpus_per_trial: float
    num_samples: int
    max_failures: int = 2
    resume: bool = False
    verbose: bool = False  # Ray's own console output instead of study.progress's view
    prefix_sharing: bool = True  # train each shared prefix once (study/prefix.py)

    @property
    def experiment(self) -> str:
        return child_location(self.storage, self.space.name)

    def sharing(self) -> SharingPlan | None:
        """The sweep's shared prefixes; None with --no-prefix-sharing or when no two trials share one."""
        if not self.prefix_sharing:
            return None
        return SharingPlan.for_sweep(self.space, self.epochs, self.num_samples, self.experiment)


def storage_uri(path: str) -> str:
    """Ray wants an absolute local path or a URI; relative paths are taken from the current folder."""
    return path if "://" in path else str(Path(path).resolve())


def ray_storage(storage: str) -> tuple[str, pafs.FileSystem | None]:
    """Where Ray keeps the experiment: a URI goes as its filesystem and a bare path, so that the
    credentials a URI may carry stay out of the paths Ray writes into its own files."""
    if "://" not in storage or storage.startswith("file://"):
        return storage, None
    filesystem, path = pafs.FileSystem.from_uri(storage)
    return path, filesystem


STORAGE_TIMEOUT_S = 20.0


def check_storage(storage: str) -> None:
    """Refuse in one line, before anything starts, a --storage that cannot hold the results: a URI
    pyarrow cannot open, a store that does not answer within STORAGE_TIMEOUT_S, a local path below a
    file or in a folder this user cannot write."""
    allowed = "a folder, or a URI pyarrow opens (file://, s3://bucket/path, gs://bucket/path; options after ?)"
    try:
        filesystem, root = filesystem_and_path(storage)
    except (pa.ArrowException, ValueError, OSError) as error:
        raise UsageError(f"--storage {redact(storage)}: {redact(str(error).splitlines()[0])}; allowed: {allowed}") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        check_output_folder(root, "--storage")
        return
    answer: list[BaseException | None] = []
    probe = threading.Thread(target=lambda: answer.append(_reach(filesystem, root)), daemon=True)
    probe.start()
    probe.join(STORAGE_TIMEOUT_S)
    if not answer:
        raise UsageError(f"--storage {redact(storage)}: no answer within {STORAGE_TIMEOUT_S:g} s; check the endpoint and the network")
    if answer[0] is not None:
        raise UsageError(f"--storage {redact(storage)}: {redact(str(answer[0]).splitlines()[0])}")


def _reach(filesystem: pafs.FileSystem, root: str) -> BaseException | None:
    try:
        filesystem.get_file_info(root)
    except Exception as error:  # whatever the store says (refused, denied, no such bucket) goes into the line
        return error
    return None


def experiment_exists(experiment: str) -> bool:
    """Whether `experiment` holds a sweep that --resume can continue: Ray's tuner.pkl is there."""
    return tune.Tuner.can_restore(experiment)


def experiment_started(experiment: str) -> bool:
    """Whether a sweep began in `experiment` (its folder exists), resumable or not."""
    filesystem, root = filesystem_and_path(experiment)
    return filesystem.get_file_info(root).type != pafs.FileType.NotFound


def read_study_file(experiment: str) -> dict:
    """study.json of `experiment` ({} when absent or unreadable: then nothing is checked against it)."""
    filesystem, root = filesystem_and_path(experiment)
    try:
        with filesystem.open_input_stream(f"{root}/{STUDY_FILE}") as stream:
            study = json.loads(stream.read())
    except (OSError, ValueError):
        return {}
    return study if isinstance(study, dict) else {}


def plan_timing(options: SweepOptions, corpus: Corpus | None) -> Calibration | str:
    """Seconds per epoch of one trial here: cached, or timed on `corpus` with a trial's threads and device."""
    threads = trial_threads({"CPU": options.cpus_per_trial})
    return calibration(options.space.base_config(), corpus, threads, "cuda" if options.gpus_per_trial else "cpu")


def saved_by_sharing(options: SweepOptions) -> int:
    """Trial-epochs that shared prefixes train once instead of once per trial; 0 with --no-prefix-sharing."""
    return epochs_saved(options.space, options.epochs, options.num_samples) if options.prefix_sharing else 0


def plan(
    options: SweepOptions,
    nodes: list[Node] | None,  # the Ray's live nodes; None before joining a cluster
    timing: Calibration | str | None = None,
    shared_epochs_saved: int = 0,  # trial-epochs that shared prefixes train once (study/prefix.py)
) -> str:
    """What the sweep will do, printed before it starts (and alone with --dry-run)."""
    space = options.space
    trials = space.trial_count(options.num_samples)
    at_once = trials_at_once(options.cpus_per_trial, options.gpus_per_trial, nodes)
    concurrency = "?" if at_once is None else str(at_once)
    cluster_cpus = sum(node.cpus for node in nodes) if nodes else None
    cluster_gpus = sum(node.gpus for node in nodes) if nodes else None
    lines = [
        f"Study '{space.name}' ({space.path}): {space.description.strip()}",
        f"  preset {space.preset}, {options.epochs} epochs per trial, varying {', '.join(space.varied_keys()) or 'nothing'}",
        f"  trials: {trials}, ASHA on {m.OBJECTIVE} ({m.MODE}) with rungs at epochs {space.rungs(options.epochs)} "
        f"(grace period {space.scheduler.grace_period}, reduction factor {space.scheduler.reduction_factor}, "
        f"brackets {space.scheduler.brackets}, max_t {options.epochs})",
        f"  resources per trial: {options.cpus_per_trial:g} CPU, {options.gpus_per_trial:g} GPU; "
        f"{concurrency} trials at once on {'?' if cluster_cpus is None else f'{cluster_cpus:g}'} CPUs and "
        f"{'?' if cluster_gpus is None else f'{cluster_gpus:g}'} GPUs" + (f" ({len(nodes)} nodes)" if nodes and len(nodes) > 1 else ""),
        f"  retries per trial: {options.max_failures}; results: {options.experiment}" + (" (resuming)" if options.resume else ""),
    ]
    counts = trial_epochs(space, options.epochs, options.num_samples, shared_epochs_saved)
    lines += estimate_lines(counts, timing, at_once)
    warning = space.decay_warning(options.epochs)
    if warning:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def build_tuner(options: SweepOptions, corpus: Corpus, callbacks: list[tune.Callback] | None = None) -> tune.Tuner:
    space = options.space
    sharing = options.sharing()
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, corpus=corpus, preset=space.preset, sharing=sharing),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    path, filesystem = ray_storage(options.storage)
    if options.resume:
        tuner = tune.Tuner.restore(
            child_location(path, space.name) if filesystem else options.experiment, trainable,
            resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem,
        )
        # tuner.pkl holds the first run's RunConfig: this run's callbacks and verbosity replace its own.
        run_config = tuner._local_tuner.get_run_config()
        run_config.callbacks, run_config.verbose = callbacks, None if options.verbose else 0
        return tuner
    return tune.Tuner(
        trainable,
        param_space=space.param_space(options.epochs),
        tune_config=tune.TuneConfig(
            scheduler=space.asha(options.epochs), num_samples=options.num_samples,
            search_alg=PrefixSearch(sharing) if sharing else None,
        ),
        run_config=tune.RunConfig(
            name=space.name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=None if options.verbose else 0,  # 0: study.progress draws the progress instead
        ),
    )


def write_study_file(options: SweepOptions, corpus: Corpus, resume_with: str | None = None) -> None:
    """The study's own description beside Ray's state: what the report reads for provenance, and
    what --resume holds a continued sweep to. Written whole under a temporary name, then renamed."""
    filesystem, root = filesystem_and_path(options.experiment)
    filesystem.create_dir(root, recursive=True)
    study = {
        "space": options.space.name,
        "space_text": options.space.text,
        "preset": options.space.preset,
        "epochs": options.epochs,
        "seeds": list(options.space.seeds) if options.space.seeds else None,
        "num_samples": options.num_samples,
        "prefix_sharing": options.prefix_sharing,
        "resume_command": redact(resume_with) if resume_with else None,
        "varied": options.space.varied_keys(),
        "data_sha256": corpus.sha256,
        "versions": code_versions(),  # at sweep time: the code that trained, not the one that reports
        **git_state(),
    }
    with filesystem.open_output_stream(f"{root}/{STUDY_FILE}.partial") as stream:
        stream.write(json.dumps(study, indent=2).encode())
    filesystem.move(f"{root}/{STUDY_FILE}.partial", f"{root}/{STUDY_FILE}")


def run_sweep(
    options: SweepOptions, corpus: Corpus, callbacks: list[tune.Callback] | None = None, resume_with: str | None = None,
) -> tune.ResultGrid:
    """Fit (or resume) the study on the Ray that is connected, then refresh its report.
    `resume_with`: the command that continues it, kept in study.json for the report."""
    if not options.resume:
        write_study_file(options, corpus, resume_with)
    results = build_tuner(options, corpus, callbacks).fit()
    try:
        write_report(options.experiment)
    except ReportFailed as error:  # the tables are written; the sweep still ends non-zero
        print(f"error: {redact(str(error))}", file=sys.stderr)
        results.report_failure = str(error)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("space", help="a study in search_spaces/ (grad_clip, clip_modes, lr_schedules, smoke) or a YAML path")
    parser.add_argument("--data-dir", help=f"folder with ptb.{{train,valid,test}}.txt (else ${DATA_ENV}, the cache, a download)")
    parser.add_argument(
        "--storage", help="where results go: a folder or a URI every node reaches (default results/; required on a cluster or as a Ray job)",
    )
    parser.add_argument(
        "--address", default=None,
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
    parser.add_argument("--verbose", action="store_true", help="Ray Tune's own console output instead of the compact progress view")
    parser.add_argument(
        "--no-prefix-sharing", action="store_true",
        help="train every trial from its first epoch, even those that share their first epochs with others (same results)",
    )
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    for flag in ("cpus_per_trial", "gpus_per_trial", "num_samples", "epochs", "max_failures"):
        check_resource_flag(f"--{flag.replace('_', '-')}", getattr(args, flag), positive=flag in ("cpus_per_trial", "num_samples", "epochs"))
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
        raise UsageError(f"{redact(options.experiment)} already holds this study: add --resume to continue it, or choose another --storage")
    elif experiment_started(options.experiment):  # killed before Ray saved anything: nothing to lose
        print(f"{redact(options.experiment)}: a sweep started here and stopped before Ray saved its state; starting it again")
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
        address=address or "local", log_to_driver=False, include_dashboard=False if address is None else None,
        logging_level=logging.INFO if args.verbose else logging.WARNING,
    )
    nodes = live_nodes()
    check_shared_storage(args.storage is not None, nodes)
    capacity_warning = check_capacity(options.cpus_per_trial, options.gpus_per_trial, nodes, autoscaling())
    print(redact(plan(options, nodes, timing, saved_by_sharing(options))), flush=True)
    if capacity_warning:
        print(capacity_warning, flush=True)
    tracker = SweepProgress.for_sweep(
        options.space, options.epochs, options.num_samples, timing,
        trials_at_once(options.cpus_per_trial, options.gpus_per_trial, nodes), start_board(), verbose=args.verbose,
        shared_epochs_saved=saved_by_sharing(options),
    )
    again = resume_command(args, options, corpus.folder)
    try:
        results = run_sweep(options, corpus, [tracker], resume_with=again)
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune was saving its state
        results = None
    finally:
        tracker.close()
    if results is not None:
        print(redact(closing_summary(options, results, again)))
    if results is None or tracker.interrupted:
        print(redact("\n".join(tracker.interruption_lines(options.experiment, again))))
        return 130  # as a shell reports a command stopped by SIGINT
    return exit_code(results)


def exit_code(results: tune.ResultGrid) -> int:
    """1 when a trial ended in error after its retries, no trial finished an epoch, or the report's
    plots or summary failed; else 0."""
    failed = any(result.error for result in results) or getattr(results, "report_failure", None)
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
        raise UsageError(f"--no-prefix-sharing: the sweep in {where} started with shared prefixes, and continues with them")
    filled = argparse.Namespace(**{
        **vars(args), **{flag: value for flag, value in started.items() if value is not None},
        "no_prefix_sharing": args.no_prefix_sharing or study.get("prefix_sharing") is False,
    })
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


def error_line(error: BaseException) -> str:
    """The last line of a trial's error: for a StateError, the refusal naming the checkpoint."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def closing_summary(options: SweepOptions, results: tune.ResultGrid, resume_with: str | None = None) -> str:
    """The lines printed when the sweep ends: errors, the best setting, where the results are."""
    errored = [result for result in results if result.error]
    lines = [f"{len(results)} trials, {len(errored)} errored" + ("." if not errored else " after their retries:")]
    lines += [f"  {Path(result.path).name}: {error_line(result.error)}" for result in errored]
    if errored and resume_with:
        lines.append(f"Once the cause is fixed, retry them from their last checkpoints: {resume_with}")
    try:
        best = results.get_best_result(metric=m.OBJECTIVE, mode=m.MODE, scope="all", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported a finite valid_ppl yet (interrupted early, or all diverged)
        best = None
    history = best.metrics_dataframe if best is not None else None
    if history is not None and m.OBJECTIVE in history:
        config = trial_config(best.config, options.space.preset).model_dump()
        setting = {key: config[key] for key in options.space.varied_keys()}
        lines.append(f"Best {m.OBJECTIVE}: {history[m.OBJECTIVE].min():.2f} with {setting}")
    elif results and not any(result.metrics for result in results):
        lines.append("No trial finished an epoch: there is nothing to compare.")
    lines.append(f"Tables and summary: {options.experiment} (trials.parquet, epochs.parquet, comparison.parquet, summary.md)")
    lines.append(f"TensorBoard: tensorboard --logdir {options.experiment}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
