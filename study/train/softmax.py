"""The softmax layer and the cost in one autograd node, on buffers allocated once: the fast step's.

    layer = SoftmaxCost(model.softmax, words=batch_size * num_steps, batch_size=batch_size, precision="fp32")
    cost, summed = layer(hidden, targets)   # hidden [words, hidden_size] (time-major rows), targets [words]
    cost.backward()                         # dH to the LSTM; dW and db into buffers, model.softmax's .grad

The cost is the reference's (trainer.sequence_cost over nn.Linear): cross-entropy summed over the
words of a window and divided by the batch size, so summed over the time steps and averaged over the
batch. What differs is where the work goes. The [words, vocab] logits land in one buffer that lives
as long as the layer (16 MB at the small preset: a fresh one per step costs a page fault per 4 kB);
the bias, the softmax, the log-normaliser and every sum are float32; the softmax overwrites the
logits in place and the gradient (softmax - one-hot) is written over it, then the two products
dH = G·W and dW = Gᵀ·H read it, with the 1 / batch folded into the products. bf16 runs the three
products in bfloat16 (W cast into a bfloat16 buffer, G cast once for both backward products) and
still takes the bias gradient from the float32 G, where autocast's path sums the bfloat16 one
(1e-3 relative error).

With the compiled row kernel (softmax_rows.py, where it builds: the fast step passes it on the
CPU), one call does the bias, the softmax, the cost, G and the bias gradient's sums row by row while
the row is in cache, where the ops below stream the whole buffer through memory once each; in
bf16 it reads the bfloat16 products and writes G over them, so no float32 logits exist at all.

W and b are not inputs of the autograd node: their gradients go straight into buffers that are
their parameters' `.grad`, so autograd neither allocates nor copies them. Only H's gradient flows on.
"""

from __future__ import annotations

import torch
from torch import nn

from study.config import Precision
from study.train.softmax_rows import RowKernel


