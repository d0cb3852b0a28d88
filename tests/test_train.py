import errno
import io
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from study import metrics as m
from study.config import make_config
from study.train.data import load_corpus
from study.train.state import run_identity, save_state
from study.train.trainer import PROGRESS_LINES, Trainer, evaluate, sequence_cost, stream_windows


@pytest.fixture
def corpus(tiny_corpus_dir):
    return load_corpus(tiny_corpus_dir)


def tiny(**overrides):
    return make_config({"max_words": 0, **overrides}, preset="test")


def test_cost_is_cross_entropy_summed_over_time_and_averaged_over_batch():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3, 7), torch.randint(0, 7, (3, 4))  # [steps, batch, vocab], [batch, steps]
    by_hand = sum(sum(F.cross_entropy(logits[t, b][None], targets[b, t][None]) for t in range(4)) for b in range(3)) / 3
    cost, summed = sequence_cost(logits, targets)
    assert cost.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert summed.item() == pytest.approx(3 * by_hand.item(), rel=1e-6)


def test_cost_gradient_equals_torch_cross_entropy():
    torch.manual_seed(0)
    targets = torch.randint(0, 7, (3, 4))
    # Logit gaps of 200 nats: a naive softmax underflows; the cost and its gradient must not.
    ours = (torch.randn(4, 3, 7) * 100).requires_grad_()
    reference = ours.detach().clone().requires_grad_()
    cost = sequence_cost(ours, targets)[0]
    expected = F.cross_entropy(reference.flatten(0, 1), targets.t().flatten(), reduction="sum") / 3
    assert torch.isfinite(cost) and cost.item() == pytest.approx(expected.item(), rel=1e-6)
    cost.backward()
    expected.backward()
    assert torch.allclose(ours.grad, reference.grad, atol=1e-6)


def test_test_set_in_chunks_equals_one_word_at_a_time(corpus):
    trainer = Trainer(tiny(), corpus)
    ids = corpus.test[:300]
    one_by_one = evaluate(trainer.model, stream_windows(ids, chunk=1), batch_size=1)
    chunked = evaluate(trainer.model, stream_windows(ids, chunk=64), batch_size=1)
    assert chunked == pytest.approx(one_by_one, rel=1e-5)


def test_epoch_reports_every_metric_and_the_rate_the_optimizer_used(corpus):
    trainer = Trainer(tiny(epochs=3, decay_start=1, lr_decay=0.5), corpus)
    results = list(trainer.epochs())
    assert [r[m.EPOCH] for r in results] == [1, 2, 3]
    assert [r[m.LR] for r in results] == [1.0, 0.5, 0.25]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.25
    for result in results:
        assert set(m.EPOCH_METRICS) <= set(result)
        assert result[m.DIVERGED] is False and math.isfinite(result[m.VALID_PPL])
    assert m.TEST_PPL in results[-1] and all(m.TEST_PPL not in r for r in results[:-1])
    assert results[-1][m.VALID_PPL] < results[0][m.TRAIN_PPL]


def test_an_epoch_prints_a_progress_line_at_each_tenth_before_its_end(corpus):
    lines = []
    trainer = Trainer(tiny(), corpus, progress=lines.append)
    assert trainer.steps_per_epoch >= 10  # else two tenths fall on one step and share a line
    trainer.run_epoch()
    assert len(lines) == PROGRESS_LINES == 9  # the tenth tenth is the epoch's own line
    assert [p.fraction for p in lines] == pytest.approx([k / 10 for k in range(1, 10)], abs=0.05)


def test_train_steps_are_an_epochs_first_steps_and_count_their_words(corpus):
    config = tiny(keep_prob=0.7, clip_mode="adaptive")  # dropout and clipping draw on the same state
    after = {}  # steps taken -> the weights then, at each progress line of a whole epoch

    def snapshot(progress):
        after[round(progress.fraction * whole.steps_per_epoch)] = [p.detach().clone() for p in whole.model.parameters()]

    whole = Trainer(config, corpus, progress=snapshot)
    whole.run_epoch()
    steps = sorted(after)[2]
    timed = Trainer(config, corpus)
    words, seconds = timed.train_steps(steps)
    assert words == steps * config.batch_size * config.num_steps and seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(timed.model.parameters(), after[steps]))  # bit for bit
    assert (timed.step, timed.epoch) == (steps, 0)
    with pytest.raises(ValueError, match=f"epoch's {timed.steps_per_epoch}"):
        timed.train_steps(timed.steps_per_epoch + 1)


def test_resume_continues_exactly(corpus):
    straight = Trainer(tiny(epochs=3, keep_prob=0.7, clip_mode="adaptive"), corpus)
    expected = list(straight.epochs())
    straight_numpy_key = np.random.get_state()[1].tolist()

    first = Trainer(tiny(epochs=3, keep_prob=0.7, clip_mode="adaptive"), corpus)
    first.run_epoch(), first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    torch.manual_seed(12345)  # a restored run must not depend on the process's RNG state
    random.seed(12345), np.random.seed(12345)
    buffer.seek(0)
    resumed = Trainer(tiny(epochs=3, keep_prob=0.7, clip_mode="adaptive"), corpus)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # tensors and plain values only
    last = resumed.run_epoch()
    del last[m.WORDS_PER_SEC], last[m.EPOCH_SECONDS], expected[-1][m.WORDS_PER_SEC], expected[-1][m.EPOCH_SECONDS]
    assert last == expected[-1]  # bit for bit: every perplexity and gradient-norm statistic
    assert np.random.get_state()[1].tolist() == straight_numpy_key


