"""The fast training step: the same mathematics as the plain one, fewer passes over memory and no
large allocation per step.

    step = FastStep(model, optimizer, clipper, config)
    loss, state = step(x, y, state)   # one optimizer step on the window x, y [batch, steps]

The plain step (Trainer's reference: autograd through nn.Linear, sequence_cost, Clipper.clip_,
torch.optim.SGD) and this one compute the same cost, gradients, norms, clipping decisions and update
within float32 rounding (tests/test_fast_step.py holds them to 1e-6 on real PTB batches). What differs:
- the softmax layer and the cost are one autograd node on buffers allocated once (softmax.py),
  on the CPU through a compiled row kernel where it builds (softmax_rows.py; `row_kernel=False`
  or STUDY_ROW_KERNEL=off: PyTorch ops);
- the embedding's gradient is sparse: the rows of the window's words, summed per word (sgd.py);
- the global norm is the dense gradient's, exactly: squared_norms for the dense gradients, float64
  row norms for the embedding's summed rows, each word counted once;
- clipping is a factor (Clipper.decide_) that the SGD update applies in its one pass (sgd.py).
Every operation runs on the device the model is on; the host reads nothing here.
"""

from __future__ import annotations

import torch

from study.config import TrainConfig
from study.train import clipping, softmax_rows
from study.train.model import LSTMLanguageModel, State
from study.train.sgd import EmbeddingRows, row_squares, sgd_
from study.train.softmax import SoftmaxCost


class FastStep:
    """Forward, backward, clipping and update of one window; the gradients left in the parameters'
    .grad (the embedding's sparse, the others dense), unscaled by clipping (`value` clamps them, as
    clip_ does)."""

    def __init__(
        self,
        model: LSTMLanguageModel,
        optimizer: torch.optim.SGD,
        clipper: clipping.Clipper,
        config: TrainConfig,
        row_kernel: bool = True,
    ):
        words = config.batch_size * config.num_steps
        self.model, self.optimizer, self.clipper = model, optimizer, clipper
        self.bf16 = config.precision == "bf16"
        self.parameters = model.trainable_parameters()
        if self.parameters[0] is not model.embedding.weight:
            raise ValueError("the fast step expects the embedding first among the trainable parameters")
        kernel = softmax_rows.row_kernel(model.softmax.weight.device) if row_kernel else None
        self.softmax = SoftmaxCost(model.softmax, words, config.batch_size, config.precision, kernel)
        self.rows = EmbeddingRows(model.embedding.weight, words)
        own = {id(model.softmax.weight), id(model.softmax.bias)}
        self.autograd_parameters = [p for p in self.parameters if id(p) not in own]  # .grad from backward

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step on x, y [batch, steps] from `state` (already cut from the previous graph): returns
        the window's summed cross-entropy (0-d, on the device) and the state after it."""
        for parameter in self.autograd_parameters:
            parameter.grad = None  # backward hands its fresh gradient over, no copy and no add
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden, state = self.model.features(x, state, sparse=True)  # [words, hidden]
        cost, summed = self.softmax(hidden, y.t().flatten())  # targets in the rows' time-major order
        cost.backward()
        embedding_grad = self.parameters[0].grad  # sparse: one row per word of x, duplicates apart
        ids = embedding_grad._indices()[0]
        rows, unique = self.rows.gather(ids, embedding_grad._values())
        dense = [p.grad for p in self.parameters[1:]]
        # clipping.squared_norms looked up at each call, as clip_ does: benchmarks/grad_norms.py swaps it.
        squares = torch.cat([row_squares(rows, unique)[None], clipping.squared_norms(dense)])
        gradients = [rows, *dense]
        factor = self.clipper.decide_(squares, gradients)
        factors = list(factor.unbind()) if factor is not None and factor.dim() else [factor] * len(gradients)
        sgd_(self.parameters, gradients, factors, self.optimizer, rows=ids)
        return summed, state
