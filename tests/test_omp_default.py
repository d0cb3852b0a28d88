"""OpenMP's wait policy: study.train makes torch's threads sleep at a barrier rather than spin
(OMP_WAIT_POLICY=PASSIVE) unless the user chose otherwise, and OpenMP has read it when torch loads."""

import os
import re
import subprocess
import sys

import pytest


def openmp_settings(**env: str) -> tuple[str, dict[str, str]]:
    """What a fresh `import study.train` leaves in os.environ, and the settings OpenMP itself reports."""
    clean = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run(
        [sys.executable, "-c", "import os, study.train; print(os.environ['OMP_WAIT_POLICY'])"],
        env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    reported = dict(re.findall(r"^\s+(\w+) = '([^']*)'", result.stderr + result.stdout, re.MULTILINE))
    return result.stdout.strip().splitlines()[-1], reported


def test_torch_threads_sleep_at_barriers_unless_the_user_says_otherwise():
    policy, reported = openmp_settings()
    assert policy == "PASSIVE"
    if "GOMP_SPINCOUNT" not in reported:
        pytest.skip("torch's OpenMP is not GNU libgomp here: it reports no spin count")
    assert reported["GOMP_SPINCOUNT"] == "0"  # read before torch started OpenMP: no spinning at all
    policy, reported = openmp_settings(OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE" and reported["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice is kept
