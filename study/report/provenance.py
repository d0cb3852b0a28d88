"""What produced a report: the study's space and data, the code that trained, library versions.

    python -m study.report results/grad_clip --provenance

The sweep records the code when it starts (`code_versions`, `git_state`, a hash of the package
sources) in study.json; the report copies that into every table's metadata. A report never fills in
its own checkout's commit for a sweep that recorded none (a job packed without .git, say).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

import study
from study import metrics as m
from study.errors import UsageError
from study.redact import redact
from study.report.collect import Experiment
from study.storage import child_location, filesystem_and_path, split_location
from study.tables import TRIALS, read_provenance


def provenance(experiment: Experiment) -> dict[str, Any]:
    """What produced the tables: the study's space file and data, the code and library versions."""
    study_info = experiment.study
    described = space_description(study_info.get("space_text"))
    versions = study_info.get("versions") or code_versions()
    recorded = "git_commit" in study_info or "source_sha256" in study_info
    return {
        "experiment": redact(experiment.location.given),
        "space": study_info.get("space"),
        "description": described,
        "preset": study_info.get("preset"),
        "epochs": study_info.get("epochs"),
        "varied": study_info.get("varied"),
        "trials": len(experiment.trials),
        "machines": machines(experiment.epochs),
        "space_text": study_info.get("space_text"),
        "data_sha256": study_info.get("data_sha256"),
        "versions": versions,
        "versions_from": "study.json (sweep time)" if study_info.get("versions") else "report time",
        # The code that trained, as the sweep recorded it; never this (reporting) checkout's.
        "source_sha256": study_info.get("source_sha256") if recorded else NOT_RECORDED,
        "git_commit": study_info.get("git_commit") if recorded else NOT_RECORDED,
        "git_dirty": study_info.get("git_dirty") if recorded else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


NOT_RECORDED = "unknown (not recorded at sweep time)"


def machines(epochs: pd.DataFrame) -> dict[str, int]:
    """The processors that trained the experiment's epochs, with how many each (epochs a trial took
    from a shared prefix count once, for the trial that trained them): the GPU's name where one
    trained, else the CPU's model. Floating-point results differ between processors in their last
    bits, and the training at learning rate 1 grows such differences to tenths of a percent."""
    trained = epochs[~epochs[m.SHARED_PREFIX].astype(bool)] if m.SHARED_PREFIX in epochs else epochs
    if trained.empty:
        return {}
    names = pd.Series(pd.NA, index=trained.index, dtype=object)
    for column in (m.CPU, m.GPU):  # the GPU's name wins where both were recorded
        if column in trained:
            names = trained[column].where(trained[column].notna() & trained[column].ne(""), names)
    counts = names.fillna(UNRECORDED_MACHINE).value_counts(sort=False)
    return {str(name): int(count) for name, count in counts.sort_values(ascending=False, kind="stable").items()}


UNRECORDED_MACHINE = "not recorded"  # epochs of a sweep whose code predates the record (before 2026-12-04)


def trained_by(experiment: Experiment) -> str:
    """One line for the summary: the code (commit, versions) and the processors that trained."""
    info = experiment.study
    commit = info.get("git_commit")
    code = (
        f"commit `{commit[:12]}`" + (" with uncommitted changes" if info.get("git_dirty") else "") if commit else "code"
    )
    versions = info.get("versions")
    if versions:
        code += (
            " ("
            + ", ".join(f"{name} {versions[name]}" for name in ("study", "torch", "ray") if versions.get(name))
            + ")"
        )
    where = machines(experiment.epochs)
    named = [
        f"{count} epochs on " + ("a processor its code did not record" if name == UNRECORDED_MACHINE else name)
        for name, count in where.items()
    ]
    return code + (": " + "; ".join(named) if named else ", no epoch trained yet")


SOURCES = ("study/**/*.py", "search_spaces/*.yaml")  # what the hash covers, relative to the package's parent


def source_hash(root: Path | None = None) -> str:
    """sha256 over the package's sources, every wing's included, and the shipped spaces (relative
    path and bytes of each file, in sorted order): the same code gives the same hash in a checkout,
    an install or a Ray job's unpacked working dir, with or without .git. `root`: the folder that
    holds study/ (default: this package's)."""
    root = root or Path(study.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(path for pattern in SOURCES for path in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_versions() -> dict[str, str | None]:
    """Versions of the code that trains and reports: study, torch, Ray, Python, pandas."""
    return {
        "study": study.__version__,
        "torch": _version("torch"),
        "ray": _version("ray"),
        "python": platform.python_version(),
        "pandas": pd.__version__,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """The hash of the sources that run (`source_sha256`), HEAD of the checkout they run from and
    whether its tracked files had changes; the git fields are None without git or outside a checkout
    (a Ray job's working dir is packed without .git: the hash still says which code it was)."""
    return {"source_sha256": source_hash(), **_git_head()}


def _git_head() -> dict[str, Any]:
    for folder in (Path(study.__file__).resolve().parent,):
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
            if head.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            break
        return {
            "git_commit": head.stdout.strip(),
            "git_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
        }
    return {"git_commit": None, "git_dirty": None}


def space_description(space_text: str | None) -> str | None:
    if not space_text:
        return None
    import yaml

    try:
        parsed = yaml.safe_load(space_text)
    except yaml.YAMLError:
        return None
    description = parsed.get("description") if isinstance(parsed, dict) else None
    return " ".join(str(description).split()) if description else None


def print_provenance(target: str) -> None:
    """Print the provenance of a report table (a .parquet file, or trials.parquet of a folder)."""
    table = target if split_location(target)[1].endswith(".parquet") else child_location(target, TRIALS)
    try:
        fs, path = filesystem_and_path(table)
        found = fs.get_file_info(path).type == pafs.FileType.File
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UsageError(f"{table}: cannot open ({str(error).splitlines()[0]})") from None
    if not found:
        raise UsageError(
            f"{table}: no such table, expected a report table: run `python -m study.report {target}` first"
        )
    try:
        prov = read_provenance(path, filesystem=fs)
    except (pa.ArrowException, OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{table}: not a readable Parquet table ({str(error).splitlines()[0]})") from None
    if not prov:
        raise UsageError(f"{table}: the table carries no provenance, expected a table written by study.report")
    print(format_provenance(prov))


def format_provenance(prov: dict[str, Any]) -> str:
    lines = []
    for key, value in prov.items():
        if key == "space_text":
            continue
        if isinstance(value, dict) and any(len(str(v)) > 20 for v in value.values()):
            lines.append(f"{key}:")
            lines.extend(f"    {k}  {v}" for k, v in value.items())
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"{key}: {value}")
    if prov.get("space_text"):
        lines.append("space file:")
        lines.extend("    " + line for line in prov["space_text"].rstrip("\n").splitlines())
    return "\n".join(lines)
