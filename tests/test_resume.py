"""--resume continues a sweep as it started: another corpus or other resources per trial are
refused in one line, with nothing in the experiment folder changed; the printed resume command is
the plain one, however often the sweep was resumed."""

import json
import shlex
import tarfile
from pathlib import Path

import pytest

from study.sweep.cli import main, options_from_args, parse_args
from study.sweep.resume import resume_command, to_resume
from study.sweep.state_copy import COPY_FILE
from study.sweep.tuner import LAYOUT
from study.train.data import load_corpus

SPACE = """
description: resumed
preset: test
fixed: {epochs: 2, max_words: 0}
vary:
  max_grad_norm: {grid: [1.0, 5.0]}
seeds: [0]
scheduler: {grace_period: 2}
"""


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def saved_sweep(tmp_path, tiny_corpus_dir):
    """A space and an experiment of it as Ray and study leave one (study.json, Ray's tuner.pkl)."""
    space = tmp_path / "resumed.yaml"
    space.write_text(SPACE)
    experiment = tmp_path / "out" / "resumed"
    experiment.mkdir(parents=True)
    study = {
        "layout": LAYOUT,
        "space": "resumed",
        "space_text": SPACE,
        "epochs": 2,
        "seeds": [0],
        "num_samples": 1,
        "cpus_per_trial": 1.0,
        "gpus_per_trial": 0.0,
        "prefix_sharing": True,
        "data_sha256": load_corpus(tiny_corpus_dir).sha256,
    }
    (experiment / "study.json").write_text(json.dumps(study))
    (experiment / "tuner.pkl").write_bytes(b"Ray's saved sweep")
    return space, experiment


def refused(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in out + err, out + err
    return err


@pytest.mark.parametrize("flag, value", [("--cpus-per-trial", "2"), ("--gpus-per-trial", "0.5")])
def test_other_resources_per_trial_are_refused(flag, value, saved_sweep, tiny_corpus_dir, capsys):
    space, experiment = saved_sweep
    before = folder_bytes(experiment)
    storage = str(experiment.parent)
    err = refused(capsys, str(space), "--storage", storage, "--data-dir", str(tiny_corpus_dir), "--resume", flag, value)
    assert f"error: {flag} {value}: --resume continues the sweep in {experiment} as it started" in err
    assert "threads and device" in err and "another --storage" in err
    assert folder_bytes(experiment) == before


def test_another_corpus_is_refused(saved_sweep, tiny_corpus_dir, tmp_path, capsys):
    space, experiment = saved_sweep
    other = tmp_path / "other"
    other.mkdir()
    for path in tiny_corpus_dir.iterdir():
        (other / path.name).write_text(path.read_text().replace(" cat ", " dog "))
    before = folder_bytes(experiment)
    err = refused(capsys, str(space), "--storage", str(experiment.parent), "--data-dir", str(other), "--resume")
    assert f"--data-dir {other}: ptb.test.txt is not the file the sweep in {experiment} started with" in err
    assert folder_bytes(experiment) == before


def test_the_resume_command_needs_no_flag_that_study_json_keeps(saved_sweep, tiny_corpus_dir):
    """A resumed sweep takes epochs, seeds, samples and resources from study.json: the command it
    prints when interrupted again is the plain one."""
    space, experiment = saved_sweep
    args = parse_args([str(space), "--storage", str(experiment.parent), "--resume"])
    filled, options, study = to_resume(args, options_from_args(args), options_from_args)
    assert (filled.epochs, filled.seeds, filled.num_samples) == (2, [0], 1)
    assert (options.cpus_per_trial, options.gpus_per_trial, options.resume) == (1.0, 0.0, True)
    assert study["data_sha256"]
    words = shlex.split(resume_command(filled, options, str(tiny_corpus_dir)))
    assert words == [
        *shlex.split(f"python -m study.sweep {space} --storage {experiment.parent}"),
        "--data-dir",
        str(tiny_corpus_dir),
        "--resume",
    ]


def test_a_torn_state_of_rays_without_a_whole_copy_is_refused_not_started_over(saved_sweep, tiny_corpus_dir, capsys):
    """A disk that filled tore Ray's experiment state, and study kept no copy of it (a sweep begun
    before it did, say): --resume says so in one line, exit 1, instead of letting Ray begin anew;
    with a whole copy, a dry run still changes nothing (the sweep itself puts the copy back)."""
    space, experiment = saved_sweep
    state = experiment / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text('{"trial_data": [["{\\"trial_id\\": \\"00000\\", \\"sta')
    before = folder_bytes(experiment)
    args = [str(space), "--storage", str(experiment.parent), "--data-dir", str(tiny_corpus_dir), "--resume"]
    assert main([*args, "--dry-run"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"error: {experiment}: Ray's saved state of the sweep is cut short ({state.name}: ")
    assert err.count("\n") == 1 and "cannot continue it" in err and "Traceback" not in out + err
    assert folder_bytes(experiment) == before
    with tarfile.open(experiment / COPY_FILE, "w") as archive:
        archive.add(tiny_corpus_dir / "ptb.test.txt", arcname=state.name)  # not a state: no whole copy either
    assert main([*args, "--dry-run"]) == 1 and "holds no whole experiment state" in capsys.readouterr().err
    whole = experiment.parent / state.name
    whole.write_text('{"trial_data": []}')
    with tarfile.open(experiment / COPY_FILE, "w") as archive:
        archive.add(whole, arcname=state.name)
    before = folder_bytes(experiment)
    assert main([*args, "--dry-run"]) == 0
    assert folder_bytes(experiment) == before
