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

Every backbone goes through this operator: the U-Net's data consistency
(:meth:`MRIOperator.replace_measured`), MoDL's CG step (:meth:`MRIOperator.solve`), RIM's
likelihood gradient, and the VarNet cascades (:meth:`MRIOperator.to_image`,
:meth:`MRIOperator.to_kspace`, :meth:`MRIOperator.gradient_step`). For speed the VarNet holds
k-space in a *working domain* (:class:`Domain`) where the centred FFTs become plain ones
exactly; an operator built with that domain takes the mask and k-space in it, and its images
are always centred. The coil expand/reduce and gradient-step kernels have hand-written
backward passes (checked against autograd by gradcheck in ``tests/test_models.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .fourier import alternating_sign, fft2c, ifft2c, rss

#: each domain's (forward, inverse) FFT pair (orthonormal)
_TRANSFORMS = {
    "columns": (
        functools.partial(torch.fft.fft, dim=-1, norm="ortho"),
        functools.partial(torch.fft.ifft, dim=-1, norm="ortho"),
    ),
    "shifted": (functools.partial(torch.fft.fft2, norm="ortho"), functools.partial(torch.fft.ifft2, norm="ortho")),
    "centred": (fft2c, ifft2c),
}


@dataclass(frozen=True)
class Domain:
    """Where the cascades hold k-space, and the FFT pair that goes with it.

    ``kind``:

    * ``"centred"``: centred k-space, ``fft2c`` / ``ifft2c`` (any H, W);
    * ``"shifted"``: ``c ⊙ P k`` over both dims (even H, W), plain 2-D FFTs;
    * ``"columns"``: the FFT along H already applied (centred, once), then
      ``c ⊙ P`` along W (even W); plain FFTs along W only. Valid only when
      the mask is constant along H.

    In every domain ``inverse(k_work)`` is the centred image and
    ``forward(centred image)`` is working-domain k-space.
    """

    kind: str = "centred"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TRANSFORMS[self.kind][0](x)

    def inverse(self, k: torch.Tensor) -> torch.Tensor:
        return _TRANSFORMS[self.kind][1](k)

    def kspace(self, kspace: torch.Tensor) -> torch.Tensor:
        """Centred k-space (…, H, W) → working domain."""
        h, w = kspace.shape[-2:]
        if self.kind == "columns":
            k = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(kspace, dim=-2), dim=-2, norm="ortho"), dim=-2)
            return torch.fft.ifftshift(k, dim=-1) * alternating_sign(w, k.device)
        if self.kind == "shifted":
            k = torch.fft.ifftshift(kspace, dim=(-2, -1))
            return k * (alternating_sign(h, k.device)[:, None] * alternating_sign(w, k.device))
        return kspace

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Centred mask (…, H or 1, W) → working domain (the same permutation as k-space)."""
        if self.kind == "columns":
            return torch.fft.ifftshift(mask, dim=-1)
        if self.kind == "shifted":
            return torch.fft.ifftshift(mask, dim=(-2, -1))
        return mask


def choose_domain(mask: torch.Tensor, fast: bool = True) -> Domain:
    """The fastest exact :class:`Domain` for this (B, 1, H, W) centred mask."""
    h, w = mask.shape[-2:]
    if not fast:
        return Domain("centred")
    # under torch.func.vmap (MAML's meta.vmap) the mask's values cannot be inspected: the
    # column test is skipped and the domain exact for any mask is taken
    inspectable = not torch._C._functorch.is_functorch_wrapped_tensor(mask)
    if w % 2 == 0 and inspectable and (h == 1 or torch.equal(mask, mask[..., :1, :].expand_as(mask))):
        return Domain("columns")
    if h % 2 == 0 and w % 2 == 0:
        return Domain("shifted")
    return Domain("centred")


class _SensReduce(torch.autograd.Function):
    """``z = Σ_c conj(S_c) · x_c`` → (B, 1, H, W); ``sens_conj`` = conj(S), materialised."""

    generate_vmap_rule = True  # forward and backward are plain tensor ops (MAML's meta.vmap)

    @staticmethod
    def forward(x, sens, sens_conj):
        return (x * sens_conj).sum(dim=1, keepdim=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, sens, _ = inputs
        ctx.save_for_backward(x, sens)

    @staticmethod
    def backward(ctx, g):
        x, sens = ctx.saved_tensors
        gx = sens * g if ctx.needs_input_grad[0] else None
        gs = x * g.conj() if ctx.needs_input_grad[1] else None  # conj of a 1-coil tensor only
        return gx, gs, None


class _SensExpand(torch.autograd.Function):
    """``e_c = S_c · u`` → (B, C, H, W) from a (B, 1, H, W) image ``u``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(sens, u, sens_conj):
        return sens * u

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, u, sens_conj = inputs
        ctx.save_for_backward(u, sens_conj)

    @staticmethod
    def backward(ctx, g):
        u, sens_conj = ctx.saved_tensors
        gs = g * u.conj() if ctx.needs_input_grad[0] else None
        gu = (g * sens_conj).sum(dim=1, keepdim=True) if ctx.needs_input_grad[1] else None
        return gs, gu, None