class SoftmaxCost:
    """The softmax layer `linear` and the cost of windows of `words` words from `batch_size`
    sequences, with its buffers; each backward makes two of them `linear.weight.grad` and `.bias.grad`."""

    def __init__(
        self, linear: nn.Linear, words: int, batch_size: int, precision: Precision, kernel: RowKernel | None = None
    ):
        self.weight, self.bias = linear.weight, linear.bias  # [vocab, hidden], [vocab] float32
        self.kernel = kernel
        self.batch_size = batch_size
        self.scale = 1.0 / batch_size  # d cost / d summed cross-entropy
        vocab, hidden = self.weight.shape
        device = self.weight.device
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # of the three products
        if kernel is None or self.dtype == torch.float32:
            self.logits = torch.empty(words, vocab, device=device)  # float32: logits, then softmax, then G
        if kernel is None:
            self.rows = torch.arange(words, device=device)  # [words] row index of each target
            self.ones = torch.ones(words, device=device)  # [words] for the bias gradient's column sums
        else:
            self.bias_sums = torch.empty(vocab, device=device, dtype=torch.float64)  # the kernel's column sums of G
        if self.dtype == torch.bfloat16:
            if kernel is not None:
                self.row = torch.empty(vocab, device=device)  # the kernel's float32 row
            self.products = torch.empty(words, vocab, device=device, dtype=self.dtype)  # H·Wᵀ, then G
            self.low_weight = torch.empty(vocab, hidden, device=device, dtype=self.dtype)  # W
            self.low_weight_grad = torch.empty(vocab, hidden, device=device, dtype=self.dtype)  # Gᵀ·H
        self.weight_grad = torch.zeros_like(self.weight)  # handed to the parameters as .grad by each backward
        self.bias_grad = torch.zeros_like(self.bias)

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [words, hidden_size] (float32, or bfloat16 for bf16), targets [words] ids ->
        (cost, differentiable; the summed cross-entropy, not). One call per backward: the backward
        reads the buffers this call filled."""
        return _SoftmaxCostNode.apply(hidden, targets, self)

    @torch.no_grad()
    def forward_(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Fill the buffers with G = softmax - one-hot; return the summed cross-entropy (0-d float32)."""
        if self.dtype == torch.bfloat16:
            self.low_weight.copy_(self.weight)
            torch.mm(hidden, self.low_weight.t(), out=self.products)
        else:
            torch.mm(hidden, self.weight.t(), out=self.logits)
        if self.kernel is not None:
            return self._kernel_rows(targets)
        logits = self.logits
        if self.dtype == torch.bfloat16:
            logits.copy_(self.products)
        logits.add_(self.bias)  # float32 either way
        target_logits = logits.gather(1, targets[:, None])  # [words, 1]
        largest = logits.amax(dim=1)  # [words]
        torch._softmax(logits, 1, False, out=logits)  # in place: the probabilities
        # log Z = largest logit - log(largest probability): the largest probability is
        # 1 / sum(exp(logit - largest)) >= 1 / vocab, so its log never underflows, however far apart
        # the logits are; -log(p[target]) would be -log(0) = inf past ~100 nats.
        log_normaliser = largest - logits.amax(dim=1).log()  # [words]
        summed = log_normaliser.sum() - target_logits.sum()
        logits[self.rows, targets] -= 1  # G, unscaled: the 1 / batch goes into the products
        if self.dtype == torch.bfloat16:
            self.products.copy_(logits)  # G in bfloat16, for both backward products
        return summed

    def _kernel_rows(self, targets: torch.Tensor) -> torch.Tensor:
        """forward_'s rest on the compiled kernel, once the products H·Wᵀ are in their buffer."""
        targets = targets.to(torch.int64).contiguous()  # the kernel reads raw int64 ids
        self.bias_sums.zero_()
        if self.dtype == torch.bfloat16:
            summed = self.kernel.bfloat16(self.products, self.bias, targets, self.bias_sums, self.row)
        else:
            summed = self.kernel.float32(self.logits, self.bias, targets, self.bias_sums)
        return torch.tensor(summed, dtype=torch.float32)

    @torch.no_grad()
    def backward_(self, hidden: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Write dW and db into their buffers, the parameters' .grad; return dH [words, hidden_size] in hidden's dtype.
        `grad` is d loss / d cost, 1 when the cost is what backward starts from; it multiplies H (exact
        for 1, also in bfloat16) and the small results, so that no [vocab]-sized pass is spent on it."""
        gradient = self.products if self.dtype == torch.bfloat16 else self.logits  # G [words, vocab]
        low_weight = self.low_weight if self.dtype == torch.bfloat16 else self.weight
        scaled = hidden * grad.to(hidden.dtype)  # [words, hidden]
        weight_grad = self.low_weight_grad if self.dtype == torch.bfloat16 else self.weight_grad
        torch.addmm(weight_grad, gradient.t(), scaled, beta=0, alpha=self.scale, out=weight_grad)
        if self.dtype == torch.bfloat16:
            self.weight_grad.copy_(weight_grad)
        # db = (G summed over the words) / batch, from the float32 G. fp32: torch's sum, pairwise; a
        # matrix-vector product, twice as fast, loses ~4x more where p - 1 cancels p (2e-7 relative),
        # which is nothing beside bf16's own 4e-3, so bf16 takes it.
        if self.kernel is not None:  # summed in float64 by the kernel, rounded once
            self.bias_grad.copy_(self.bias_sums.mul_(grad.double() * self.scale))
        elif self.dtype == torch.bfloat16:
            torch.mv(self.logits.t(), self.ones, out=self.bias_grad).mul_(grad * self.scale)
        else:
            torch.sum(self.logits, 0, out=self.bias_grad).mul_(grad * self.scale)
        self.weight.grad, self.bias.grad = self.weight_grad, self.bias_grad
        hidden_grad = torch.empty_like(hidden)
        torch.addmm(hidden_grad, gradient, low_weight, beta=0, alpha=self.scale, out=hidden_grad)
        return hidden_grad.mul_(grad.to(hidden.dtype))


class _SoftmaxCostNode(torch.autograd.Function):
    """The autograd node of SoftmaxCost: the gradient is computed with the cost; backward does the products."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, targets: torch.Tensor, layer: SoftmaxCost):
        with torch.autocast(hidden.device.type, enabled=False):  # the layer chooses its own dtypes
            summed = layer.forward_(hidden, targets)
        ctx.layer = layer
        ctx.save_for_backward(hidden)
        ctx.mark_non_differentiable(summed)
        return summed / layer.batch_size, summed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _summed_grad: torch.Tensor | None):
        (hidden,) = ctx.saved_tensors
        with torch.autocast(hidden.device.type, enabled=False):
            return ctx.layer.backward_(hidden, grad), None, None
