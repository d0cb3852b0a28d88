"""Mixed precision: bf16 autocast for the matrix products, float32 for weights, cost and gradients."""

import subprocess
import sys
import textwrap

import pytest
import torch

from study.bench import timed_windows
from study.config import make_config
from study.errors import UsageError
from study.sweep.space_file import load_space
from study.train import trainer as train
from study.train.data import load_corpus
from study.train.trainer import Trainer

from helpers import record_turns


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model gains nothing from a second thread, and on a busy 2-core machine oneDNN's
    LSTM waits for it at every time step (tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpus(tiny_corpus_dir):
    return load_corpus(tiny_corpus_dir)


def tiny_trainer(corpus, **overrides) -> Trainer:
    """A trainer of the `test` preset (which reads the whole tiny corpus) with `overrides`."""
    return Trainer(make_config(overrides, preset="test"), corpus)


def test_config_takes_fp32_by_default_and_bf16_on_request():
    assert make_config({}).precision == "fp32"
    assert make_config({"precision": "bf16"}).precision == "bf16"


@pytest.mark.parametrize("value", ["fp16", "BF16", 16])
def test_config_rejects_other_precisions_in_one_line(value):
    with pytest.raises(UsageError) as caught:
        make_config({"precision": value}, where="run.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("run.yaml: precision=") and "'fp32' or 'bf16'" in message


def test_a_search_space_can_fix_or_vary_precision(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        textwrap.dedent("""
        description: precision as a run setting
        preset: test
        fixed: {precision: bf16}
        """)
    )
    assert load_space(str(path)).base_config().precision == "bf16"
    path.write_text(
        textwrap.dedent("""
        description: precision as a run setting
        preset: test
        vary:
          precision: {grid: [fp32, bf16]}
        """)
    )
    assert load_space(str(path)).vary == {"precision": {"grid": ["fp32", "bf16"]}}
    path.write_text(path.read_text().replace("bf16]", "fp16]"))
    with pytest.raises(UsageError, match=r"vary.precision.grid"):
        load_space(str(path))


def test_bf16_runs_the_matrix_products_in_bfloat16_and_hands_the_cost_float32(corpus):
    model = tiny_trainer(corpus).model
    seen = {}
    model.lstm.register_forward_hook(lambda module, args, out: seen.update(lstm=out[0].dtype))
    model.softmax.register_forward_hook(lambda module, args, out: seen.update(softmax=out.dtype))
    x = corpus.train[:20].view(4, 5)  # [batch, steps]
    logits, state = train.forward(model, x, model.initial_state(4), "bf16")
    assert seen == {"lstm": torch.bfloat16, "softmax": torch.bfloat16}
    assert logits.dtype == torch.float32 and state[0].dtype == torch.bfloat16
    logits, state = train.forward(model, x, model.initial_state(4), "fp32")
    assert seen == {"lstm": torch.float32, "softmax": torch.float32}
    assert logits.dtype == torch.float32 and state[0].dtype == torch.float32


def test_bf16_training_keeps_float32_weights_and_gradients_and_learns_as_fp32_does(corpus):
    results = {}
    for precision in ("fp32", "bf16"):
        trainer = tiny_trainer(corpus, epochs=2, precision=precision)
        results[precision] = list(trainer.epochs())[-1]
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainer.parameters)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert not bf16["diverged"]
    for metric in ("train_ppl", "valid_ppl", "test_ppl"):
        assert bf16[metric] == pytest.approx(fp32[metric], rel=0.02)
    assert bf16["grad_norm_mean"] == pytest.approx(fp32["grad_norm_mean"], rel=0.05)


def test_fp32_is_bit_for_bit_the_path_without_autocast(corpus, monkeypatch):
    def run() -> tuple[list[torch.Tensor], dict, float]:
        trainer = tiny_trainer(corpus, epochs=1, keep_prob=0.7, step="plain")  # the step that goes through forward
        result = trainer.run_epoch()
        return [p.detach().clone() for p in trainer.model.parameters()], result, trainer.test()

    with_autocast = run()
    monkeypatch.setattr(train, "forward", lambda model, x, state, precision: model(x, state))
    plain = run()
    assert all(torch.equal(a, b) for a, b in zip(with_autocast[0], plain[0]))
    assert with_autocast[1]["train_ppl"] == plain[1]["train_ppl"] and with_autocast[2] == plain[2]


def test_bench_rejects_an_unknown_precision_in_one_line():
    done = subprocess.run([sys.executable, "-m", "study.bench", "--precision", "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == "error: --precision nope: choose one of fp32, bf16, both\n"


def test_bench_both_takes_turns_window_by_window(corpus):
    trainers = [tiny_trainer(corpus, precision=precision) for precision in ("fp32", "bf16")]
    order = record_turns(trainers, "precision")
    speeds = [[window.words_per_sec for window in own] for own in timed_windows(trainers, steps=2, windows=3)]
    assert order == ["fp32", "bf16"] * 4  # a warm-up pass, then three timed windows each
    assert [len(own) for own in speeds] == [3, 3] and all(speed > 0 for own in speeds for speed in own)


def test_fp32_on_a_gpu_keeps_cudnns_rnn_out_of_tf32():
    """PyTorch lets cuDNN's RNNs use TF32 (a 10-bit mantissa) by default; a Trainer on a GPU turns
    that off (1.4e-4 between two computations of one gradient on an H200), and on the CPU leaves it."""
    rnn = torch.backends.cudnn.rnn
    new_api = hasattr(rnn, "fp32_precision")  # torch >= 2.9; allow_tf32 before

    def tf32() -> bool:
        return rnn.fp32_precision == "tf32" if new_api else torch.backends.cudnn.allow_tf32

    before = rnn.fp32_precision if new_api else torch.backends.cudnn.allow_tf32
    try:
        if new_api:
            rnn.fp32_precision = "tf32"
        else:
            torch.backends.cudnn.allow_tf32 = True
        train.float32_rnn(torch.device("cpu"))
        assert tf32()
        train.float32_rnn(torch.device("cuda"))  # sets a flag only: runs without a GPU
        assert not tf32()
    finally:
        if new_api:
            rnn.fp32_precision = before
        else:
            torch.backends.cudnn.allow_tf32 = before
