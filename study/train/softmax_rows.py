"""The compiled row kernel of the fast step's softmax and cost (softmax_rows.cpp), where it can be built.

    kernel = row_kernel(torch.device("cpu"))   # None on a GPU, or where no compiler or ninja is found
    summed = kernel.float32(logits, bias, targets, bias_sum)      # logits [words, vocab] -> G in place
    summed = kernel.bfloat16(products, bias, targets, bias_sum, row)

torch.utils.cpp_extension builds it the first time a process on a machine asks (about 2 s: no torch
headers), with g++ and ninja, into its cache (TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions), with a file lock, so that the trials starting together on a node build
it once; later processes load the built library. Its name carries a digest of the source, the flags
and this CPU's model and flags: -march=native code never runs on another kind of CPU that shares
the cache (a home folder on NFS). Where the cache cannot be written (a read-only or full home),
each process builds its own copy in a temporary folder. Where it cannot be built at all, the fast
step runs the same mathematics in PyTorch ops (SoftmaxCost's other path) and says why on one line,
once per process; STUDY_ROW_KERNEL=off chooses that path outright. ctypes releases the GIL for the
call and passes only raw pointers: the callers hand over contiguous CPU tensors of the dtypes named.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from study.errors import REFUSED_WRITES

SOURCE = Path(__file__).with_name("softmax_rows.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno"]
SWITCH = "STUDY_ROW_KERNEL"  # "off": the PyTorch ops path even where the kernel builds


class RowKernel:
    """The two entry points of the built library, on tensors."""

    def __init__(self, library: ctypes.CDLL):
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self._float32, self._bfloat16 = library.softmax_cost_f32, library.softmax_cost_bf16
        common = [pointer, pointer, pointer, size, size, pointer, pointer]
        self._float32.argtypes, self._bfloat16.argtypes = common, [*common, pointer]
        self._float32.restype = self._bfloat16.restype = ctypes.c_int

    def float32(self, logits, bias, targets, bias_sum) -> float:
        """logits [words, vocab] float32 (no bias) -> G = softmax - one-hot in place; bias_sum [vocab]
        float64 += G's column sums; returns the summed cross-entropy."""
        return self._call(self._float32, logits, bias, targets, bias_sum)

    def bfloat16(self, products, bias, targets, bias_sum, row) -> float:
        """As float32, over bfloat16 products, G written back in bfloat16; `row` [vocab] float32 scratch."""
        return self._call(self._bfloat16, products, bias, targets, bias_sum, row.data_ptr())

    @staticmethod
    def _call(function, logits, bias, targets, bias_sum, *scratch) -> float:
        words, vocab = logits.shape
        summed = ctypes.c_double()
        pointers = (logits.data_ptr(), bias.data_ptr(), targets.data_ptr())
        if function(*pointers, words, vocab, bias_sum.data_ptr(), ctypes.byref(summed), *scratch):
            raise IndexError(f"a target word id outside the vocabulary of {vocab} words")
        return summed.value


def row_kernel(device: torch.device) -> RowKernel | None:
    """The built kernel for `device`, or None: not a CPU, STUDY_ROW_KERNEL=off, or no build here."""
    if device.type != "cpu" or os.environ.get(SWITCH, "").lower() == "off":
        return None
    return _built()


@functools.cache
def _built() -> RowKernel | None:
    if shutil.which("ninja") is None:  # pip's ninja, where its venv's scripts are not on PATH (a bare .venv/bin/python)
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    source = SOURCE.read_text()
    digest = hashlib.sha256("\n".join([source, *FLAGS, platform.machine(), _cpu()]).encode()).hexdigest()[:16]
    name = f"study_softmax_rows_{digest}"
    try:
        try:
            return RowKernel(ctypes.CDLL(_build(name, source)))
        except OSError as error:
            if error.errno not in REFUSED_WRITES:
                raise
        # The extension cache cannot be written (a read-only or full home): this process builds its own copy in a
        # temporary folder; the loaded library outlives the folder.
        with tempfile.TemporaryDirectory(prefix="study-softmax-rows-") as folder:
            return RowKernel(ctypes.CDLL(_build(name, source, folder)))
    except (
        OSError,
        RuntimeError,
        ImportError,
        AttributeError,
        subprocess.SubprocessError,
    ) as error:  # no compiler or ninja, a failed build
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"warning: the fast step's compiled softmax kernel could not be built ({reason}); "
            "using PyTorch ops, the same mathematics a little slower",
            file=sys.stderr,
        )
        return None


def _build(name: str, source: str, folder: str | None = None) -> str:
    """The built library's path: torch.utils.cpp_extension's cache, or `folder`."""
    from torch.utils import cpp_extension  # setuptools and the build machinery: only when a step asks

    options = dict(extra_cflags=FLAGS, is_python_module=False, no_implicit_headers=True, build_directory=folder)
    return cpp_extension.load_inline(name, source, **options)


def _cpu() -> str:
    """This CPU's model and feature flags, as Linux reports them ('' elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
