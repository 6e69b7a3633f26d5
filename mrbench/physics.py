"""The MRI forward operator: one place for A, A^H, A^H A and the regularised normal-equation
solve that data consistency, MoDL and the self-supervised losses all need (docs/design.md §11).

For a sampling mask M (1 where a k-space point is measured; padding columns of real fastMRI
data are never measured) and coil sensitivities S_c (single-coil: S = 1), with F the
orthonormal centred 2-D FFT (:mod:`mrbench.fourier`):

* forward        A x   = M ⊙ F(S_c x)                   image (B, H, W) → k-space (B, C, H, W)
* adjoint        A^H y = Σ_c conj(S_c) ⊙ F⁻¹(M ⊙ y_c)    k-space → image
* normal         A^H A x
* solve          x = (A^H A + λ I)⁻¹ b by batched conjugate gradients (Hermitian positive
                 definite for λ > 0), one λ per sample or one for the batch.

The adjoint is exact — ⟨A x, y⟩ = ⟨x, A^H y⟩ — because F is unitary, the mask is a real 0/1
diagonal and the sensitivities enter as a multiplication and its conjugate
(``tests/test_physics.py`` checks it for every mask kind, single- and multi-coil). Complex
data are ``torch.complex64`` throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fourier import fft2c, ifft2c


@dataclass
class MRIOperator:
    """A = M F S for one batch.

    ``mask``: real (B, 1, H, W) or (B, H, W) (or broadcastable), 1 = measured;
    ``sens``: complex (B, C, H, W) coil sensitivities, or None for single-coil (C = 1).
    """

    mask: torch.Tensor
    sens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask.dim() == 3:
            self.mask = self.mask.unsqueeze(1)
        if self.mask.is_complex():
            raise ValueError("the mask must be real (0/1)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, H, W) → measured k-space (B, C, H, W)."""
        coils = x.unsqueeze(1) if self.sens is None else self.sens * x.unsqueeze(1)
        return self.mask * fft2c(coils)

    A = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Measured k-space (B, C, H, W) → image (B, H, W): A^H y."""
        coils = ifft2c(self.mask * y)
        if self.sens is None:
            return coils[:, 0]
        return (self.sens.conj() * coils).sum(dim=1)

    A_adjoint = adjoint

    def replace_measured(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hard data consistency for single-coil images (B, 1, H, W): x with its measured
        k-space replaced by y, F^H(y + (1 − M) F x) = x − A^H(A x − y) (the DC layer of
        Schlemper et al. 2018 with λ → ∞); ``y`` is the masked measurement."""
        if self.sens is not None:
            raise ValueError("replace_measured is the single-coil projection (no sensitivities)")
        return ifft2c(y + fft2c(x) * (1 - self.mask.to(x.real.dtype)))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    A_normal = normal

    def solve(self, b: torch.Tensor, lam: torch.Tensor | float, x0: torch.Tensor | None = None,
              iterations: int = 10, tol: float = 1e-6) -> torch.Tensor:
        """(A^H A + λI)⁻¹ b by conjugate gradients; differentiable (unrolled)."""
        return conjugate_gradient(lambda v: self.normal(v) + _per_sample(lam, v) * v, b, x0, iterations, tol)


def _per_sample(lam: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """λ broadcast over a (B, H, W) batch: a number, a scalar tensor or one per sample (B,)."""
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        return lam.view(-1, *([1] * (like.dim() - 1)))
    return lam


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ⟨a, b⟩ = Σ conj(a)·b over all but the batch dimension, (B,) complex."""
    return (a.conj() * b).flatten(1).sum(dim=1)


def conjugate_gradient(
    apply, b: torch.Tensor, x0: torch.Tensor | None = None, iterations: int = 10, tol: float = 1e-6
) -> torch.Tensor:
    """Solve ``apply(x) = b`` for a Hermitian positive definite ``apply``, each sample of the
    batch its own system (the step sizes are per sample). Stops early when every sample's
    residual norm is below ``tol`` × its ‖b‖ — checked after an update, never before the
    first, so the result always depends on ``b`` (a warm start ``x0`` that already solves the
    system would otherwise be returned as is and cut the gradient to ``b``: MoDL trained with
    the measurement-consistency loss failed that way). Plain tensor ops: gradients flow
    through the iterations."""
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - apply(x) if x0 is not None else b.clone()
    p = r
    rs = _dot(r, r).real
    b_norm = _dot(b, b).real.sqrt().clamp_min(1e-30)
    shape = (-1, *([1] * (b.dim() - 1)))
    for _ in range(iterations):
        ap = apply(p)
        alpha = rs / _dot(p, ap).real.clamp_min(1e-30)
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * ap
        rs_new = _dot(r, r).real
        p = r + (rs_new / rs.clamp_min(1e-30)).view(shape) * p
        rs = rs_new
        if bool((rs.sqrt() <= tol * b_norm).all()):
            break
    return x
