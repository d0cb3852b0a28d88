"""Fixtures shared by the test modules: the real PTB when the machine has it, a tiny corpus always."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import tiny_text

_ROOT = Path(__file__).resolve().parents[1]
# The project's CI machines carry PTB beside the checkout (../shared) or inside it (shared/).
_PTB_CANDIDATES = (_ROOT.parent / "shared" / "data" / "ptb", _ROOT / "shared" / "data" / "ptb")
_PTB_NAMES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
_HOME = pytest.StashKey[str]()  # an xdist worker's own HOME, removed at its end


def pytest_configure(config):
    """Each pytest-xdist worker (`-n 2`, pyproject.toml) gets a HOME of its own, as separate test runs
    do: a local Ray keeps its token in ~/.ray/auth_token, writing one where none is, so two Rays
    started at once in one HOME can each write their own, and the first one's new workers read the
    second's. The compiled row kernel is built into each HOME's cache (seconds)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        home = tempfile.mkdtemp(prefix=f"study-tests-{worker}-")
        config.stash[_HOME] = home
        os.environ["HOME"] = home


def pytest_unconfigure(config):
    if home := config.stash.get(_HOME, None):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    """The folder with the real Penn Treebank files; skips the test where the machine has none."""
    for folder in _PTB_CANDIDATES:
        if all((folder / name).is_file() for name in _PTB_NAMES):
            return folder
    pytest.skip(f"real PTB not found in {' or '.join(map(str, _PTB_CANDIDATES))}")


@pytest.fixture
def tiny_corpus_dir(tmp_path: Path) -> Path:
    """A folder with three tiny ptb.*.txt files (see `tiny_text`): a user's own corpus, not PTB."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name, text in tiny_text().items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def compiled_rows():
    """The fast step's compiled softmax row kernel (study/train/softmax_rows.py); skips the test where
    it is switched off (STUDY_ROW_KERNEL=off) or cannot be built, since the ops path runs there."""
    import torch

    from study.train.softmax_rows import row_kernel

    built = row_kernel(torch.device("cpu"))
    if built is None:
        pytest.skip("the compiled row kernel is off or does not build here (see the warning)")
    return built


@pytest.fixture
def small_disk(tmp_path):
    """mount(folder, size): a tmpfs of `size` at `folder` (helpers.read_only makes it read-only),
    unmounted afterwards; skips where this user cannot mount (not root, or no tmpfs)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str = "256k") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it, with a fixed CPU count; stopped at the end."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture
def s3_bucket():
    """A local S3 server (moto) on 127.0.0.1 with an empty bucket "bucket": yields (its pyarrow
    filesystem, the URI query that reaches it). Credentials go in URIs, not the environment, so
    that Ray workers started before the test see them too: s3://key:secret@bucket/...?<query>."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        query = f"scheme=http&endpoint_override={host}:{port}&region=us-east-1"
        bucket, _ = pafs.FileSystem.from_uri(f"s3://key:secret@bucket?{query}&allow_bucket_creation=true")
        bucket.create_dir("bucket")
        yield bucket, query
    finally:
        server.stop()
