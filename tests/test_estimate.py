"""The plan's estimate: trial-epochs with ASHA, the cached calibration, durations."""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from study.sweep import estimate
from study.sweep.estimate import (
    Calibration,
    brackets,
    calibration,
    calibration_key,
    estimate_lines,
    expected_epochs,
    format_duration,
    trial_epochs,
)
from study.sweep.space_file import load_space
from study.sweep.spaces import AshaSettings
from study.train.data import load_corpus
from study.train.trainer import Trainer


def test_grad_clip_trial_epochs_full_grid_and_with_asha():
    counts = trial_epochs(load_space("grad_clip"), epochs=13)
    assert (counts.trials, counts.full, counts.rungs) == (64, 832, (6, 12))
    # All 64 train to the rung at 6, half of them on to 12, a quarter to 13: 64 * (6 + 6/2 + 1/4).
    assert counts.asha == pytest.approx(592)
    assert counts.planned == pytest.approx(592)
    assert trial_epochs(load_space("grad_clip"), 13, shared_epochs_saved=100).planned == pytest.approx(492)


def test_expected_epochs_of_a_running_trial_counts_only_rungs_ahead():
    assert expected_epochs((6, 12), 2, 13, done=7) == pytest.approx(7 + 5 + 0.5)  # past 6, survives 12 half the time
    assert expected_epochs((6, 12), 2, 13, done=12) == pytest.approx(13)  # past its last rung: runs to the end
    assert expected_epochs((), 4, 10) == 10  # no rung: every trial runs every epoch


def test_brackets_shift_the_grace_period_and_weigh_as_ray_does():
    space = load_space("grad_clip")
    space = replace(space, scheduler=AshaSettings(grace_period=1, reduction_factor=2, brackets=2))
    (share0, rungs0), (share1, rungs1) = brackets(space, epochs=8)
    assert rungs0 == (1, 2, 4) and rungs1 == (2, 4)
    assert share0 / share1 == pytest.approx(2.718281828)  # e ** (3 - 2)
    assert share0 + share1 == pytest.approx(1)


def test_calibration_is_timed_once_then_read_from_the_cache(tiny_corpus_dir, tmp_path, monkeypatch):
    corpus = load_corpus(tiny_corpus_dir)
    config = load_space("smoke").base_config()  # the test preset: batch 4 x 5 steps
    cache = tmp_path / "calibration.json"
    timed, real_measure = [], estimate.measure

    def counted(*args, **kwargs):
        timed.append(args)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(estimate, "measure", counted)

    first = calibration(config, corpus, threads=1, cache=cache)
    assert isinstance(first, Calibration) and not first.cached and len(timed) == 1
    assert first.steps_per_epoch == Trainer(config, corpus).steps_per_epoch
    assert first.step_seconds > 0 and first.valid_seconds >= 0
    assert first.seconds_per_epoch == pytest.approx(first.steps_per_epoch * first.step_seconds + first.valid_seconds)

    again = calibration(config, corpus, threads=1, cache=cache)
    assert again.cached and len(timed) == 1 and again.seconds_per_epoch == first.seconds_per_epoch
    assert calibration(config, None, threads=1, cache=cache).cached  # a dry run without the data uses it

    assert not calibration(config, corpus, threads=2, cache=cache).cached  # another key: timed anew
    assert len(timed) == 2 and len(json.loads(cache.read_text())) == 2


