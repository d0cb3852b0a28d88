"""The fast step's SGD update: clipping fused into it, and the embedding updated row by row.

    rows = EmbeddingRows(model.embedding.weight, words=batch_size * num_steps)
    summed, unique = rows.gather(ids, values)      # from the sparse gradient of F.embedding(sparse=True)
    sgd_(parameters, [summed, *dense_gradients], factors, optimizer, rows=ids)

torch.optim.SGD with clipping makes three passes over every gradient (clip: norm, then multiply;
step: add); `sgd_` makes one for the update, p -= lr · factor · g, with the factor Clipper.decide_
returned (min(1, c / norm), a 0-d tensor on the device, so the host never waits for it). Momentum
works as in torch.optim.SGD (buf = momentum · buf + g; p -= lr · buf), its buffers kept in the
optimizer's state, so a saved state is the same whichever step made it.

The embedding's gradient is nonzero only in the rows of the batch's words: the update touches those
rows (at the small preset 400 of 10,000; momentum aside, which moves every row). The rows are summed
per word first, duplicates included, so that norm and update are those of the dense gradient.
"""

from __future__ import annotations

import torch


class EmbeddingRows:
    """Scratch buffers that turn the per-occurrence rows of a sparse embedding gradient into each
    word's summed row; left as they were found after every call."""

    def __init__(self, weight: torch.Tensor, words: int):
        self.sums = torch.zeros_like(weight)  # [vocab, hidden], zero between calls
        self.words = words
        self.first = torch.full((weight.shape[0],), words, device=weight.device)  # [vocab] int64, `words` between calls
        self.positions = torch.arange(words, device=weight.device)  # [words]

    @torch.no_grad()
    def gather(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [words] and values [words, hidden], one per occurrence -> (summed [words, hidden]: the
        dense gradient's row of each occurrence's word, unique [words] bool: True at each word's first
        occurrence, so that a sum over the unique rows counts each word once)."""
        self.sums.index_put_((ids,), values, accumulate=True)  # sequential on the CPU, sorted on a GPU: deterministic
        summed = self.sums.index_select(0, ids)
        self.sums.index_fill_(0, ids, 0)
        self.first.scatter_reduce_(0, ids, self.positions, "amin")
        unique = self.first.index_select(0, ids) == self.positions
        self.first.index_fill_(0, ids, self.words)
        return summed, unique


def row_squares(summed: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
    """0-d float64: the squared norm of the dense gradient whose rows `gather` returned, from float64
    row norms (exact; no float32 running sum at all)."""
    norms = torch.linalg.vector_norm(summed, dim=1, dtype=torch.float64)  # [words]
    return (norms.square() * unique).sum()


@torch.no_grad()
def sgd_(
    parameters: list[torch.Tensor],
    gradients: list[torch.Tensor],
    factors: list[torch.Tensor | None],
    optimizer: torch.optim.SGD,
    rows: torch.Tensor | None = None,
) -> None:
    """One SGD step of `parameters` with `gradients` times `factors` (0-d tensors, None for 1), at
    the learning rate and momentum of the optimizer's one group. With `rows` [words] ids, the first
    parameter is an embedding and its gradient the summed rows of `EmbeddingRows.gather`."""
    (group,) = optimizer.param_groups
    lr, momentum = group["lr"], group["momentum"]
    if group["weight_decay"] or group["dampening"] or group["nesterov"] or group["maximize"]:
        raise ValueError("the fused SGD update does plain SGD with momentum only")
    for index, (parameter, gradient, factor) in enumerate(zip(parameters, gradients, factors, strict=True)):
        sparse = rows is not None and index == 0
        if momentum:
            state = optimizer.state[parameter]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(parameter)  # momentum · 0 + g: torch's first step
            target, rate = state["momentum_buffer"].mul_(momentum), 1.0
        else:
            target, rate = parameter, -lr
        if sparse:  # the rows of `target` at the batch's words; duplicates write the same values back
            target.index_put_((rows,), _add(target.index_select(0, rows), gradient, factor, rate))
        else:
            _add(target, gradient, factor, rate)
        if momentum:
            parameter.add_(target, alpha=-lr)


def _add(target: torch.Tensor, gradient: torch.Tensor, factor: torch.Tensor | None, rate: float) -> torch.Tensor:
    """target += rate · factor · gradient in one pass. Rounded once less than clip_'s multiply and
    SGD's add: about 1% of the weights then differ from theirs in the last bit."""
    if factor is None:
        return target.add_(gradient, alpha=rate)
    return target.addcmul_(gradient, factor * rate)
