"""The Ray Tune side of a sweep: its options, the plan printed before it starts, the Tuner built
(or restored) from a space, study.json beside Ray's state, and the fit followed by the report.
`python -m study.sweep` (study/sweep/cli.py) parses the command line into `SweepOptions` and calls
`run_sweep`; tests and benchmarks call it directly.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from ray import tune

from study import metrics as m
from study.errors import UsageError
from study.redact import redact
from study.report import ReportFailed, code_versions, git_state, write_report
from study.storage import check_output_folder, child_location, filesystem_and_path, write_bytes
from study.sweep.capacity import (
    Node,
    trials_at_once,
)
from study.sweep.estimate import Calibration, calibration, estimate_lines, trial_epochs
from study.sweep.prefix import SharingPlan, epochs_saved
from study.sweep.prefix_search import PrefixSearch
from study.sweep.spaces import Space
from study.sweep.state_copy import StateCopy, restore_whole_state
from study.sweep.trainable import train_trial, trial_threads
from study.sweep.trial_logs import LogsKept
from study.tables import STUDY_FILE
from study.train import Corpus


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
    verbose: bool = False  # Ray's own console output instead of study.sweep.progress's view
    prefix_sharing: bool = True  # train each shared prefix once (study/sweep/prefix.py)

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
# Where every process of a sweep reaches the same files (a local folder: the nodes' shared mount).
SHARED_FILESYSTEMS = tuple(
    getattr(pafs, name)
    for name in ("LocalFileSystem", "S3FileSystem", "GcsFileSystem", "HadoopFileSystem", "AzureFileSystem")
    if hasattr(pafs, name)
)


def check_storage(storage: str) -> None:
    """Refuse in one line, before anything starts, a --storage that cannot hold the results: a URI
    pyarrow cannot open, a store that does not answer within STORAGE_TIMEOUT_S, a local path below a
    file or in a folder this user cannot write."""
    allowed = "a folder, or a URI pyarrow opens (file://, s3://bucket/path, gs://bucket/path; options after ?)"
    try:
        filesystem, root = filesystem_and_path(storage)
    except (pa.ArrowException, ValueError, OSError) as error:
        raise UsageError(
            f"--storage {redact(storage)}: {redact(str(error).splitlines()[0])}; allowed: {allowed}"
        ) from None
    if not isinstance(filesystem, SHARED_FILESYSTEMS):  # pyarrow's mock:// lives in this process's memory
        raise UsageError(
            f"--storage {redact(storage)}: a {filesystem.type_name} filesystem, which Ray's trial processes "
            f"cannot reach; allowed: {allowed}"
        )
    if not root.strip("/"):
        raise UsageError(f"--storage {redact(storage)}: no bucket named; allowed: {allowed}")
    if isinstance(filesystem, pafs.LocalFileSystem):
        check_output_folder(root, "--storage")
        return
    answer: list[BaseException | None] = []
    probe = threading.Thread(target=lambda: answer.append(_reach(filesystem, root)), daemon=True)
    probe.start()
    probe.join(STORAGE_TIMEOUT_S)
    if not answer:
        raise UsageError(
            f"--storage {redact(storage)}: no answer within {STORAGE_TIMEOUT_S:g} s; check the endpoint and the network"
        )
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
    shared_epochs_saved: int = 0,  # trial-epochs that shared prefixes train once (study/sweep/prefix.py)
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
        f"{'?' if cluster_gpus is None else f'{cluster_gpus:g}'} GPUs"
        + (f" ({len(nodes)} nodes)" if nodes and len(nodes) > 1 else ""),
        f"  retries per trial: {options.max_failures}; results: {options.experiment}"
        + (" (resuming)" if options.resume else ""),
    ]
    counts = trial_epochs(space, options.epochs, options.num_samples, shared_epochs_saved)
    lines += estimate_lines(counts, timing, at_once)
    warning = space.decay_warning(options.epochs)
    if warning:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


# The module layout Ray's saved state refers to: it pickles the trainable and the search algorithm by
# module path (study.sweep.trainable.train_trial, study.sweep.prefix_search.PrefixSearch), so a sweep
# started before study 0.2 moved its modules into wings cannot be restored by this code (cli.to_resume).
LAYOUT = 2


@dataclass(frozen=True)
class SweepResult:
    results: tune.ResultGrid
    report_failure: str | None = None  # why the report's plots or summary failed (its tables are written)


def restored_run_config(tuner: tune.Tuner) -> tune.RunConfig:
    """The RunConfig a restored Tuner runs with (the first run's, from tuner.pkl), to be changed in
    place. Ray 2.60 offers no public way to change it after `Tuner.restore`; this is the one place
    that reads Ray's private `_local_tuner` (tests/test_sweep.py fails on the release that moves it)."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:  # a Ray Client (ray://) driver holds a remote tuner instead
        raise UsageError(
            "--resume: a sweep through a Ray Client address (ray://) cannot be resumed; run the driver on the cluster"
        )
    return local.get_run_config()


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
            child_location(path, space.name) if filesystem else options.experiment,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=filesystem,
        )
        # tuner.pkl holds the first run's RunConfig: this run's callbacks and verbosity replace its own.
        run_config = restored_run_config(tuner)
        run_config.callbacks, run_config.verbose = callbacks, None if options.verbose else 0
        return tuner
    return tune.Tuner(
        trainable,
        param_space=space.param_space(options.epochs),
        tune_config=tune.TuneConfig(
            scheduler=space.asha(options.epochs),
            num_samples=options.num_samples,
            search_alg=PrefixSearch(sharing) if sharing else None,
            # A trial starts in the worker of one that ended (same resources, every trial): not in a
            # new process that imports torch and Ray again, seconds a trial. Each trial sets its own
            # threads, seed and state; a worker that died or failed is never reused.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=space.name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=None if options.verbose else 0,  # 0: study.sweep.progress draws the progress instead
        ),
    )


