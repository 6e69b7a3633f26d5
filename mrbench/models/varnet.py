"""End-to-end variational network (E2E-VarNet style; Sriram et al., MICCAI 2020).

Each cascade updates the k-space estimate

    k ← k − η_i · M ⊙ (k − k₀) + R_i(k),    R_i(k) = F S U_i(Σ_c S_c* F⁻¹ k_c)

with ``F`` the orthonormal centred 2-D FFT, ``M`` the sampling mask, ``k₀`` the
measured (masked) k-space, ``S`` the coil sensitivities (``S = 1`` for
single-coil data), ``U_i`` a :class:`~mrbench.models.unet.NormUNet` and ``η_i``
a learned scalar (initialised to 1). The output is the RSS over coils of
``F⁻¹ k`` (the magnitude for single-coil data).

Speed (benchmarks/bench_varnet.py compares with ``fastmri.models.VarNet``):

* native complex tensors and ``torch.fft``; no real/imaginary stacking,
  permutes or Python loops over coils or batch;
* no shifts inside the cascade loop. The cascades run in a *working domain*
  (:class:`Domain`) into which ``k₀`` and ``M`` are moved once. With ``P`` =
  ifftshift and ``c[j] = (-1)^j`` (even length), the 1-D identities
  ``ifftc(k) = ifft(c ⊙ P k)`` and ``c ⊙ P fftc(x) = fft(x)`` turn the centred
  transforms into plain ones exactly (``c² = 1`` and ``M`` is moved with the
  same permutation, so data consistency is unchanged). Images stay centred,
  so the U-Nets see exactly what they would with the centred transforms;
* for a column mask (constant along H — fastMRI's 1-D patterns) the mask
  commutes with the FFT along H, so that FFT is applied to ``k₀`` once and
  each cascade only needs FFTs along W (``"columns"`` domain, half the FFT
  work). 2-D point masks with even H, W use 2-D plain FFTs (``"shifted"``);
  anything else the centred transforms of :mod:`mrbench.fourier`
  (``"centred"``, always correct, slowest);
* the coil combine/expand and data-consistency steps are small autograd
  functions with hand-written backward passes (no conjugate copies, η's
  gradient as one dot product) — checked against autograd by gradcheck in
  tests/test_models.py;
* the sensitivity model is skipped for single-coil data (S = 1), and
  ``conj(S)`` is materialised once per forward, not once per cascade.
"""

from __future__ import annotations

import torch
from torch import nn

from mrbench.models.unet import NormUNet, zero_phase
from mrbench.physics import Domain, MRIOperator, choose_domain

__all__ = ["Domain", "VarNet", "VarNetCascade", "SensitivityModel", "acs_band", "choose_domain"]


def acs_band(num_low_frequencies: torch.Tensor, width: int) -> torch.Tensor:
    """Float (B, 1, 1, W): 1 on the centre ``num_low_frequencies[b]`` columns (centred k-space).

    The band is ``[(W - n + 1) // 2, (W - n + 1) // 2 + n)`` (fastMRI's
    convention). A sample with ``n <= 0`` keeps every column (the whole
    masked k-space is used), so sensitivities never come from nothing.
    """
    n = num_low_frequencies.reshape(-1, 1).to(torch.long).clamp(max=width)
    cols = torch.arange(width, device=n.device).unsqueeze(0)
    start = (width - n + 1) // 2
    band = (cols >= start) & (cols < start + n)
    band = band | (n <= 0)
    return band.to(torch.float32)[:, None, None, :]


def _rss(images: torch.Tensor) -> torch.Tensor:
    """RSS over dim 1 of complex (B, C, H, W) → float (B, H, W), finite gradient at 0.

    Faster than ``torch.linalg.vector_norm`` on complex input (CPU). The
    1e-37 under the root (float32's smallest normals are ~1e-38) only matters
    where the RSS is exactly zero, where it turns 0/0 in the gradient into 0.
    """
    return torch.sqrt(torch.view_as_real(images).square().sum(dim=(1, -1)) + 1e-37)


