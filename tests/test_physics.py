"""The MRI forward operator (issue 13's first step): exact adjoint for every mask kind,
single- and multi-coil (one parametrised test over the mask registry), padding columns never
measured, and the conjugate-gradient solve of (A^H A + λI)x = b."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrbench.data.masks import MASKS, make_mask
from mrbench.physics import MRIOperator, conjugate_gradient


def _operator(kind: str, coils: int, b: int = 2, h: int = 24, w: int = 20, padding=(2, 18)):
    g = torch.Generator().manual_seed(0)
    masks = [torch.from_numpy(make_mask(kind, 4.0, 0.08)((h, w), seed, padding=padding).mask) for seed in range(b)]
    mask = torch.stack(masks)[:, None]
    sens = None
    if coils > 1:
        sens = torch.randn(b, coils, h, w, generator=g, dtype=torch.complex64)
        sens = sens / sens.abs().pow(2).sum(1, keepdim=True).sqrt()
    return MRIOperator(mask, sens), g


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("coils", [1, 4])
def test_adjoint_is_exact(kind, coils):
    op, g = _operator(kind, coils)
    b, h, w = op.mask.shape[0], op.mask.shape[-2], op.mask.shape[-1]
    x = torch.randn(b, h, w, generator=g, dtype=torch.complex64)
    y = torch.randn(b, coils, h, w, generator=g, dtype=torch.complex64)
    lhs = torch.vdot(op.A(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)
    assert op.A(x).dtype == torch.complex64 and op.A(x).shape == (b, coils, h, w)
    assert op.A(x)[..., :2].abs().max() == 0 and op.A(x)[..., 18:].abs().max() == 0  # padding never measured


@pytest.mark.parametrize("coils", [1, 3])
def test_normal_equation_solve(coils):
    op, g = _operator("random", coils)
    b, h, w = op.mask.shape[0], op.mask.shape[-2], op.mask.shape[-1]
    x_true = torch.randn(b, h, w, generator=g, dtype=torch.complex64)
    lam = torch.tensor([0.05, 0.5])  # one λ per sample
    rhs = op.normal(x_true) + lam.view(-1, 1, 1) * x_true
    x = op.solve(rhs, lam, iterations=200, tol=1e-7)
    assert (x - x_true).abs().max() < 1e-3 * x_true.abs().max()


def test_conjugate_gradient_matches_a_dense_solve_and_is_differentiable():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.complex128)
    hpd = m.conj().T @ m + torch.eye(6, dtype=torch.complex128)
    b = torch.randn(1, 6, generator=g, dtype=torch.complex128)
    x = conjugate_gradient(lambda v: v @ hpd.T, b, iterations=50, tol=1e-12)
    assert torch.allclose(x[0], torch.linalg.solve(hpd, b[0]), atol=1e-9)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = conjugate_gradient(lambda v: v @ hpd.T + lam * v, b, iterations=50, tol=1e-12)
    y.abs().pow(2).sum().backward()
    assert lam.grad is not None and np.isfinite(float(lam.grad))


def test_hard_data_consistency_is_the_projection_onto_the_measurements():
    """replace_measured (the U-Nets' DC step) keeps y on the measured points and F x
    elsewhere, and equals x − A^H(A x − y)."""
    from mrbench.fourier import fft2c

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 12, 12, generator=g, dtype=torch.complex64)
    mask = (torch.rand(2, 1, 1, 12, generator=g) < 0.5).float().expand(2, 1, 12, 12)
    y = mask * fft2c(torch.randn(2, 1, 12, 12, generator=g, dtype=torch.complex64))
    op = MRIOperator(mask)
    out = op.replace_measured(x, y)
    k = fft2c(out)
    torch.testing.assert_close(k * mask, y, atol=1e-5, rtol=0)
    torch.testing.assert_close(k * (1 - mask), fft2c(x) * (1 - mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0] - op.A_adjoint(op.A(x[:, 0]) - y), atol=1e-5, rtol=0)
