"""The baseline LSTM core, trained by (truncated) BPTT through the default learner hooks."""

from __future__ import annotations

import torch
from torch import nn

from agent.cores.base import Core, State, chrono_forget_bias


class LSTMCore(Core):
    def __init__(self, input_size: int, hidden_size: int, chrono_max: float = 0.0):
        """``chrono_max`` > 2: chrono initialisation (Tallec & Ollivier 2018) of the forget-gate bias
        (:func:`chrono_forget_bias`) and the input gate's as its negative; otherwise PyTorch's init."""
        super().__init__()
        self.input_size = input_size
        self.output_size = hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)
        if chrono_max > 2:  # PyTorch's gate order: input, forget, cell, output
            N = hidden_size
            b_f = chrono_forget_bias(N, chrono_max)
            with torch.no_grad():
                self.cell.bias_hh.zero_()
                self.cell.bias_ih[N:2 * N] = b_f
                self.cell.bias_ih[:N] = -b_f

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """(h, c), each [batch_size, hidden]."""
        zeros = torch.zeros(batch_size, self.output_size, device=device, dtype=self.cell.weight_ih.dtype)
        return zeros, zeros.clone()

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = self.cell(x, state)
        return h, (h, c)
