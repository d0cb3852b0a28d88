"""Credentials inside URIs never survive redact()."""

import pytest

from study.redact import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIAKEY:s3cr3t@bucket/results", "s3://***@bucket/results"),
        (
            "s3://bucket/r?access_key=AKIAKEY&secret_key=s3cr3t&region=eu",
            "s3://bucket/r?access_key=***&secret_key=***&region=eu",
        ),
        ("gs://bucket/r?access_token=tok&session_token=tok2", "gs://bucket/r?access_token=***&session_token=***"),
        ("ray address http://user:pw@127.0.0.1:8265 ok", "ray address http://***@127.0.0.1:8265 ok"),
        ("results/grad_clip and /tmp/a@b", "results/grad_clip and /tmp/a@b"),
        (
            "s3://bucket/r?endpoint_override=127.0.0.1:9000&scheme=http",
            "s3://bucket/r?endpoint_override=127.0.0.1:9000&scheme=http",
        ),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected
    assert "s3cr3t" not in redact(text) and "AKIAKEY" not in redact(text)
