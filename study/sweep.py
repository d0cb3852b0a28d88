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
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray
from ray import tune

from study import metrics as m
from study.data import DATA_ENV, Corpus, load_corpus
from study.errors import UsageError, main_with_errors
from study.estimate import Calibration, calibration, estimate_lines, trial_epochs
from study.prefix import SharingPlan, epochs_saved
from study.prefix_search import PrefixSearch
from study.progress import SweepProgress, quiet_ray, start_board
from study.report import child_location, code_versions, filesystem_and_path, git_state, write_report
from study.spaces import Space, load_space, trial_config
from study.trainable import train_trial, trial_threads
from study.train import available_cpus

STUDY_FILE = "study.json"  # what the report needs to know about the study, beside Ray's state


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


def experiment_exists(experiment: str) -> bool:
    filesystem, root = filesystem_and_path(experiment)
    return filesystem.get_file_info(f"{root}/{STUDY_FILE}").type != pafs.FileType.NotFound or any(
        info.base_name.startswith("experiment_state")
        for info in (
            filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        )
    )


def trials_at_once(options: SweepOptions, cluster_cpus: float | None, cluster_gpus: float | None) -> int | None:
    """How many trials the cluster holds at once; None when its CPUs are unknown (before joining it)."""
    if not cluster_cpus:
        return None
    limits = [cluster_cpus // options.cpus_per_trial]
    if options.gpus_per_trial:
        limits.append((cluster_gpus or 0) // options.gpus_per_trial)
    return int(min(limits))


def plan_timing(options: SweepOptions, corpus: Corpus | None) -> Calibration | str:
    """Seconds per epoch of one trial here: cached, or timed on `corpus` with a trial's threads and device."""
    threads = trial_threads({"CPU": options.cpus_per_trial})
    return calibration(options.space.base_config(), corpus, threads, "cuda" if options.gpus_per_trial else "cpu")


def saved_by_sharing(options: SweepOptions) -> int:
    """Trial-epochs that shared prefixes train once instead of once per trial; 0 with --no-prefix-sharing."""
    return epochs_saved(options.space, options.epochs, options.num_samples) if options.prefix_sharing else 0


def plan(
    options: SweepOptions,
    cluster_cpus: float | None,
    cluster_gpus: float | None,
    timing: Calibration | str | None = None,
    shared_epochs_saved: int = 0,  # trial-epochs that shared prefixes train once (study/prefix.py)
) -> str:
    """What the sweep will do, printed before it starts (and alone with --dry-run)."""
    space = options.space
    trials = space.trial_count(options.num_samples)
    at_once = trials_at_once(options, cluster_cpus, cluster_gpus)
    concurrency = "?" if at_once is None else str(at_once)
    lines = [
        f"Study '{space.name}' ({space.path}): {space.description.strip()}",
        f"  preset {space.preset}, {options.epochs} epochs per trial, varying {', '.join(space.varied_keys()) or 'nothing'}",
        f"  trials: {trials}, ASHA on {m.OBJECTIVE} ({m.MODE}) with rungs at epochs {space.rungs(options.epochs)} "
        f"(grace period {space.scheduler.grace_period}, reduction factor {space.scheduler.reduction_factor}, "
        f"brackets {space.scheduler.brackets}, max_t {options.epochs})",
        f"  resources per trial: {options.cpus_per_trial:g} CPU, {options.gpus_per_trial:g} GPU; "
        f"{concurrency} trials at once on {cluster_cpus or '?'} CPUs and {cluster_gpus or 0:g} GPUs",
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
    if options.resume:
        tuner = tune.Tuner.restore(options.experiment, trainable, resume_unfinished=True, resume_errored=True)
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
            storage_path=options.storage,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=None if options.verbose else 0,  # 0: study.progress draws the progress instead
        ),
    )


def write_study_file(options: SweepOptions, corpus: Corpus) -> None:
    """The study's own description beside Ray's state: what the report reads for provenance."""
    filesystem, root = filesystem_and_path(options.experiment)
    filesystem.create_dir(root, recursive=True)
    study = {
        "space": options.space.name,
        "space_text": options.space.text,
        "preset": options.space.preset,
        "epochs": options.epochs,
        "varied": options.space.varied_keys(),
        "data_sha256": corpus.sha256,
        "versions": code_versions(),  # at sweep time: the code that trained, not the one that reports
        **git_state(),
    }
    with filesystem.open_output_stream(f"{root}/{STUDY_FILE}") as stream:
        stream.write(json.dumps(study, indent=2).encode())


def run_sweep(options: SweepOptions, corpus: Corpus, callbacks: list[tune.Callback] | None = None) -> tune.ResultGrid:
    """Fit (or resume) the study on the Ray that is connected, then refresh its report."""
    if not options.resume:
        write_study_file(options, corpus)
    results = build_tuner(options, corpus, callbacks).fit()
    write_report(options.experiment)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("space", help="a study in search_spaces/ (grad_clip, clip_modes, lr_schedules, smoke) or a YAML path")
    parser.add_argument("--data-dir", help=f"folder with ptb.{{train,valid,test}}.txt (else ${DATA_ENV}, the cache, a download)")
    parser.add_argument("--storage", default="results", help="where results go: a folder or a URI every node reaches (default results/)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS as set by ray job submit, else a local Ray)")
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
        value = getattr(args, flag)
        if value is not None and (value < 0 or (value == 0 and flag in ("cpus_per_trial", "num_samples", "epochs"))):
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be {'at least 0' if flag in ('gpus_per_trial', 'max_failures') else 'positive'}")
    space = load_space(args.space, epochs=args.epochs, seeds=args.seeds)
    return SweepOptions(
        space=space,
        epochs=space.base_config().epochs,
        storage=storage_uri(args.storage),
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
    exists = experiment_exists(options.experiment)
    if options.resume and not exists:
        raise UsageError(f"--resume: no sweep to continue in {options.experiment}")
    if not options.resume and exists:
        raise UsageError(f"{options.experiment} already holds this study: add --resume to continue it, or choose another --storage")
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not args.verbose:
        quiet_ray()
    if args.dry_run:
        cpus = None if address else available_cpus()
        timing = plan_timing(options, None)  # the cache, else time on the data if it is here (no download)
        if isinstance(timing, str):
            try:
                timing = plan_timing(options, load_corpus(args.data_dir, urls=()))
            except UsageError as error:  # a wrong --data-dir says so; no data at all keeps the reason above
                timing = str(error) if args.data_dir else timing
        print(plan(options, cpus, None if address else 0, timing, saved_by_sharing(options)))
        return 0
    corpus = load_corpus(args.data_dir)  # before Ray starts: a data problem is one line, not a trial error
    timing = plan_timing(options, corpus)  # before Ray starts, so that nothing else runs meanwhile
    ray.init(
        address=address, log_to_driver=False, include_dashboard=False if address is None else None,
        logging_level=logging.INFO if args.verbose else logging.WARNING,
    )
    resources = ray.cluster_resources()
    print(plan(options, resources.get("CPU"), resources.get("GPU", 0), timing, saved_by_sharing(options)), flush=True)
    tracker = SweepProgress.for_sweep(
        options.space, options.epochs, options.num_samples, timing,
        trials_at_once(options, resources.get("CPU"), resources.get("GPU", 0)), start_board(), verbose=args.verbose,
        shared_epochs_saved=saved_by_sharing(options),
    )
    try:
        results = run_sweep(options, corpus, [tracker])
    except KeyboardInterrupt:  # a second Ctrl-C, while Tune was saving its state
        results = None
    finally:
        tracker.close()
    if results is not None:
        print(closing_summary(options, results))
    if results is None or tracker.interrupted:
        print("\n".join(tracker.interruption_lines(options.experiment, resume_command(args, options, corpus.folder))))
        return 130  # as a shell reports a command stopped by SIGINT
    return 1 if any(result.error for result in results) else 0


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


def closing_summary(options: SweepOptions, results: tune.ResultGrid) -> str:
    errored = [result for result in results if result.error]
    lines = [f"{len(results)} trials, {len(errored)} errored" + ("." if not errored else " after their retries:")]
    lines += [f"  {Path(result.path).name}: {error_line(result.error)}" for result in errored]
    try:
        best = results.get_best_result(metric=m.OBJECTIVE, mode=m.MODE, scope="all", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported a finite valid_ppl yet (interrupted early, or all diverged)
        best = None
    if best and best.metrics:
        config = trial_config(best.config, options.space.preset).model_dump()
        setting = {key: config[key] for key in options.space.varied_keys()}
        lines.append(f"Best {m.OBJECTIVE}: {best.metrics_dataframe[m.OBJECTIVE].min():.2f} with {setting}")
    lines.append(f"Tables and summary: {options.experiment} (trials.parquet, epochs.parquet, comparison.parquet, summary.md)")
    lines.append(f"TensorBoard: tensorboard --logdir {options.experiment}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
