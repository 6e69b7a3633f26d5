"""The ``modl`` backbone: model-based deep learning (Aggarwal, Mani & Jacob 2019, MoDL).

K iterations of a shared CNN denoiser and an exact data-consistency step::

    x₀ = A^H y
    z_k = D(x_k)                                 (D = identity + residual NormUNet, shared)
    x_{k+1} = (A^H A + λ I)⁻¹ (A^H y + λ z_k)    (conjugate gradients, mrbench.physics)

λ > 0 is learned (stored as log λ). The solve is the operator's batched CG
(:meth:`~mrbench.physics.MRIOperator.solve`), differentiable through its iterations. Single-coil
data use A = M F; multi-coil data use sensitivities estimated from the ACS lines by the
VarNet's :class:`~mrbench.models.varnet.SensitivityModel`, so A = M F S and the output is the
sensitivity-combined complex image. ``iterations`` (``model.iterations``; deepinv's MRI
example uses 3) counts denoiser + solve pairs; the denoiser starts as a near-zero correction,
so the untrained MoDL is the λ-regularised least-squares image (zero-filled for λ → 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mrbench.errors import MrbenchError
from mrbench.models.unet import NormUNet
from mrbench.models.varnet import SensitivityModel
from mrbench.physics import MRIOperator


@dataclass
class UnrolledOptions:
    """``[model]`` keys of the unrolled backbones (``modl``: denoiser + CG iterations, ``rim``:
    recurrent time steps)."""

    iterations: int = 0  # 0 = the backbone's default (modl 3, rim 8)

    def check(self, key):
        if self.iterations < 0:
            raise MrbenchError(f"{key('iterations')}: must be ≥ 0 (0 = the backbone's default)")


def sensitivity_operator(sens_net: SensitivityModel, kspace, mask, num_low_frequencies) -> MRIOperator:
    """A = M F (single-coil) or M F S with S estimated from the ACS lines (multi-coil)."""
    sens = None if kspace.shape[1] == 1 else sens_net(kspace, num_low_frequencies)
    return MRIOperator(mask.to(torch.float32), sens)


class MoDL(nn.Module):
    preset_width = 2  # one shared denoiser: twice the VarNet's per-cascade width
    options = {"model": UnrolledOptions}

    def __init__(
        self,
        iterations: int = 0,
        chans: int = 16,
        pools: int = 3,
        sens_chans: int = 4,
        sens_pools: int = 2,
        cg_iterations: int = 10,
        lam_init: float = 0.05,
    ):
        super().__init__()
        self.iterations = iterations or 3
        self.cg_iterations = cg_iterations
        self.denoiser = NormUNet(chans, pools, correction=True)
        self.sens_net = SensitivityModel(sens_chans, sens_pools)
        self.log_lam = nn.Parameter(torch.tensor(float(lam_init)).log())

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
        op = sensitivity_operator(self.sens_net, kspace, mask, num_low_frequencies)
        aty = op.A_adjoint(kspace)
        lam = self.log_lam.exp()
        x = aty
        for _ in range(self.iterations):
            z = x + self.denoiser(x.unsqueeze(1))[:, 0]
            x = op.solve(aty + lam * z, lam, x0=x, iterations=self.cg_iterations)
        return x
