"""Losses that learn beyond the measured range from transformed or re-measured images
(deepinv's EILoss, MOILoss, MOEILoss); each adds measurement consistency ‖A f(y) − y‖₁:

* ``ei`` — equivariant imaging (Chen, Tachella & Davies 2021): x̂ = f(y); x₂ = T_g x̂ for a
  random transform g; L = MC + ‖x₂ − f(A x₂)‖₁. The transforms are the image-size-preserving
  group of circular shifts and flips (any H × W; the 90° rotations of deepinv's MRI example
  need square images);
* ``moi`` — multiple operators (Tachella et al. 2022): L = MC + ‖x̂ − f(A_g x̂, A_g)‖₁ with A_g
  another sample's mask of the batch, mirrored left–right (a mask of the same kind and
  acceleration that differs from the sample's own);
* ``mo-ei`` — both (Wang & Davies 2024): L = MC + ‖x₂ − f(A_g x₂, A_g)‖₁, x₂ = T_g x̂.

Norms are L1 per sample over the volume maximum, as the supervised loss. ``loss.ei_weight``
weighs the second term (deepinv: 1). Random draws use torch's global generator (checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MrbenchError
from .base import Loss, image_l1, measurement_consistency, operator, with_measurements


@dataclass
class EquivarianceOptions:
    ei_weight: float = 1.0  # ei, moi, mo-ei: weight of the equivariance / multi-operator term

    def check(self, key):
        if not (self.ei_weight >= 0):
            raise MrbenchError(f"{key('ei_weight')}: " + f"must be ≥ 0, got {self.ei_weight}")


def random_transform(x: torch.Tensor) -> torch.Tensor:
    """T_g x: one random circular shift (rows and columns) and optional left–right and
    up–down flips, the same for the whole batch."""
    h, w = x.shape[-2:]
    dy, dx = (int(torch.randint(0, n, ())) for n in (h, w))
    flips = torch.rand(2) < 0.5
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    dims = [d for d, f in zip((-2, -1), flips.tolist()) if f]
    return torch.flip(x, dims) if dims else x


def other_mask(mask: torch.Tensor) -> torch.Tensor:
    """A_g's mask for each sample: the next sample's mask, mirrored left–right (fftshifted
    k-space: still centred, same density, different lines)."""
    return torch.flip(torch.roll(mask, 1, dims=0), dims=(-1,))


def remeasured(run, batch, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """f(A x, A) for the operator of ``mask``."""
    op = operator(batch, mask)
    return run(with_measurements(batch, op.A(x), mask))


class EquivariantImaging(Loss):
    name = "ei"
    options = {"loss": EquivarianceOptions}

    def second_term(self, run, batch, x: torch.Tensor) -> torch.Tensor:
        x2 = random_transform(x)
        return image_l1(x2, remeasured(run, batch, x2, batch.mask), batch)

    def __call__(self, run, batch):
        x = run(batch)
        return measurement_consistency(x, batch) + self.cfg.loss.ei_weight * self.second_term(run, batch, x)


class MultiOperator(EquivariantImaging):
    name = "moi"

    def second_term(self, run, batch, x):
        return image_l1(x, remeasured(run, batch, x, other_mask(batch.mask)), batch)


class MultiOperatorEquivariant(EquivariantImaging):
    name = "mo-ei"

    def second_term(self, run, batch, x):
        x2 = random_transform(x)
        return image_l1(x2, remeasured(run, batch, x2, other_mask(batch.mask)), batch)
