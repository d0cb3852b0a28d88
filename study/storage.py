"""Where study writes: local paths and URIs, output paths checked before any work, and the one
atomic write that every file study produces goes through.

    python -m study.train --preset test --save /etc/passwd/run.pt    # error: --save …: /etc/passwd is a file; …

`replacing(path)` hands out a temporary name beside `path` (`.<name>.<random>.tmp`) and renames it
into place only when the writer finished: a crash, a full disk or a refused download never leaves
half a file under the final name, and a whole one that was there stays until it is replaced.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from study.errors import UsageError


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
    every other file (mkstemp would make it 0600: unreadable to a teammate on shared storage)."""
    if filesystem is None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            yield str(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return
    folder, _, name = str(path).rpartition("/")
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        yield temporary
        filesystem.move(temporary, str(path))  # on object stores the upload is visible only once whole
    except BaseException:
        with contextlib.suppress(OSError):
            filesystem.delete_file(temporary)
        raise


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
        raise UsageError(f"{flag} {given}: {existing} is a file; allowed: a path in a folder this user can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag} {given}: {existing} is not writable by this user; allowed: a path in a folder this user can write"
        )


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; allowed: a file path (its folder is made if missing)")
    check_output_folder(path.parent, flag, given=path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: is not writable by this user")
