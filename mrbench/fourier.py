"""Orthonormal centred 2-D Fourier transforms and image helpers.

fastMRI's convention: ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``
over the last two dimensions, on native complex tensors. Orthonormality makes
the transform an isometry, so k-space noise and image noise have the same
standard deviation and the adjoint equals the inverse.
"""

from __future__ import annotations

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
