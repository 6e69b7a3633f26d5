"""Raw k-space (ISMRMRD, Siemens twix) → the fastMRI layout.

An importer fills a :class:`RawScan`: the readout lines placed at their phase-encoding index
in a ``(slices, coils, readout, encoded y)`` array, which lines were acquired, the encoded and
recon matrices and the encoding limits. :func:`to_fastmri` then

* removes the readout oversampling (encoded x = 2 × recon x, or the scanner's factor): inverse
  FFT along the readout, keep the central half of the field of view, FFT back — the matrix
  halves and the image inside the recon field of view is unchanged;
* compresses the coils to ``--coils N`` by SVD (the virtual coils of the largest singular
  values of the stacked samples; Buehrer et al., MRM 2007; Huang et al., MRI 2008);
* writes the header's ``kspace_encoding_step_1`` limits (fastMRI's padding columns are those
  outside them) and, for a fully sampled scan, the RSS target: the centre crop to the recon
  matrix of the root-sum-of-squares of the inverse orthonormal centred FFT, as fastMRI does;
* for an undersampled scan (lines missing inside the limits) writes fastMRI's test layout:
  its own ``mask`` and ``num_low_frequencies``, no target — what the self-supervised losses
  train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import MrbenchError
from ...fourier import ifft2c
from .base import MEASURED, Imported, ImportOptions


@dataclass
class RawScan:
    kspace: np.ndarray  # (S, C, readout, encoded y) complex64, zeros where not acquired
    acquired: np.ndarray  # (encoded y,) bool
    recon: tuple[int, int]  # reconSpace (x, y)
    center: int  # kspace_encoding_step_1 centre (the index of k_y = 0 among the encoding steps)
    maximum: int  # kspace_encoding_step_1 maximum
    oversampling: float  # readout oversampling factor (1 = none)
    params: dict
    attrs: dict


def remove_oversampling(kspace: np.ndarray, factor: float) -> np.ndarray:
    """Keep the central 1/factor of the readout field of view (the readout is axis -2)."""
    n = kspace.shape[-2]
    keep = int(round(n / factor))
    if factor <= 1 or keep == n:
        return kspace
    x = torch.from_numpy(np.ascontiguousarray(kspace))
    img = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(x, dim=-2), dim=-2, norm="ortho"), dim=-2)
    start = (n - keep) // 2
    img = img[..., start : start + keep, :]
    out = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(img, dim=-2), dim=-2, norm="ortho"), dim=-2)
    return out.numpy().astype(np.complex64)  # the image inside the kept FOV is unchanged (orthonormal both ways)


def compress_coils(kspace: np.ndarray, n: int) -> np.ndarray:
    """SVD coil compression of ``(S, C, H, W)`` to ``n`` virtual coils (one matrix per volume)."""
    s, c, h, w = kspace.shape
    if n <= 0 or n >= c:
        return kspace
    samples = np.moveaxis(kspace, 1, -1).reshape(-1, c)
    samples = samples[np.abs(samples).sum(axis=1) > 0]
    _, _, vh = np.linalg.svd(samples, full_matrices=False)
    project = vh[:n].conj().T  # (C, n)
    out = np.einsum("schw,cn->snhw", kspace, project)
    return np.ascontiguousarray(out, dtype=np.complex64)


def low_frequencies(acquired: np.ndarray, center: int) -> int:
    """The contiguous run of acquired lines around ``center`` (fastMRI's ``num_low_frequencies``)."""
    if not acquired[center]:
        return 0
    lo = hi = center
    while lo > 0 and acquired[lo - 1]:
        lo -= 1
    while hi + 1 < len(acquired) and acquired[hi + 1]:
        hi += 1
    return hi - lo + 1


def to_fastmri(scan: RawScan, options: ImportOptions, where: str) -> Imported:
    """The fastMRI volume of one raw scan (module docstring)."""
    kspace = scan.kspace
    if kspace.ndim != 4 or not np.iscomplexobj(kspace):
        raise MrbenchError(f"{where}: raw k-space must be complex (slices, coils, readout, lines), got {kspace.shape}")
    if not np.isfinite(kspace).all():
        raise MrbenchError(f"{where}: the raw data has NaN/Inf samples")
    acquired = np.asarray(scan.acquired, dtype=bool)
    width = kspace.shape[-1]
    # the lines inside the encoding limits, placed as fastMRI's _retrieve_metadata reads them
    left = width // 2 - scan.center
    right = left + scan.maximum + 1
    if left < 0 or right > width:
        raise MrbenchError(f"{where}: encoding limits (center {scan.center}, maximum {scan.maximum}) do not fit {width} lines")
    before = kspace.shape[-2]
    kspace = remove_oversampling(kspace, scan.oversampling)
    coils = kspace.shape[1]
    kspace = compress_coils(kspace, options.coils)
    inside = acquired[left:right]
    attrs = {
        "kspace_source": MEASURED,
        "readout_oversampling_removed": f"{before} -> {kspace.shape[-2]}",
        "source_coils": int(coils),
        **scan.attrs,
    }
    rx, ry = scan.recon
    rx, ry = min(rx, kspace.shape[-2]), min(ry, width)
    common = dict(params=dict(scan.params), limits=(scan.center, scan.maximum), recon_shape=(rx, ry))
    single = kspace.shape[1] == 1
    data = kspace[:, 0] if single else kspace
    if inside.all():
        img = ifft2c(torch.from_numpy(np.ascontiguousarray(kspace))).numpy()
        rss = np.sqrt((np.abs(img) ** 2).sum(axis=1))
        target = _crop(rss, rx, ry)
        return Imported(kspace=data, target=target.astype(np.float32), attrs=attrs, **common)
    mask = acquired.copy()
    mask[:left] = mask[right:] = False
    attrs["acceleration"] = float(inside.size / max(int(inside.sum()), 1))
    return Imported(
        kspace=data, target=None, mask=mask, num_low_frequencies=low_frequencies(acquired, width // 2), attrs=attrs, **common
    )


def _crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    sh, sw = x.shape[-2:]
    top, lft = (sh - h) // 2, (sw - w) // 2
    return np.ascontiguousarray(x[..., top : top + h, lft : lft + w])

