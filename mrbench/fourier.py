"""Orthonormal centred 2-D Fourier transforms and image helpers.

fastMRI's convention: ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``
over the last two dimensions, on native complex tensors. Orthonormality makes
the transform an isometry, so k-space noise and image noise have the same
standard deviation and the adjoint equals the inverse.
"""

from __future__ import annotations

import numpy as np
import torch

_DIMS = (-2, -1)


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Image → k-space, centred, orthonormal, over the last two dims."""
    x = torch.fft.ifftshift(image, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """k-space → image, centred, orthonormal, over the last two dims."""
    x = torch.fft.ifftshift(kspace, dim=_DIMS)
    x = torch.fft.ifft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def alternating_sign(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(-1)^j`` for ``j < n``, float32.

    For even ``n`` a circular shift by ``n/2`` in one Fourier domain is a
    modulation by this sequence in the other, so the centring shifts of
    ``fft2c``/``ifft2c`` can be traded for real ±1 multiplies.
    """
    return 1.0 - 2.0 * (torch.arange(n, device=device) % 2).to(torch.float32)


def ifft2c_magnitude(kspace: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """``|ifft2c(kspace)|``, RSS-combined over ``coil_dim`` (a size-1 coil dim is dropped).

    Same values as ``rss(ifft2c(kspace))`` (to float32 rounding), cheaper — it
    is computed for every loaded slice (the zero-filled image). For even H and
    W, ``ifftshift`` is a roll by half the size, and rolling k-space by half
    multiplies the image by ``(-1)^(i+j)``, which the modulus drops; so

        |ifft2c(k)| = fftshift(|ifft2(k)|)

    and the only shift left is a roll of the real magnitude. Odd sizes take the
    plain path. Single-coil moduli on CPU without autograd are taken by numpy,
    written straight into their shifted places; its vectorised complex ``abs`` is
    several times faster than torch's CPU kernel (torch 2.13).
    """
    h, w = kspace.shape[-2:]
    if h % 2 or w % 2:
        image, shifted = ifft2c(kspace), True
    else:
        image, shifted = torch.fft.ifft2(kspace, dim=_DIMS, norm="ortho"), False
    if image.shape[coil_dim] != 1:
        magnitude = torch.view_as_real(image).square().sum(dim=(coil_dim - 1 if coil_dim < 0 else coil_dim, -1)).sqrt()
    else:
        image = image.squeeze(coil_dim)
        if not shifted and image.device.type == "cpu" and not image.requires_grad:
            return torch.from_numpy(_fftshifted_abs(image.numpy()))
        magnitude = image.abs()
    return magnitude if shifted else torch.fft.fftshift(magnitude, dim=_DIMS)


def _fftshifted_abs(x: np.ndarray) -> np.ndarray:
    """``fftshift(|x|)`` over the last two (even) dims: each quadrant's modulus is
    written into its shifted place, with no intermediate array."""
    h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
    out = np.empty(x.shape, dtype=np.abs(x[..., :0, :0]).dtype)
    for rows_in, rows_out in ((slice(None, h2), slice(h2, None)), (slice(h2, None), slice(None, h2))):
        np.abs(x[..., rows_in, :w2], out=out[..., rows_out, w2:])
        np.abs(x[..., rows_in, w2:], out=out[..., rows_out, :w2])
    return out


def center_crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dims to ``shape`` around the centre (fastMRI's rule)."""
    h, w = x.shape[-2], x.shape[-1]
    ch, cw = shape
    if ch > h or cw > w:
        raise ValueError(f"crop {shape} larger than input {(h, w)}")
    top = (h - ch) // 2
    left = (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root sum of squares of magnitudes over the coil dimension."""
    return torch.sqrt((x.abs() ** 2).sum(dim))
