"""Credentials in a storage URI stay out of Ray's files when the sweep runs on a local Ray.

    python -m study.sweep smoke --storage 's3://KEY:SECRET@bucket/results?endpoint_override=…'

Ray pickles the storage filesystem into its own files (tuner.pkl, the search state, and
hex-encoded inside experiment_state-*.json), and study's trials reach the storage through the
experiment's URI. A filesystem made from `s3://KEY:SECRET@…` carries the secret into all of them.
A sweep that starts its own local Ray therefore moves the URI's credentials into this process's
AWS_* variables, before Ray starts (its processes inherit them), and gives Ray and the trials the
URI without them: pyarrow's S3 filesystem then reads them from the environment. Ray Tune would
also copy the driver's AWS_* variables into its trials' runtime environment, which Ray logs in plain
text (runtime_env_agent.log in its session folder); a local Ray's processes inherit them anyway, so
`keep_out_of_runtime_env` stops that copy. Then nothing Ray or study writes holds them. A sweep that
joins a running Ray (a cluster) cannot hand them to the other nodes that way; there the URI and the
variables are used as given (README, "On a Ray cluster", says what Ray keeps of them).
"""

from __future__ import annotations

import os
import urllib.parse

# The variables Ray Tune 2.60 copies from the driver into every trial's runtime environment.
RAY_TUNE_COPIES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
# pyarrow's S3 URI options that hold a credential -> the AWS variable its default chain reads.
QUERY_VARIABLES = {
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


def credentials_to_environment(storage: str) -> str:
    """`storage` without the credentials of an s3:// URI, which go to this process's AWS_* variables;
    any other location unchanged."""
    parts = urllib.parse.urlsplit(storage)
    if parts.scheme != "s3":
        return storage
    found: dict[str, str] = {}
    if parts.username:
        found["AWS_ACCESS_KEY_ID"] = urllib.parse.unquote(parts.username)
    if parts.password:
        found["AWS_SECRET_ACCESS_KEY"] = urllib.parse.unquote(parts.password)
    query = []
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name in QUERY_VARIABLES:
            found[QUERY_VARIABLES[name]] = value
        else:
            query.append((name, value))
    if not found:
        return storage
    os.environ.update(found)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(query, safe=":/")))


def keep_out_of_runtime_env() -> None:
    """Keep Ray Tune from copying this process's AWS_* credentials into its trials' runtime
    environment (logged in plain text, kept in Ray's GCS); for a local Ray only, whose processes
    inherit them. The one place that changes Ray's private `class_cache.ENV_VARS_TO_PROPAGATE`
    (tests/test_credentials.py fails on the release that moves it)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(RAY_TUNE_COPIES)
