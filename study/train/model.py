"""The word-level LSTM language model of Zaremba et al. (2014), as TF's ptb_word_lm builds it.

    model = LSTMLanguageModel(vocab_size=10000, hidden_size=200, num_layers=2, keep_prob=1.0, init_scale=0.1)
    logits, state = model(x, model.initial_state(batch_size=20))   # x: [batch, steps] ids -> [steps, batch, vocab]

Embedding -> dropout -> `num_layers` LSTM layers, each output dropped out -> softmax layer.
`torch.nn.LSTM` runs all time steps in one fused call (cuDNN on a GPU, oneDNN on the CPU). It runs
time-major, the layout both kernels use natively, so no activation is transposed and copied; the
softmax layer sees a 2-D matrix, so its bias is fused into one matrix multiply (addmm).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [num_layers, batch, hidden]


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, keep_prob: float, init_scale: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        drop = 1.0 - keep_prob
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.input_dropout = nn.Dropout(drop)
        # nn.LSTM's own dropout acts between layers; output_dropout covers the last layer, so every
        # layer's output is dropped as TF's DropoutWrapper(output_keep_prob) does.
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, dropout=drop if num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(drop)
        self.softmax = nn.Linear(hidden_size, vocab_size)
        self._init_weights(init_scale)

    def _init_weights(self, init_scale: float) -> None:
        # As the reference's graph: every variable from U(-init_scale, init_scale), the embedding and
        # the softmax bias included, except the LSTM biases, which start at zero: TF's BasicLSTMCell
        # creates its bias with a zeros initializer that overrides the scope's uniform one (and
        # forget_bias=0 adds no offset). TF's cell has one bias per layer where torch has two
        # (bias_ih + bias_hh): bias_hh is also frozen, so the layer has exactly TF's parameters,
        # gradients and gradient norm.
        for name, parameter in self.named_parameters():
            if name.startswith("lstm.bias"):
                nn.init.zeros_(parameter)
                parameter.requires_grad_(not name.startswith("lstm.bias_hh"))
            else:
                nn.init.uniform_(parameter, -init_scale, init_scale)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state, as at the start of every epoch and every evaluation."""
        device = device or self.softmax.weight.device
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x: [batch, steps] ids -> logits [steps, batch, vocab] (time-major) and the state after the last step."""
        hidden, state = self.features(x, state)
        return self.softmax(hidden).view(x.shape[1], x.shape[0], -1), state

    def features(self, x: torch.Tensor, state: State, sparse: bool = False) -> tuple[torch.Tensor, State]:
        """x: [batch, steps] ids -> the softmax layer's input [steps * batch, hidden] (time-major rows)
        and the state after the last step. `sparse`: the embedding's gradient comes as a sparse tensor
        of one row per word of x, not as a dense [vocab, hidden] one (the fast step's)."""
        if sparse:
            embedded = nn.functional.embedding(x.t(), self.embedding.weight, sparse=True)
        else:
            embedded = self.embedding(x.t())  # [steps, batch, hidden]
        hidden, state = self.run_lstm(self.input_dropout(embedded), state)
        steps, batch, _ = hidden.shape
        return self.output_dropout(hidden).view(steps * batch, self.hidden_size), state

    def run_lstm(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """self.lstm on inputs [steps, batch, hidden] from `state`. Under CUDA autocast to bfloat16 it
        runs in bfloat16 itself, autocast off: autocast's cuDNN RNN wrapper casts to float16 whatever
        dtype it was given, so "bf16" would train the LSTM in float16, without the loss scaling float16
        needs. The weights are cast as autocast casts them (gradients flow to the float32 masters) and
        handed to the op nn.LSTM.forward calls; cuDNN takes bfloat16 RNNs from 9.13. On the CPU
        autocast runs the LSTM as asked."""
        if inputs.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
            low = torch.bfloat16
            with torch.autocast("cuda", enabled=False), warnings.catch_warnings():
                # fresh casts are not in cuDNN's one weight buffer: it packs them per call, as autocast's wrapper does
                warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous chunk")
                hidden, h, c = torch._VF.lstm(
                    inputs.to(low),
                    (state[0].to(low), state[1].to(low)),
                    [weight.to(low) for weight in self.lstm._flat_weights],
                    self.lstm.bias,
                    self.lstm.num_layers,
                    self.lstm.dropout,
                    self.training,
                    self.lstm.bidirectional,
                    self.lstm.batch_first,
                )
            return hidden, (h, c)
        return self.lstm(inputs, state)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def flops_per_word(self) -> int:
        """Multiply-add FLOPs of one forward step for one word (embedding lookup is free)."""
        h, layers = self.hidden_size, self.num_layers
        lstm = layers * 2 * (4 * h) * (2 * h)  # gates: [4h, 2h] matrix times [x; h]
        softmax = 2 * h * self.softmax.out_features
        return lstm + softmax