def test_no_cache_and_no_corpus_gives_a_reason(tmp_path):
    reason = calibration(load_space("smoke").base_config(), None, threads=1, cache=tmp_path / "none.json")
    assert isinstance(reason, str) and "--data-dir" in reason


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.2, "under a second"),
        (45, "about 45 s"),
        (12 * 60 + 20, "about 12 min"),
        (7 * 3600 + 38 * 60, "about 7 h 40 min"),
        (2 * 3600 + 3 * 60, "about 2 h 5 min"),
        (5 * 3600 + 2 * 60, "about 5 h"),
        (76 * 3600, "about 3 d 4 h"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def timing(seconds_per_epoch=300.0, cached=False) -> Calibration:
    return Calibration(
        seconds_per_epoch, 0.125, 2323, seconds_per_epoch - 290.375, 1, "cpu", "sum", "2026-01-02 03:04", cached
    )


def test_estimate_lines_state_the_duration_and_its_assumptions():
    counts = trial_epochs(load_space("grad_clip"), 13)
    lines = estimate_lines(counts, timing(), concurrency=2)
    assert "832 for the full grid (64 x 13)" in lines[0] and "592 expected with ASHA" in lines[0]
    assert lines[1].startswith("  time: about 24 h 40 min;")  # 592 x 300 s / 2
    assert "assumes every node as fast as this one, 2 trials at once, ASHA's expected stops" in lines[2]
    shared = estimate_lines(replace(counts, shared_saved=192), timing(), concurrency=2)
    assert "400 with shared prefixes" in shared[0] and shared[1].startswith("  time: about 16 h 40 min;")
    assert "to divide by the trials" in estimate_lines(counts, timing(), concurrency=None)[2]
    assert estimate_lines(counts, "no data", concurrency=2)[1] == "  time: not estimated: no data"


def dry_run(tmp_path, *args) -> str:
    env = {key: value for key, value in os.environ.items() if key != "STUDY_DATA_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # no PTB and no calibration there
    done = subprocess.run(
        [sys.executable, "-m", "study.sweep", "grad_clip", "--dry-run", "--storage", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dry_run_without_data_plans_and_says_why_there_is_no_time(tmp_path):
    out = dry_run(tmp_path)
    assert "trial-epochs: 832 for the full grid (64 x 13); 592 expected with ASHA (1/2 go on at epochs 6, 12)" in out
    assert "time: not estimated: no corpus on this machine" in out


def test_dry_run_without_data_uses_the_cached_calibration(tmp_path):
    config = load_space("grad_clip").base_config()
    cache = tmp_path / "cache" / "study" / "calibration.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({calibration_key(config, 1, "cpu"): asdict(timing())}))
    out = dry_run(tmp_path)
    assert (
        "300 s an epoch = 2323 steps x 125 ms + 10 s validation (1 thread, cpu, timed 2026-01-02 03:04, cached)" in out
    )
    assert "assumes every node as fast as this one" in out


def cache_with(tmp_path, entry) -> tuple:
    """(config, cache path) with `entry` cached for the smoke space's base run, one thread, cpu."""
    config = load_space("smoke").base_config()
    cache = tmp_path / "calibration.json"
    cache.write_text(json.dumps({calibration_key(config, 1, "cpu"): entry}))
    return config, cache


@pytest.fixture
def timed_afresh(monkeypatch) -> list:
    """measure() replaced by one that records its calls and returns a fresh timing."""
    calls = []

    def fake(config, corpus, threads, device, steps=16):
        calls.append(threads)
        return replace(timing(), corpus=corpus.sha256["ptb.train.txt"], measured="now")

    monkeypatch.setattr(estimate, "measure", fake)
    return calls


@pytest.mark.parametrize(
    "field, value",
    [
        ("seconds_per_epoch", "abc"),
        ("seconds_per_epoch", math.nan),
        ("step_seconds", math.inf),
        ("valid_seconds", -1.0),
        ("seconds_per_epoch", 1e308),
        ("valid_seconds", 1e308),  # and seconds_per_epoch to match: absurd all the same
        ("threads", "1"),
        ("steps_per_epoch", 2.5),
        ("device", None),
        ("extra", 1),
    ],
)
def test_a_damaged_cache_entry_is_timed_afresh_with_one_warning(
    tiny_corpus_dir, tmp_path, capsys, timed_afresh, field, value
):
    corpus = load_corpus(tiny_corpus_dir)
    good = {**asdict(timing()), "corpus": corpus.sha256["ptb.train.txt"]}
    damaged = {**good, field: value} | ({"seconds_per_epoch": 1e308} if field == "valid_seconds" and value > 1 else {})
    config, cache = cache_with(tmp_path, damaged)
    fresh = calibration(config, corpus, threads=1, cache=cache)
    assert isinstance(fresh, Calibration) and not fresh.cached and timed_afresh == [1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {cache}: its entry for this machine and run shape")
    assert "ignored, timing a few steps afresh" in err and "Traceback" not in err
    assert calibration(config, None, threads=1, cache=cache).measured == "now"  # replaced by the fresh one

    cache.write_text(json.dumps({calibration_key(config, 1, "cpu"): good}))  # the same entry, undamaged: used
    assert calibration(config, corpus, threads=1, cache=cache).cached and timed_afresh == [1]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda cache: cache.write_text("[" * 100_000 + "]" * 100_000), "nests deeper than a cache does"),
        (lambda cache: cache.write_text("{not json"), "is not JSON"),
        (lambda cache: cache.write_bytes(b"\xff\xfe\x00"), "is not JSON"),
        (lambda cache: cache.write_text("[1, 2]"), "holds no object of entries"),
        (lambda cache: cache.mkdir(), "is not a file"),
    ],
    ids=["nested", "text", "binary", "list", "folder"],
)
def test_a_damaged_cache_file_is_timed_afresh_with_one_warning(
    tiny_corpus_dir, tmp_path, capsys, timed_afresh, damage, says
):
    corpus = load_corpus(tiny_corpus_dir)
    config, cache = load_space("smoke").base_config(), tmp_path / "calibration.json"
    damage(cache)
    assert not calibration(config, corpus, threads=1, cache=cache).cached and timed_afresh == [1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {cache}: {says}; ignored")
    if cache.is_dir():  # left as it is: the cache is not worth a user's folder
        assert not any(cache.iterdir())
    else:
        assert calibration(config, corpus, threads=1, cache=cache).cached and timed_afresh == [1]


def test_a_cache_that_cannot_be_written_is_a_warning_not_an_error(tiny_corpus_dir, tmp_path, capsys, timed_afresh):
    corpus = load_corpus(tiny_corpus_dir)
    (tmp_path / "file").write_text("a file where the cache's folder would go")
    cache = tmp_path / "file" / "study" / "calibration.json"
    assert isinstance(calibration(load_space("smoke").base_config(), corpus, threads=1, cache=cache), Calibration)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {cache}: not cached") and "times again" in err


def test_a_damaged_cache_without_data_says_why_in_the_plan(tmp_path):
    config = load_space("grad_clip").base_config()
    cache = tmp_path / "cache" / "study" / "calibration.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({calibration_key(config, 1, "cpu"): {**asdict(timing()), "seconds_per_epoch": 1e308}}))
    out = dry_run(tmp_path)
    assert (
        f"time: not estimated: no corpus on this machine to time a few steps on (give --data-dir); the cache {cache} is unusable"
        in out
    )
    assert "seconds_per_epoch=1e+308" in out


def test_durations_beyond_a_century_are_not_counted():
    assert format_duration(math.inf) == format_duration(1e300) == "over 100 years"
