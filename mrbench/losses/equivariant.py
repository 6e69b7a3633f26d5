"""Losses that learn beyond the measured range from transformed or re-measured images
(deepinv's EILoss, MOILoss, MOEILoss); each adds measurement consistency ‖A f(y) − y‖₁:

* ``ei`` — equivariant imaging (Chen, Tachella & Davies 2021): x̂ = f(y); x₂ = T_g x̂ for a
  random rotation g; L = MC + ‖x₂ − f(A x₂)‖₁. Rotations, as in the paper's and deepinv's MRI
  examples: a rotation turns measured columns into rows, so A T_g sees the null space of A.
  Shifts and flips do not: a circular shift is a phase ramp in k-space (it commutes with any
  Cartesian mask) and a centred equispaced mask is mirror-symmetric, so with them the
  zero-filled image is an exact minimiser of the EI term — MoDL trained that way collapsed to
  zero-filled in the demo (tests/test_losses.py keeps that from coming back);
* ``moi`` — multiple operators (Tachella et al. 2022): L = MC + ‖x̂ − f(A_g x̂, A_g)‖₁ with A_g
  another sample's mask of the batch, mirrored left–right (a mask of the same kind and
  acceleration that differs from the sample's own);
* ``mo-ei`` — both (Wang & Davies 2024): L = MC + ‖x₂ − f(A_g x₂, A_g)‖₁, x₂ = T_g x̂.

Norms are L1 per sample over the volume maximum, as the supervised loss. ``loss.ei_weight``
weighs the second term (deepinv: 1). Random draws use torch's global generator (checkpointed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import MrbenchError
from .base import Loss, image_l1, measurement_consistency, operator, with_measurements


@dataclass
class EquivarianceOptions:
    ei_weight: float = 1.0  # ei, moi, mo-ei: weight of the equivariance / multi-operator term

    def check(self, key):
        if not (self.ei_weight >= 0):
            raise MrbenchError(f"{key('ei_weight')}: " + f"must be ≥ 0, got {self.ei_weight}")


def random_transform(x: torch.Tensor) -> torch.Tensor:
    """T_g x for complex images (B, H, W): one random rotation for the whole batch. Square
    images: a multiple of 90° (k ∈ {1, 2, 3}; exact, no interpolation); others: an angle in
    (−180°, 180°) by bilinear interpolation, zero outside the field of view."""
    h, w = x.shape[-2:]
    if h == w:
        return torch.rot90(x, int(torch.randint(1, 4, ())), dims=(-2, -1))
    return rotate(x, float((torch.rand(()) * 2 - 1) * math.pi))


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate complex (B, H, W) images by ``angle`` radians about the centre (pixel aspect 1)."""
    h, w = x.shape[-2:]
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32, device=x.device)
    parts = torch.view_as_real(x).permute(0, 3, 1, 2)  # (B, 2, H, W)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(parts.shape), align_corners=False)
    out = F.grid_sample(parts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.view_as_complex(out.permute(0, 2, 3, 1).contiguous())


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
        return measurement_consistency(x, batch) + self.opts.ei_weight * self.second_term(run, batch, x)


class MultiOperator(EquivariantImaging):
    name = "moi"

    def second_term(self, run, batch, x):
        return image_l1(x, remeasured(run, batch, x, other_mask(batch.mask)), batch)


class MultiOperatorEquivariant(EquivariantImaging):
    name = "mo-ei"

    def second_term(self, run, batch, x):
        x2 = random_transform(x)
        return image_l1(x2, remeasured(run, batch, x2, other_mask(batch.mask)), batch)