class _DataConsistency(torch.autograd.Function):
    """``k − η · M ⊙ (k − k₀) + r`` with a real mask M (B, 1, H|1, W) and a 0-d real η.

    Four passes over the coil k-space forward, two backward (autograd's
    version needs a conjugate copy and a coil reduction for η's gradient).
    The backward recomputes ``M ⊙ (k − k₀)`` from the saved inputs, so it is itself
    differentiable: second-order MAML through a VarNet gets exact meta-gradients.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(k, k0, r, eta, mask):
        dm = (k - k0).mul_(mask)  # M ⊙ (k − k₀)
        return torch.add(k, r).sub_(dm.mul_(eta))  # (not addcmul_: it has no vmap batching rule)

    @staticmethod
    def setup_context(ctx, inputs, output):
        k, k0, _, eta, mask = inputs
        ctx.save_for_backward(k, k0, eta, mask)

    @staticmethod
    def backward(ctx, g):
        k, k0, eta, mask = ctx.saved_tensors
        dm = (k - k0) * mask if ctx.needs_input_grad[3] else None
        gk = gk0 = geta = None
        w = eta * mask  # small (B, 1, H|1, W)
        if ctx.needs_input_grad[0]:
            gk = g * (1.0 - w)
        if ctx.needs_input_grad[1]:
            gk0 = g * w
        if ctx.needs_input_grad[3]:
            # dL/dη = −Re Σ conj(M ⊙ (k − k₀)) · g: one dot product
            geta = -torch.vdot(dm.reshape(-1), g.reshape(-1)).real.reshape(eta.shape)
        return gk, gk0, g, geta, None


@dataclass
class MRIOperator:
    """A = M F S for one batch.

    ``mask``: real (B, 1, H, W) or (B, H, W) (or broadcastable), 1 = measured;
    ``sens``: complex (B, C, H, W) coil sensitivities, or None for single-coil (C = 1);
    ``domain``: where ``mask`` and k-space live (:class:`Domain`; centred by default).
    """

    mask: torch.Tensor
    sens: torch.Tensor | None = None
    domain: Domain = Domain()

    def __post_init__(self) -> None:
        if self.mask.dim() == 3:
            self.mask = self.mask.unsqueeze(1)
        if self.mask.is_complex():
            raise ValueError("the mask must be real (0/1)")
        # conj(S) materialised once per operator (per forward pass), not once per use
        self._sens_conj = None if self.sens is None else self.sens.detach().conj().resolve_conj()

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 1, H, W) → coil images S x (B, C, H, W)."""
        return x if self.sens is None else _SensExpand.apply(self.sens, x, self._sens_conj)

    def reduce(self, coils: torch.Tensor) -> torch.Tensor:
        """Coil images (B, C, H, W) → Σ_c conj(S_c) x_c (B, 1, H, W) (S^H)."""
        return coils if self.sens is None else _SensReduce.apply(coils, self.sens, self._sens_conj)

    def to_kspace(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 1, H, W) → full (unmasked) coil k-space F S x in the operator's domain."""
        return self.domain.forward(self.expand(x))

    def to_image(self, k: torch.Tensor) -> torch.Tensor:
        """Coil k-space (B, C, H, W) in the operator's domain → S^H F⁻¹ k (B, 1, H, W)."""
        return self.reduce(self.domain.inverse(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, H, W) → measured k-space (B, C, H, W)."""
        return self.mask * self.to_kspace(x.unsqueeze(1))

    A = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Measured k-space (B, C, H, W) → image (B, H, W): A^H y."""
        return self.to_image(self.mask * y)[:, 0]

    A_adjoint = adjoint

    def gradient_step(self, k: torch.Tensor, k0: torch.Tensor, r: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """``k − η M ⊙ (k − k₀) + r`` for coil k-space: a gradient step of size η on
        ½‖M k − k₀‖² plus a regulariser's update ``r`` (the VarNet cascade, Sriram et al.
        2020, eq. 3). ``eta``: a 0-d tensor (fused kernel) or one per sample (B,)."""
        if eta.dim() == 0:
            return _DataConsistency.apply(k, k0, r, eta, self.mask)
        return k + r - eta.view(-1, 1, 1, 1) * (self.mask * (k - k0))

    def replace_measured(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hard data consistency for single-coil images (B, 1, H, W): x with its measured
        k-space replaced by y, F^H(y + (1 − M) F x) = x − A^H(A x − y) (the DC layer of
        Schlemper et al. 2018 with λ → ∞); ``y`` is the masked measurement."""
        if self.sens is not None:
            raise ValueError("replace_measured is the single-coil projection (no sensitivities)")
        return self.domain.inverse(y + self.domain.forward(x) * (1 - self.mask.to(x.real.dtype)))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    def solve(
        self,
        b: torch.Tensor,
        lam: torch.Tensor | float,
        x0: torch.Tensor | None = None,
        iterations: int = 10,
        tol: float = 1e-6,
    ) -> torch.Tensor:
        """(A^H A + λI)⁻¹ b by conjugate gradients; differentiable (unrolled)."""
        return conjugate_gradient(lambda v: self.normal(v) + _per_sample(lam, v) * v, b, x0, iterations, tol)


def zero_filled(kspace: torch.Tensor) -> torch.Tensor:
    """The zero-filled coil-combined image (B, 1, H, W) of masked centred k-space (B, C, H, W),
    the input of the U-Net backbones. Single-coil it is A^H y with S = 1 (y is zero off the
    mask, so M drops out), phase included. Multi-coil, without sensitivities the coil phases
    cannot be combined coherently: the RSS over coils with zero phase, which is what fastMRI's
    multi-coil targets are."""
    images = ifft2c(kspace)
    if images.shape[1] == 1:
        return images
    return rss(images, dim=1).unsqueeze(1).to(images.dtype)


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
