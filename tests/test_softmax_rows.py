"""The compiled row kernel of the fast step's softmax and cost against its PyTorch-ops path, and what
happens where it cannot be built. (tests/test_fast_step.py runs the whole step on both paths.)"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from study.config import make_config
from study.train import Trainer, load_corpus
from study.train.softmax import SoftmaxCost
from study.train.softmax_rows import SWITCH, row_kernel

from helpers import read_only

CPU = torch.device("cpu")


def layers(precision: str, kernel, words: int = 40, vocab: int = 1000, hidden: int = 16):
    """(ops path, kernel path) over one nn.Linear: the same W and b."""
    torch.manual_seed(0)
    linear = nn.Linear(hidden, vocab)
    return [SoftmaxCost(linear, words, batch_size=4, precision=precision, kernel=k) for k in (None, kernel)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("spread", [1.0, 60.0])  # 60: logits hundreds of nats apart, p(target) ~ 0 in float32
def test_the_kernel_agrees_with_the_ops_path(compiled_rows, precision, spread):
    ops, fast = layers(precision, compiled_rows)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    hidden = (torch.randn(40, 16) * spread).to(dtype)
    targets = torch.randint(0, 1000, (40,))
    targets[0] = int((hidden[0].float() @ ops.weight.t()).argmin())  # the least likely word of a row
    results = []
    for layer in (ops, fast):
        summed = layer.forward_(hidden, targets)
        gradient = (layer.products if precision == "bf16" else layer.logits).float().clone()  # G
        hidden_grad = layer.backward_(hidden, torch.tensor(1.0))
        results.append((summed, gradient, hidden_grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    (cost, g, dh, dw, db), (kernel_cost, kernel_g, kernel_dh, kernel_dw, kernel_db) = results
    assert torch.isfinite(cost) and float(kernel_cost) == pytest.approx(float(cost), rel=1e-6)
    assert relative(kernel_db, db) <= 1e-6  # both sum the float32 G; the kernel in float64
    if precision == "fp32":
        assert relative(kernel_g, g) <= 1e-6 and relative(kernel_dh, dh) <= 1e-6 and relative(kernel_dw, dw) <= 1e-6
    else:  # G rounded to bfloat16 from float32 values a few ulp apart: equal, or one bfloat16 step apart
        assert ((kernel_g - g).abs() <= 2**-8 * g.abs() + 1e-30).all()
        assert ((kernel_g == g) | (g.abs() < torch.finfo(torch.float32).tiny)).float().mean() > 0.95  # subnormals: 0
        assert relative(kernel_dh, dh) <= 1e-2 and relative(kernel_dw, dw) <= 1e-2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_logit_gives_a_nonfinite_cost_on_both_paths(compiled_rows, precision, bad):
    """Divergence is the trainer's to record from the cost: neither path raises or hides it."""
    for layer in layers(precision, compiled_rows):
        hidden = torch.randn(40, 16, dtype=layer.dtype)
        hidden[7, 3] = bad
        assert not torch.isfinite(layer.forward_(hidden, torch.randint(0, 1000, (40,))))


def test_a_target_outside_the_vocabulary_is_refused_and_nothing_is_written(compiled_rows):
    logits, bias_sums = torch.randn(4, 10), torch.zeros(10, dtype=torch.float64)
    before = logits.clone()
    with pytest.raises(IndexError, match="outside the vocabulary of 10 words"):
        compiled_rows.float32(logits, torch.zeros(10), torch.tensor([1, 2, 10, 3]), bias_sums)
    assert torch.equal(logits, before) and not bias_sums.any()


def test_study_row_kernel_off_chooses_the_ops_path(monkeypatch, tiny_corpus_dir):
    monkeypatch.setenv(SWITCH, "off")
    assert row_kernel(CPU) is None
    assert row_kernel(torch.device("cuda")) is None  # never on a GPU
    assert Trainer(make_config({}, preset="test"), load_corpus(tiny_corpus_dir)).step_path == "fast-ops"
    assert Trainer(make_config({"step": "plain"}, preset="test"), load_corpus(tiny_corpus_dir)).step_path == "plain"


def test_where_the_kernel_builds_the_trainer_says_it_runs_the_fast_step_on_it(compiled_rows, tiny_corpus_dir):
    assert Trainer(make_config({}, preset="test"), load_corpus(tiny_corpus_dir)).step_path == "fast"


def test_where_the_kernel_cannot_be_built_the_fast_step_says_so_once_and_runs(tiny_corpus_dir, tmp_path):
    """No working compiler (CXX=false) and an empty extension cache: one warning, then the step runs
    on PyTorch ops and learns."""
    script = (
        "from study.config import make_config\n"
        "from study.train import Trainer, load_corpus\n"
        f"corpus = load_corpus({str(tiny_corpus_dir)!r})\n"
        "trainers = [Trainer(make_config({}, preset='test'), corpus) for _ in range(2)]\n"
        "print(trainers[0].fast_step.softmax.kernel, trainers[1].step_path)\n"
        "print(trainers[0].run_epoch()['train_ppl'] > 0)\n"
    )
    env = {**os.environ, "CXX": "false", "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    env.pop(SWITCH, None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "fast-ops", "True"]
    assert done.stderr.count("the fast step's compiled softmax kernel could not be built (") == 1
    assert "using PyTorch ops" in done.stderr


def test_a_read_only_extension_cache_still_gets_the_kernel_built_in_a_temporary_folder(
    compiled_rows, small_disk, tmp_path
):
    """A read-only home (here TORCH_EXTENSIONS_DIR on a read-only tmpfs): the process builds its own
    copy elsewhere, says nothing, and leaves nothing behind in the temporary folder."""
    cache = small_disk(tmp_path / "extensions")
    read_only(cache)
    script = (
        "import torch\n"
        "from study.train.softmax_rows import row_kernel\n"
        "print(row_kernel(torch.device('cpu')) is not None)\n"
    )
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "TMPDIR": str(temporary)}
    env.pop(SWITCH, None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] and done.stderr == ""
    assert list(temporary.iterdir()) == []


def test_bench_times_the_kernel_and_the_ops_path_taking_turns(compiled_rows, tiny_corpus_dir):
    command = [sys.executable, "-m", "study.bench", "--preset", "test", "--data-dir", str(tiny_corpus_dir)]
    command += ["--device", "cpu", "--threads", "1"]  # the CPU row kernel, also on a machine with a GPU
    command += ["--step", "all", "--precision", "both", "--steps", "2", "--windows", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "fast step's softmax: compiled row kernel" in lines
    for precision in ("fp32", "bf16"):
        for name in ("plain", "fast-ops", "fast"):
            assert any(line.startswith(f"training {precision} {name}: ") for line in lines), name
        for ratio in ("fast / plain", "fast-ops / plain", "fast / fast-ops"):
            assert any(line.startswith(f"{ratio} {precision}: ") and "x by CPU time" in line for line in lines), ratio
