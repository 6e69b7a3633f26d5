"""The ``rim`` backbone: a Recurrent Inference Machine (Putzky & Welling 2017; for MRI,
Lønning et al. 2019).

Instead of a fixed unrolled algorithm, a recurrent network *learns the update*: at each of T
time steps it reads the current estimate x_t and the likelihood gradient

    ∇ log p(y | x_t) ∝ A^H (y − A x_t)

and, through two convolutional GRU cells whose hidden states are its memory, proposes a step::

    h_{t+1} = GRU(x_t, ∇_t, h_t),   x_{t+1} = x_t + conv(h_{t+1})

Training follows the talk's objective: the loss is averaged over all T estimates (the network is
pushed to improve at every step), evaluation uses the last. The average applies to the
supervised loss (:class:`~mrbench.losses.supervised.Supervised` reads ``out.estimates``); the
self-supervised losses see the last estimate. Inputs are scaled per sample by the zero-filled
image's RMS and the output scaled back, so the network is scale-free like the VarNet.
A = M F (single-coil) or M F S with the VarNet's ACS sensitivity estimate (multi-coil).
``iterations`` = T (``model.iterations``, default 8); ``chans`` = hidden channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mrbench.models.modl import UnrolledOptions, sensitivity_operator
from mrbench.models.varnet import SensitivityModel


class ConvGRUCell(nn.Module):
    """A convolutional GRU: gates and candidate from conv3×3 of [input, hidden]."""

    def __init__(self, cin: int, hidden: int):
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        cand = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * cand


class RIM(nn.Module):
    preset_width = 2
    options = {"model": UnrolledOptions}

    def __init__(self, iterations: int = 0, chans: int = 16, sens_chans: int = 4, sens_pools: int = 2):
        super().__init__()
        self.iterations = iterations or 8
        self.chans = chans
        self.encode = nn.Conv2d(4, chans, 5, padding=2)
        self.gru1 = ConvGRUCell(chans, chans)
        self.middle = nn.Conv2d(chans, chans, 3, padding=2, dilation=2)
        self.gru2 = ConvGRUCell(chans, chans)
        self.step = nn.Conv2d(chans, 2, 3, padding=1)
        with torch.no_grad():  # start near "no update": the untrained RIM is zero-filled
            self.step.weight.mul_(0.01)
            self.step.bias.zero_()
        self.sens_net = SensitivityModel(sens_chans, sens_pools)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
        op = sensitivity_operator(self.sens_net, kspace, mask, num_low_frequencies)
        aty = op.A_adjoint(kspace)
        scale = aty.abs().square().flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1)
        y, x = kspace / scale.unsqueeze(1), aty / scale
        b, h, w = x.shape
        h1 = x.new_zeros((b, self.chans, h, w), dtype=torch.float32)
        h2 = torch.zeros_like(h1)
        estimates = []
        for _ in range(self.iterations):
            grad = op.A_adjoint(y - op.A(x))
            inp = torch.stack([x.real, x.imag, grad.real, grad.imag], dim=1)
            h1 = self.gru1(F.leaky_relu(self.encode(inp), 0.2), h1)
            h2 = self.gru2(F.leaky_relu(self.middle(h1), 0.2), h2)
            d = self.step(h2)
            x = x + torch.complex(d[:, 0], d[:, 1])
            estimates.append(x * scale)
        out = estimates[-1]
        if self.training:
            out.estimates = estimates  # the supervised loss averages over them (module docstring)
        return out