class SensitivityModel(nn.Module):
    """Coil sensitivities from the auto-calibration (centre) columns.

    Keeps the centre ``num_low_frequencies`` columns of the masked k-space
    (per sample; for a 2-D point mask the same column band of whatever was
    sampled there), inverse FFT, a per-coil NormUNet (coils folded into the
    batch) and division by the RSS over coils, so ``Σ_c |S_c|² = 1`` wherever
    the RSS is non-zero (``S = 0`` where it is zero).
    """

    def __init__(self, chans: int = 4, pools: int = 2):
        super().__init__()
        self.net = NormUNet(chans, pools, in_complex=1)

    def forward(
        self, kspace: torch.Tensor, num_low_frequencies: torch.Tensor, domain: Domain = Domain()
    ) -> torch.Tensor:
        """(B, C, H, W) masked k-space → complex (B, C, H, W) sensitivities (centred image domain).

        ``kspace`` is centred k-space, or already in ``domain`` (the maps are the same).
        """
        b, c, h, w = kspace.shape
        band = domain.mask(acs_band(num_low_frequencies.to(kspace.device), w))
        images = domain.inverse(kspace * band)
        maps = self.net(images.reshape(b * c, 1, h, w)).view(b, c, h, w)
        norm2 = torch.view_as_real(maps).square().sum(dim=(1, -1), keepdim=True)  # (B, 1, H, W, 1)
        # S = 0 where the RSS is 0 (and no 0/0 in the backward pass)
        inv = torch.where(norm2 > 0, norm2, torch.ones_like(norm2)).rsqrt() * (norm2 > 0)
        return torch.view_as_complex(torch.view_as_real(maps) * inv)


class VarNetCascade(nn.Module):
    """One unrolled step ``k − η M ⊙ (k − k₀) + F S U(Σ_c S_c* F⁻¹ k)``.

    ``regulariser`` maps a complex (B, 1, H, W) centred image to one of the same
    shape (a NormUNet here; the multi-task variants swap it). ``eta`` is the
    learned data-consistency weight (a 0-d Parameter, initialised to 1).
    """

    def __init__(self, regulariser: nn.Module):
        super().__init__()
        self.regulariser = regulariser
        self.eta = nn.Parameter(torch.ones(()))

    def forward(self, k: torch.Tensor, k0: torch.Tensor, op: MRIOperator) -> torch.Tensor:
        """k, k0: complex coil k-space (B, C, H, W) in ``op.domain``; ``op`` carries the mask
        (in the same domain) and the sensitivities (centred images; None = single-coil)."""
        reg = op.to_kspace(self.regulariser(op.to_image(k)))
        return op.gradient_step(k, k0, reg, self.eta)


class VarNet(nn.Module):
    """The ``varnet`` backbone (common backbone interface, see :mod:`mrbench.models`).

    ``cascades`` NormUNet cascades (``chans``, ``pools``) and, for multi-coil
    input, a :class:`SensitivityModel` (``sens_chans``, ``sens_pools``);
    single-coil input (C = 1) uses ``S = 1`` and never runs the sensitivity model.
    """

    #: Use the shift-free working domains (set False to force the centred
    #: transforms everywhere, e.g. to check that both agree).
    fast_fourier: bool = True

    def __init__(
        self,
        cascades: int = 4,
        chans: int = 8,
        pools: int = 3,
        sens_chans: int = 4,
        sens_pools: int = 2,
        residual_init: bool = True,
    ):
        """``residual_init``: regularisers predict a correction that starts near zero
        (:class:`NormUNet` ``correction=True``), so the untrained network is the
        zero-filled reconstruction; False gives fastMRI's NormUnet exactly."""
        super().__init__()
        self.config = dict(cascades=cascades, chans=chans, pools=pools, sens_chans=sens_chans, sens_pools=sens_pools)
        self.sens_net = SensitivityModel(sens_chans, sens_pools)
        self.cascades = nn.ModuleList(
            VarNetCascade(NormUNet(chans, pools, correction=residual_init)) for _ in range(cascades)
        )

    def etas(self) -> list[float]:
        """η of each cascade, in order."""
        return [float(c.eta.detach()) for c in self.cascades]

    def sensitivities(self, kspace: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
        """Coil sensitivities (B, C, H, W) of centred masked k-space."""
        return self.sens_net(kspace, num_low_frequencies)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
        return self.unroll(kspace, mask, num_low_frequencies)

    def unroll(
        self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor, *route
    ) -> torch.Tensor:
        """Sensitivities, the cascades and the coil combination; ``route`` (e.g. the
        multi-task variant's task indices) is passed to every cascade after ``sens``."""
        mask = mask.to(torch.float32)
        domain = choose_domain(mask, self.fast_fourier)
        if domain.kind == "columns":
            mask = mask[..., :1, :]  # constant along H: broadcast one row
        k0 = domain.kspace(kspace)
        sens = self.sens_net(k0, num_low_frequencies, domain) if kspace.shape[1] > 1 else None
        op = MRIOperator(domain.mask(mask), sens, domain)
        k = k0
        for cascade in self.cascades:
            k = cascade(k, k0, op, *route)
        images = domain.inverse(k)
        if images.shape[1] == 1:
            return images[:, 0]
        return zero_phase(_rss(images))