def test_absurd_learning_rate_is_recorded_as_divergence_not_raised(corpus):
    trainer = Trainer(tiny(epochs=3, learning_rate=1e12, clip_mode="none"), corpus)
    results = list(trainer.epochs())
    assert results[-1][m.DIVERGED] is True
    assert results[-1][m.VALID_PPL] == math.inf
    assert not any(math.isnan(r[m.VALID_PPL]) or math.isnan(r[m.TRAIN_PPL]) for r in results)
    assert len(results) < 3 and trainer.finished


def test_command_line_run_writes_the_table_and_resumes(tiny_corpus_dir, tmp_path):
    table, state = tmp_path / "epochs.parquet", tmp_path / "run.pt"
    base = [
        sys.executable,
        "-m",
        "study.train",
        "--preset",
        "test",
        "--data-dir",
        str(tiny_corpus_dir),
        "--threads",
        "1",
    ]
    done = subprocess.run(
        [*base, "--epochs", "2", "--table", str(table), "--save", str(state)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Epoch: 2 Learning rate: 0.500" in done.stdout and "Test Perplexity:" in done.stdout
    assert " steps per epoch, fast step (its softmax " in done.stdout  # which step trains, said at the start
    assert list(pd.read_parquet(table)[m.EPOCH]) == [1, 2]

    again = subprocess.run([*base, "--resume", str(state), "--table", str(table)], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing" not in again.stderr
    conflicting = subprocess.run([*base, "--resume", str(state), "--seed", "3"], capture_output=True, text=True)
    assert conflicting.returncode == 2 and "--seed" in conflicting.stderr


def test_command_line_bad_data_folder_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "study.train", "--preset", "test", "--data-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nowhere" in done.stderr


def test_corrupted_resume_file_is_one_line(tmp_path, tiny_corpus_dir):
    bad = tmp_path / "run.pt"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run(
        [sys.executable, "-m", "study.train", "--resume", str(bad), "--data-dir", str(tiny_corpus_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and str(bad) in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("flag", ["--threads", "--steps", "--windows"])
def test_bench_rejects_a_count_below_one_in_one_line(flag):
    done = subprocess.run([sys.executable, "-m", "study.bench", flag, "0"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"error: {flag} 0: must be at least 1"


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.train", "--threads", "1", "--quiet", *args], capture_output=True, text=True
    )


def test_resume_with_another_preset_is_refused_in_one_line(tiny_corpus_dir, tmp_path):
    state = tmp_path / "run.pt"
    data = ["--data-dir", str(tiny_corpus_dir)]
    assert train_cli("--preset", "test", "--epochs", "1", "--save", str(state), *data).returncode == 0
    other = train_cli("--preset", "small", "--resume", str(state), *data)
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr == (
        f"error: --preset small: {state} holds a run started with --preset test; "
        "--resume continues it as saved: drop --preset\n"
    )
    same = train_cli("--preset", "test", "--resume", str(state), *data)  # its own preset: accepted
    assert same.returncode == 0 and same.stdout.endswith("nothing is left to train\n"), same.stderr


def test_resume_with_a_preset_of_a_state_that_does_not_name_one_compares_the_settings(tiny_corpus_dir, tmp_path):
    """A trial's checkpoint (study.sweep) records no preset: its settings are compared with the preset's."""
    corpus = load_corpus(tiny_corpus_dir)
    trainer = Trainer(tiny(epochs=2), corpus)
    trainer.run_epoch()
    state = tmp_path / "state.pt"
    save_state(state, trainer.state_dict(), run_identity(trainer.config, corpus.sha256))
    done = train_cli("--preset", "small", "--resume", str(state), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"error: --preset small: {state} holds another run (" in done.stderr and "drop --preset" in done.stderr


def test_resume_of_a_finished_trials_checkpoint_says_there_is_nothing_to_train(tiny_corpus_dir, tmp_path):
    corpus = load_corpus(tiny_corpus_dir)
    trainer = Trainer(tiny(epochs=2), corpus)
    list(trainer.epochs())
    state = tmp_path / "state.pt"  # as study.sweep's trainable saves it: the run state, no rows
    save_state(state, trainer.state_dict(), run_identity(trainer.config, corpus.sha256))
    done = train_cli("--resume", str(state), "--data-dir", str(tiny_corpus_dir))
    assert done.returncode == 0 and done.stderr == "" and "Traceback" not in done.stdout
    assert done.stdout.splitlines()[-1] == f"{state}: the run finished its 2 epochs; nothing is left to train"


@pytest.mark.parametrize("flag, name", [("--save", "run.pt"), ("--table", "epochs.parquet")])
def test_save_or_table_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(
    tiny_corpus_dir, tmp_path, monkeypatch, capsys, flag, name
):
    from study import storage
    from study.train.cli import main

    target = tmp_path / "out" / name
    target.parent.mkdir()
    target.write_bytes(b"the whole file of an earlier run")
    real_replace = os.replace

    def full(source, destination):  # the disk fills as the new file is put in place
        if Path(destination) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, destination)

    monkeypatch.setattr(storage.os, "replace", full)
    args = ["--preset", "test", "--epochs", "1", "--threads", "1", "--quiet", "--data-dir", str(tiny_corpus_dir)]
    assert main([*args, flag, str(target)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {target}: not written (no space left on the device); the file there before is unchanged\n"
    assert target.read_bytes() == b"the whole file of an earlier run" and os.listdir(target.parent) == [name]
