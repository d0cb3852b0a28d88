"""A sweep into s3://KEY:SECRET@… on its own local Ray writes the credentials nowhere: not in the
bucket (Ray's state, pickles, study's files, prefixes), not in Ray's session folder (worker logs),
not on the console; in plain text, hex or base64."""

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from study.sweep.credentials import RAY_TUNE_COPIES, credentials_to_environment, keep_out_of_runtime_env

KEY, SECRET = "AKIAQ7STUDYTESTKEY", "wJalrXUtnFEMI7K7MDENGbPxRfiCYSTUDYSECRET"

SPACE = """
description: credentials
preset: test
fixed: {epochs: 2, max_words: 0}
vary:
  lr_decay: {grid: [0.5, 1.0]}
seeds: [0]
scheduler: {grace_period: 2}
"""


def encodings(secret: str) -> set[bytes]:
    """`secret` as it could sit in a file: plain, hex (either case), base64 at each alignment."""
    raw = secret.encode()
    forms = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    for pad in range(3):  # base64 of a longer value holds the secret's middle, whatever bytes precede it
        encoded = base64.b64encode(b"\0" * pad + raw)
        forms.add(encoded[4 : len(encoded) - 4])
    return forms


def test_credentials_move_from_the_uri_to_the_environment(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    plain = credentials_to_environment(f"s3://{KEY}:{SECRET}@bucket/results?endpoint_override=h:9000&scheme=http")
    assert plain == "s3://bucket/results?endpoint_override=h:9000&scheme=http"
    query = credentials_to_environment(f"s3://bucket/r?access_key={KEY}&secret_key={SECRET}&session_token=t")
    assert query == "s3://bucket/r"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == (KEY, SECRET)
    assert os.environ["AWS_SESSION_TOKEN"] == "t"
    assert credentials_to_environment("/tmp/results") == "/tmp/results"
    assert credentials_to_environment("gs://bucket/r?access_token=x") == "gs://bucket/r?access_token=x"


def test_ray_tune_copies_no_credential_into_its_trials_runtime_env():
    """Fails on the Ray release that moves the set study.sweep.credentials changes."""
    from ray.tune.execution import class_cache

    assert {"AWS_ACCESS_KEY_ID", "RAY_CHDIR_TO_TRIAL_DIR"} <= class_cache.ENV_VARS_TO_PROPAGATE
    copied = set(class_cache.ENV_VARS_TO_PROPAGATE)
    try:
        keep_out_of_runtime_env()
        assert not set(RAY_TUNE_COPIES) & class_cache.ENV_VARS_TO_PROPAGATE
        assert "RAY_CHDIR_TO_TRIAL_DIR" in class_cache.ENV_VARS_TO_PROPAGATE
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE.update(copied)


@pytest.mark.slow
def test_no_file_of_a_sweep_holds_the_secret(s3_bucket, tiny_corpus_dir, tmp_path):
    bucket, query = s3_bucket
    space = tmp_path / "credentials.yaml"
    space.write_text(SPACE)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = tmp_path / "home"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "HOME": str(home)}
    for name in ("RAY_ADDRESS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    storage = f"s3://{KEY}:{SECRET}@bucket/results?{query}"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "study.sweep", str(space), "--storage", storage, "--data-dir", str(tiny_corpus_dir)],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        written = {
            info.path: bucket.open_input_file(info.path).read()
            for info in bucket.get_file_info(pafs.FileSelector("bucket/results", recursive=True))
            if info.type == pafs.FileType.File
        }
        names = {path.rpartition("/")[2] for path in written}
        assert {"tuner.pkl", "study.json", "trials.parquet"} <= names
        assert any(name.startswith("experiment_state-") for name in names)
        assert any("/prefixes/" in path for path in written)  # the shared prefix went through the URI too
        written |= {
            str(path): path.read_bytes() for folder in (ray_tmp, home) for path in folder.rglob("*") if path.is_file()
        }
        assert len(written) > 20
        forms = encodings(SECRET) | encodings(KEY)
        leaks = sorted(path for path, data in written.items() if any(form in data for form in forms))
        assert leaks == []
        assert not any(form.decode() in done.stdout + done.stderr for form in forms)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