def write_study_file(options: SweepOptions, corpus: Corpus, resume_with: str | None = None) -> None:
    """The study's own description beside Ray's state: what the report reads for provenance, and
    what --resume holds a continued sweep to. Written whole under a temporary name, then renamed.
    The planned_* counts are the plan's, so that a report of a sweep interrupted before Ray created
    most of its trials can say how much of the study is done."""
    filesystem, root = filesystem_and_path(options.experiment)
    filesystem.create_dir(root, recursive=True)
    space = options.space
    counts = trial_epochs(space, options.epochs, options.num_samples, saved_by_sharing(options))
    drawn = any(kind not in ("grid", "cases") for domain in space.vary.values() for kind in domain)
    study = {
        "layout": LAYOUT,
        "space": options.space.name,
        "space_text": options.space.text,
        "preset": options.space.preset,
        "epochs": options.epochs,
        "seeds": list(options.space.seeds) if options.space.seeds else None,
        "num_samples": options.num_samples,
        "cpus_per_trial": options.cpus_per_trial,  # --resume keeps them: threads and device make the results
        "gpus_per_trial": options.gpus_per_trial,
        "prefix_sharing": options.prefix_sharing,
        "resume_command": redact(resume_with) if resume_with else None,
        "varied": options.space.varied_keys(),
        "planned_trials": counts.trials,
        # Settings of the varied keys but seed; none to count where a trial draws its own (choice, uniform, ...).
        "planned_settings": None if drawn else space.trial_count(1, seeds=(0,)),
        "planned_trial_epochs": counts.full,  # every trial to its last epoch
        # ASHA's expected stops less the epochs shared prefixes train once: the plan's "expected" figure.
        "expected_trial_epochs": round(counts.planned, 1),
        "data_sha256": corpus.sha256,
        "versions": code_versions(),  # at sweep time: the code that trained, not the one that reports
        **git_state(),
    }
    write_bytes(f"{root}/{STUDY_FILE}", json.dumps(study, indent=2).encode(), filesystem)


def run_sweep(
    options: SweepOptions,
    corpus: Corpus,
    callbacks: list[tune.Callback] | None = None,
    resume_with: str | None = None,
) -> SweepResult:
    """Fit (or resume) the study on the Ray that is connected, then refresh its report.
    `resume_with`: the command that continues it, kept in study.json for the report."""
    if not options.resume:
        write_study_file(options, corpus, resume_with)
    elif note := restore_whole_state(options.experiment):  # Ray's last save was cut short: a full disk, say
        print(note, flush=True)
    keeper = StateCopy(options.experiment)  # a whole copy of Ray's state, put back by a later --resume
    with keeper.watching_ray():
        try:
            results = build_tuner(options, corpus, [*(callbacks or []), LogsKept(), keeper]).fit()
        except Exception as failure:  # a torn error.pkl in Ray's results, say: one line if storage refused
            keeper.check_saved(resume_with, failure)
            raise
    if note := keeper.check_saved(resume_with):
        print(note, flush=True)
    try:
        write_report(options.experiment)
    except (ReportFailed, UsageError) as error:  # a damaged state or a full disk after the trials ran: not bad input
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return SweepResult(results, str(error))
    return SweepResult(results)
