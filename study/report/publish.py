"""Put a finished report in place as a whole, and clean up after reports that were killed.

    python -m study.report results/grad_clip      # stages every file, then publishes them together

A report is written into a private staging folder first (`.report-<host>-<pid>-…` inside a local
experiment, a local temporary folder for remote storage). Publishing then removes the old
summary.md, moves the tables and plots into place and puts the new summary.md last, so that a
summary, whenever there is one, describes the tables beside it: a crash part-way leaves new tables
and no summary, never new tables under an old summary. Plots the new report does not draw are
removed with it. On object stores each file appears whole (an upload is visible once complete);
the order is the same. Staging folders whose process is gone (killed reports) are removed the
next time a report runs in that folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from study.errors import StorageError
from study.report.reader import Location

STAGE_PREFIX = ".report-"
STALE_AFTER_S = 24 * 3600  # a stage of another host, whose process cannot be asked, is stale after a day


@contextlib.contextmanager
def staging(location: Location) -> Iterator[Path]:
    """A fresh folder to write the report into: inside a local experiment (so that the final
    renames stay on one filesystem), else a local temporary folder. Removed afterwards. A disk
    that is full or read-only while staging is StorageError naming the experiment: nothing of the
    report there before has changed."""
    if location.local is not None:
        remove_stale_stages(location.local)
    prefix = f"{STAGE_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    with _refused(location, "the report there before is unchanged"):
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=location.local))
    try:
        with _refused(location, "the report there before is unchanged"):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _refused(location: Location, kept: str) -> Iterator[None]:
    """A refused write inside (a raw OSError, or a StorageError naming a staged file) as one
    StorageError about the experiment's report; one raised by `publish` passes as it is."""
    try:
        yield
    except StorageError as error:
        if getattr(error, "about_report", False):
            raise
        raise _report_refused(location, error.cause, kept) from None
    except OSError as error:
        if (refused := StorageError.refused(error)) is None:
            raise
        raise _report_refused(location, refused.cause, kept) from None


def _report_refused(location: Location, cause: str, kept: str) -> StorageError:
    error = StorageError.about(location.show("").rstrip("/"), cause, kept, what="report")
    error.about_report = True  # said of the report as a whole: not to be said again
    return error


def remove_stale_stages(folder: Path) -> list[Path]:
    """Remove the staging folders in `folder` left by reports that no longer run; returns them."""
    removed = []
    for stage in folder.glob(f"{STAGE_PREFIX}*"):
        host, _, rest = stage.name[len(STAGE_PREFIX) :].rpartition("-")[0].rpartition("-")
        pid = rest if rest.isdigit() else ""
        if host == socket.gethostname() and pid:
            stale = not _running(int(pid))
        else:  # another host's, or an older name: by age
            stale = time.time() - stage.stat().st_mtime > STALE_AFTER_S
        if stale and stage.is_dir():
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def publish(stage: Path, files: list[str], summary: str, stale: list[str], location: Location) -> None:
    """Move `files` and then `summary` from `stage` into the experiment, the old summary removed
    first and the `stale` files (old plots the new report lacks) removed with it."""
    with _refused(location, "the report there before is unchanged"):
        _remove(location, summary)
    with _refused(location, f"published in part: no {summary} until a report is written whole"):
        for name in stale:
            _remove(location, name)
        for name in (*files, summary):
            if location.local is not None:
                os.replace(stage / name, location.local / name)
            else:
                pafs.copy_files(
                    str(stage / name),
                    f"{location.root}/{name}",
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=location.fs,
                )


def _remove(location: Location, name: str) -> None:
    if location.local is not None:
        (location.local / name).unlink(missing_ok=True)
    elif location.fs.get_file_info(f"{location.root}/{name}").type == pafs.FileType.File:
        location.fs.delete_file(f"{location.root}/{name}")
