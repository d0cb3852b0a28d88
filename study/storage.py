"""Where study writes: local paths and URIs, output paths checked before any work, and the one
atomic write that every file study produces goes through.

    python -m study.train --preset test --save /etc/passwd/run.pt    # error: --save …: /etc/passwd is a file; …

`replacing(path)` hands out a temporary name beside `path` (`.<name>.<random>.tmp`) and renames it
into place only when the writer finished: a crash, a full disk or a refused download never leaves
half a file under the final name, and a whole one that was there stays until it is replaced. A disk
that is full, read-only or not this user's is said in one line (StorageError), not a traceback:

    error: /mnt/full/run.pt: not written (no space left on the device); the file there before is unchanged
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs

from study.errors import StorageError, UsageError


def filesystem_and_path(target: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a URI (file://, s3://, gs://, ...)."""
    if "://" in target:
        return pafs.FileSystem.from_uri(target)
    return pafs.LocalFileSystem(), Path(target).expanduser().resolve().as_posix()


def child_location(location: str, name: str) -> str:
    """`location`/`name` for a folder or a URI; a URI keeps its query (s3://bucket/path?endpoint_override=…)."""
    if "://" not in location:
        return f"{location.rstrip('/')}/{name}"
    parts = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def split_location(location: str) -> tuple[str, str]:
    """(parent, name) of a folder or a URI, the inverse of `child_location`."""
    if "://" not in location:
        parent, _, name = location.rstrip("/").rpartition("/")
        return parent or ".", name
    parts = urllib.parse.urlsplit(location)
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    return urllib.parse.urlunsplit(parts._replace(path=parent)), name


@contextlib.contextmanager
def replacing(path: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> Iterator[str]:
    """Yield a temporary name beside `path` to write the whole file to; on success it is renamed to
    `path`, on any failure removed. `filesystem`: where `path` is (pyarrow's; default the local disk,
    whose parent folders are made). The name is fresh, so the file gets the process's umask like
    every other file (mkstemp would make it 0600: unreadable to a teammate on shared storage).
    A full, read-only or forbidden disk raises StorageError: one line naming `path` and the cause."""
    if filesystem is None:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with refused_writes(path, lambda: path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                yield str(temporary)
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(OSError):  # never made, or on a disk that refuses even this
                    temporary.unlink(missing_ok=True)
        return
    folder, _, name = str(path).rpartition("/")
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    with refused_writes(path, lambda: filesystem.get_file_info(str(path)).type == pafs.FileType.File):
        try:
            yield temporary
            filesystem.move(temporary, str(path))  # on object stores the upload is visible only once whole
        except BaseException:
            with contextlib.suppress(OSError):
                filesystem.delete_file(temporary)
            raise


@contextlib.contextmanager
def refused_writes(path: str | os.PathLike, existed: Callable[[], bool] | None = None) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk under the writes inside into StorageError, one line
    naming `path` and the cause; `existed()` says whether a file is still at `path` (it was not replaced)."""
    try:
        yield
    except OSError as error:
        kept = None
        if existed is not None:
            try:
                kept = "the file there before is unchanged" if existed() else "nothing was written there"
            except OSError:
                kept = None
        refused = StorageError.refused(error, path, kept or "")
        if refused is None:
            raise
        raise refused from None


def write_bytes(path: str | os.PathLike, data: bytes, filesystem: pafs.FileSystem | None = None) -> None:
    """Write `data` to `path` whole (see `replacing`)."""
    with replacing(path, filesystem) as temporary:
        if filesystem is None:
            Path(temporary).write_bytes(data)
        else:
            with filesystem.open_output_stream(temporary) as stream:
                stream.write(data)


def nearest_existing(path: Path) -> Path:
    """`path` or the closest of its parents that exists (the folder a new path would be made in)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_output_folder(path: str | os.PathLike, flag: str, given: str | os.PathLike | None = None) -> None:
    """`path` is, or can be made as, a folder this user writes in; errors show `given` (the flag's value)."""
    given = path if given is None else given
    existing = nearest_existing(Path(path))
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder (a device, pipe or socket)"
        raise UsageError(f"{flag} {given}: {existing} is {what}; allowed: a path in a folder this user can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only filesystem" if _read_only(existing) else "is not writable by this user"
        raise UsageError(f"{flag} {given}: {existing} {why}; allowed: a path in a folder this user can write")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made. Not a
    device, pipe or socket either: the write renames a new file over it (as root, /dev/null too)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; allowed: a file path (its folder is made if missing)")
    if path.exists() and not path.is_file():
        raise UsageError(
            f"{flag} {path}: is not a regular file (a device, pipe or socket); allowed: a file path "
            "(its folder is made if missing)"
        )
    check_output_folder(path.parent, flag, given=path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: is not writable by this user")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
