"""Every bad input is one line before any training, naming what is wrong and what is allowed, exit 2,
with whatever was on disk before left as it was."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from study.config import make_config
from study.errors import UsageError
from study.sweep.space_file import load_space
from study.train.data import load_corpus


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)


def assert_one_line(done: subprocess.CompletedProcess, *named: str) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and all(name in done.stderr for name in named), done.stderr
    return done.stderr


def folder_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--learning-rate", "inf", "learning_rate=inf: Input should be a finite number"),
        ("--init-scale", "nan", "init_scale=nan"),
        ("--seed", "4294967296", "seed=4294967296: Input should be less than or equal to 4294967295"),
        ("--seed", "-1", "seed=-1"),
    ],
)
def test_numbers_a_run_cannot_use_are_refused_before_training(flag, value, says, tiny_corpus_dir, tmp_path):
    table = tmp_path / "epochs.parquet"
    done = run(
        "study.train", "--preset", "test", "--data-dir", str(tiny_corpus_dir), "--table", str(table), flag, value
    )
    assert_one_line(done, says)
    assert not table.exists()


def test_max_grad_norm_inf_still_means_no_clipping():
    assert not make_config({"max_grad_norm": float("inf")}, preset="test").clips


@pytest.mark.parametrize(
    "value, says",
    [
        ("true", "must be a number, not bool True"),
        ("'5'", "must be a number, not str '5'"),
        (".nan", "nan is not valid"),
    ],
)
def test_a_space_with_words_or_nan_where_a_number_belongs_is_refused(value, says, tmp_path):
    space = tmp_path / "words.yaml"
    space.write_text(f"description: d\npreset: test\nvary:\n  max_grad_norm: {{grid: [1.0, {value}]}}\n")
    with pytest.raises(UsageError, match=rf"words.yaml: vary.max_grad_norm.grid\[1\]: .*{says}"):
        load_space(str(space))


@pytest.mark.parametrize(
    "text, says",
    [
        ("seeds: [0, 4294967296]", "seeds[1]: 4294967296"),
        ("scheduler: {reduction_factor: true}", "scheduler.reduction_factor"),
        ("resources: {cpus_per_trial: .inf}", "resources.cpus_per_trial"),
        ("fixed: {staircase: 1}", "must be true or false"),
    ],
)
def test_a_space_with_an_out_of_range_seed_or_setting_is_refused(text, says, tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(f"description: d\npreset: test\n{text}\n")
    with pytest.raises(UsageError, match=r"bad.yaml") as error:
        load_space(str(space))
    assert says in str(error.value) and "\n" not in str(error.value)


def test_seeds_outside_numpys_range_on_the_command_line_are_refused(tmp_path):
    assert_one_line(
        run("study.sweep", "smoke", "--seeds", "0", "4294967296", "--dry-run", "--storage", str(tmp_path)),
        "0 .. 4294967295",
    )


@pytest.mark.parametrize("flag", ["--save", "--table"])
def test_an_output_file_that_cannot_be_written_is_refused_before_training(flag, tiny_corpus_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    before = folder_hash(tmp_path)
    for target, says in ((blocker / "out.pt", f"{blocker} is a file"), (tmp_path, "is a folder")):
        done = run("study.train", "--preset", "test", "--data-dir", str(tiny_corpus_dir), flag, str(target))
        assert_one_line(done, f"{flag} {target}", says)
        assert "Epoch" not in done.stdout  # refused before the first epoch
    assert folder_hash(tmp_path) == before


def test_a_space_whose_batch_shape_the_corpus_cannot_fill_is_refused_before_ray(tiny_corpus_dir, tmp_path):
    space = tmp_path / "big.yaml"
    space.write_text("description: d\npreset: test\nfixed: {epochs: 1}\nvary:\n  batch_size: {grid: [4, 500]}\n")
    done = run("study.sweep", str(space), "--data-dir", str(tiny_corpus_dir), "--storage", str(tmp_path / "out"))
    assert_one_line(done, "big.yaml: ptb.train.txt", "batch_size 500")
    assert not (tmp_path / "out").exists()  # no Ray, no experiment folder


def test_words_outside_the_vocabulary_are_counted_and_reported(tiny_corpus_dir):
    corpus = load_corpus(tiny_corpus_dir)  # the tiny valid file holds one "zebra", which train lacks
    assert corpus.dropped == {"ptb.train.txt": 0, "ptb.valid.txt": 1, "ptb.test.txt": 0}
    assert corpus.dropped_note().startswith("data: 1 in ptb.valid.txt not in the vocabulary of ptb.train.txt, dropped")
    done = run("study.train", "--preset", "test", "--data-dir", str(tiny_corpus_dir), "--epochs", "1", "--quiet")
    assert done.returncode == 0 and "data: 1 in ptb.valid.txt not in the vocabulary" in done.stdout


def test_a_test_file_without_a_word_of_the_vocabulary_is_refused(tiny_corpus_dir):
    (tiny_corpus_dir / "ptb.test.txt").write_text(" qqq rrr sss \n")  # only its <eos> is known
    done = run("study.train", "--preset", "test", "--data-dir", str(tiny_corpus_dir))
    assert_one_line(done, "ptb.test.txt: 1 of its 4 words", "nothing to predict")
