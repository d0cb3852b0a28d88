"""Odd addresses and storage are one line before anything starts: --address auto with no Ray
(or a stale one), ray:// with nothing behind it, an empty or bucketless --storage, pyarrow's
in-memory mock://, and study.train --save onto a device."""

import socket
import subprocess
import sys
import time

import pytest

from study.errors import UsageError
from study.sweep import capacity
from study.sweep.cli import main


def closed_port() -> int:
    with socket.socket() as probe:  # free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in out + err, out + err
    return err


@pytest.mark.parametrize(
    "storage, says",
    [
        ("", "--storage '': empty"),
        ("  ", "--storage '  ': empty"),
        ("s3://", "--storage s3://: no bucket named"),
        ("mock://bucket/results", "a mock filesystem, which Ray's trial processes cannot reach"),
    ],
)
def test_storage_that_no_trial_can_write_to_is_refused(storage, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --storage once meant ./results: nothing may appear here
    assert says in refused(capsys, "smoke", "--storage", storage, "--dry-run")
    assert list(tmp_path.iterdir()) == []


def test_address_auto_with_no_ray_running_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(capacity, "running_ray", lambda: None)
    err = refused(capsys, "smoke", "--address", "auto", "--storage", str(tmp_path / "out"))
    assert "--address auto: no Ray is running on this machine" in err and not (tmp_path / "out").exists()


def test_address_auto_names_the_ray_it_found_when_that_one_is_gone(monkeypatch, tmp_path):
    """Ray resolves auto from the address `ray start` left in its temp folder: a stale one is refused in seconds."""
    from ray._private import services

    port = closed_port()
    monkeypatch.setattr(services, "find_gcs_addresses", frozenset)  # other Rays running here (other tests) aside
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(UsageError, match=rf"--address auto \(found 127.0.0.1:{port}\): no Ray answers there"):
        capacity.check_address("auto")
    assert time.monotonic() - started < 10


def test_a_ray_client_address_nothing_answers_on_is_refused_in_seconds(tmp_path, capsys):
    port = closed_port()
    started = time.monotonic()
    err = refused(capsys, "smoke", "--address", f"ray://127.0.0.1:{port}", "--storage", str(tmp_path / "out"))
    assert f"--address ray://127.0.0.1:{port}: no Ray answers there" in err
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_saving_a_run_onto_a_device_is_refused(device, tiny_corpus_dir):
    done = subprocess.run(
        [sys.executable, "-m", "study.train", "--preset", "test", "--data-dir", str(tiny_corpus_dir), "--save", device],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: --save {device}: is not a regular file") and "Epoch" not in done.stdout
