"""Per-subject simulation: tissue maps → complex images → noisy k-space.

One subject = one seed. From ``seed`` (via :func:`numpy.random.default_rng`)
we draw, in independent streams so that adding a contrast or coils never
changes the anatomy:

* anatomy — a random smooth deformation of the tissue maps: a global in-plane
  rotation (±4°), anisotropic scaling (±7 %), in-plane shift (~2 mm), a z shift
  of the slab (±4 mm) and a small pitch (±3°), plus a low-frequency random
  displacement field (RMS ~2 mm in-plane, ~1.5 mm through-plane), applied
  with linear interpolation to a cached template slab. All contrasts of a
  subject share it (:func:`subject_tissue_maps`).
* tissue parameters — T1, T2, PD of every tissue scaled by about
  1 ± 5 % (a part shared by all tissues plus a smaller per-tissue part),
  clipped to ±10 % (T2* follows T2) (:func:`subject_tissues`).
* coil sensitivities (``coils > 1``) — coils evenly spaced on a circle
  around the FOV, Gaussian magnitude times a smooth (linear) phase,
  normalised so Σ_c |S_c|² = 1 everywhere.
* per contrast — a smooth multiplicative bias field (quadratic polynomial,
  8–15 % peak), a smooth background phase (quadratic polynomial, a few
  radians across the FOV) and the noise.

Image = Σ_tissue fraction · signal(tissue) / max_tissue(nominal signal), so
the brightest pure tissue of each contrast is ≈ 1 before bias and jitter.
k-space = fft2c(coil images) (orthonormal, :mod:`mrbench.fourier`) plus
complex white Gaussian noise of standard deviation σ (E|n|² = σ², i.e. σ/√2
per real channel) with ``σ = mean(|image| inside the brain) / snr`` — the same
σ for every coil (|image| is the coil-combined magnitude). Because the FFT is
orthonormal, σ is also the image-domain noise std.
``target = |ifft2c(kspace)|`` (single-coil) or the RSS over coils, computed
from the stored complex64 k-space, so the two agree to float32 rounding.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

import torch

from mrbench.errors import MrbenchError
from mrbench.fourier import fft2c, ifft2c

from .physics import TISSUES, Sequence, Tissue
from .tissue import MNI_FOV_MM, TISSUE_NAMES, TissueMaps, mni_slab, phantom_tissue_maps

SOURCES = ("mni", "phantom")
JITTER_SHARED_STD = 0.04
JITTER_TISSUE_STD = 0.02
PHANTOM_FOV_MM = 256.0

# stream ids for np.random.default_rng([seed, stream, ...])
_ANATOMY, _PARAMS, _COILS, _CONTRAST, _VARIETY = 0, 1, 2, 3, 4

#: per-subject anatomical variety (issue 12: every subject was one template with small
#: deformations, a test slice correlating 0.90 with its nearest training subject)
ATROPHY_MAX = 0.6  # share of GM (and half that of WM) next to CSF that turns into CSF
HEAD_SCALE = (0.85, 1.15)  # in-plane head size on top of the deformation (±6 % more per axis)
LESIONS_MEAN = 2.5  # Poisson mean of white-matter lesions per subject


@dataclass(frozen=True)
class SubjectVolume:
    """One contrast of one subject.

    kspace: complex64 ``(S, H, W)`` single-coil or ``(S, C, H, W)`` multi-coil,
        fully sampled, noisy.
    target: float32 ``(S, H, W)``: ``|ifft2c(kspace)|`` or RSS over coils.
    """

    kspace: np.ndarray
    target: np.ndarray




def _check_args(seed: int, size: int, n_slices: int, source: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MrbenchError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise MrbenchError(f"size must be an integer >= 16, got {size!r}")
    if isinstance(n_slices, bool) or not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
        raise MrbenchError(f"n_slices must be a positive integer, got {n_slices!r}")
    if source not in SOURCES:
        raise MrbenchError(f"unknown synth source {source!r}; expected one of {', '.join(SOURCES)}")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], knots=(3, 5, 5)) -> np.ndarray:
    """Low-frequency random field (RMS 1), separable Gaussian RBFs on a coarse grid."""
    bases = []
    for n, k in zip(shape, knots):
        k = min(k, n)
        t = np.arange(n, dtype=np.float32)
        if k == 1:
            bases.append(np.ones((n, 1), dtype=np.float32))
            continue
        centres = np.linspace(0, n - 1, k, dtype=np.float32)
        w = (n - 1) / (k - 1)
        bases.append(np.exp(-0.5 * ((t[:, None] - centres[None, :]) / w) ** 2))
    coef = rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32)
    f = np.einsum("ai,bj,ck,ijk->abc", *bases, coef, optimize=True)
    f -= f.mean()
    return f / max(float(np.sqrt((f**2).mean())), 1e-12)


def _deform(
    stack: np.ndarray,
    z_out: np.ndarray,
    rng: np.random.Generator,
    pixel_mm: float,
    through_plane: bool,
) -> np.ndarray:
    """Sample ``stack`` (4, Zs, S, S) on a randomly deformed grid → (4, n, S, S)."""
    _, nzs, size, _ = stack.shape
    n = len(z_out)
    c = (size - 1) / 2.0
    theta = math.radians(rng.uniform(-4.0, 4.0))
    sy, sx = rng.uniform(0.93, 1.07, size=2)
    shift = rng.normal(0.0, 2.0, size=2) / pixel_mm  # pixels
    zshift = rng.uniform(-4.0, 4.0)  # mm == slab slices
    pitch = math.radians(rng.uniform(-3.0, 3.0))
    disp = [_smooth_field(rng, (n, size, size)) for _ in range(3)]
    if not through_plane:
        zshift, pitch = 0.0, 0.0

    v = np.arange(size, dtype=np.float32) - c
    vy = v[None, :, None]
    vx = v[None, None, :]
    ct, st = math.cos(theta), math.sin(theta)
    amp = 2.0 / pixel_mm  # in-plane displacement RMS, pixels
    ys = c + shift[0] + (ct * vy / sy - st * vx / sx) + amp * disp[0]
    xs = c + shift[1] + (st * vy / sy + ct * vx / sx) + amp * disp[1]
    zs = np.broadcast_to(np.asarray(z_out, dtype=np.float32)[:, None, None], ys.shape)
    if through_plane:
        zs = zs + zshift + math.tan(pitch) * vy * pixel_mm + 1.5 * disp[2]
    zs = np.clip(zs, 0, nzs - 1)
    coords = np.stack([zs, ys, xs]).astype(np.float32)
    out = np.empty((stack.shape[0], n, size, size), dtype=np.float32)
    for i in range(stack.shape[0]):
        ndi.map_coordinates(stack[i], coords, output=out[i], order=1, mode="constant", cval=0.0, prefilter=False)
    return np.clip(out, 0.0, 1.0)


def subject_tissue_maps(*, seed: int, size: int = 128, n_slices: int = 24, source: str = "mni") -> TissueMaps:
    """The deformed tissue maps ``(n_slices, size, size)`` of subject ``seed``.

    Exactly the anatomy :func:`simulate_subject` uses for the same arguments: the
    template deformation, then the subject's head size and atrophy (:func:`_vary`).
    """
    _check_args(seed, size, n_slices, source)
    rng = _rng(seed, _ANATOMY)
    if source == "mni":
        stack, z_lo, z_hi, pixel_mm = mni_slab(int(size))
        z_out = np.linspace(z_lo, z_hi, n_slices) if n_slices > 1 else np.array([(z_lo + z_hi) / 2])
        out = _deform(stack, z_out, rng, pixel_mm, through_plane=True)
    else:
        base = phantom_tissue_maps(n_slices, size, rng).stack()
        out = _deform(base, np.arange(n_slices), rng, PHANTOM_FOV_MM / size, through_plane=False)
    return TissueMaps.from_stack(_vary(out, _rng(seed, _VARIETY)))


def _vary(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Subject variety on (4, n, S, S) fractions: an isotropic head size in
    :data:`HEAD_SCALE`, and atrophy — a share a ~ U(0, ATROPHY_MAX) of the grey matter
    next to CSF (sulci widen) and a/2 of the white matter next to it (ventricles widen)
    becomes CSF. Fractions still sum to what they summed to."""
    scale = rng.uniform(*HEAD_SCALE) * rng.uniform(0.94, 1.06, size=2)
    _, n, size, _ = stack.shape
    c = (size - 1) / 2.0
    inv = 1.0 / scale
    stack = ndi.affine_transform(stack, np.diag([1.0, 1.0, *inv]), offset=[0, 0, *(c - c * inv)],
                                 order=1, mode="constant", cval=0.0)
    csf, gm, wm, fat = (np.array(a, dtype=np.float32) for a in stack)
    a = rng.uniform(0.0, ATROPHY_MAX)
    near = np.clip(2.0 * ndi.gaussian_filter(csf, sigma=(0, 1.2, 1.2)), 0.0, 1.0)
    from_gm, from_wm = a * near * gm, 0.5 * a * near * wm
    out = np.stack([csf + from_gm + from_wm, gm - from_gm, wm - from_wm, fat])
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def subject_lesions(seed: int, maps: TissueMaps, pixel_mm: float) -> tuple[np.ndarray, Tissue]:
    """White-matter lesions of subject ``seed``: the share (n, S, S) of white matter that is
    lesion (Poisson(:data:`LESIONS_MEAN`) soft blobs of 2–5 mm radius centred in white
    matter), and the lesion tissue — T1 1.8–2.6×, T2 1.5–3×, PD 1.05–1.2× the subject's WM
    (MS-like: bright on T2 and FLAIR, dark on T1)."""
    rng = _rng(seed, _VARIETY, 1)
    wm = maps.wm
    lesion = np.zeros_like(wm)
    count = rng.poisson(LESIONS_MEAN)
    candidates = np.argwhere(wm > 0.8)
    n, size, _ = wm.shape
    zz, yy, xx = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), indexing="ij")
    for _ in range(count if len(candidates) else 0):
        z, y, x = candidates[rng.integers(len(candidates))]
        r = rng.uniform(2.0, 5.0) / pixel_mm
        rz = max(1.0, rng.uniform(2.0, 5.0) / 3.0)  # slices are ~3 mm apart
        d2 = ((yy - y) / r) ** 2 + ((xx - x) / r) ** 2 + ((zz - z) / rz) ** 2
        lesion = np.maximum(lesion, np.exp(-0.5 * d2 * 4.0).astype(np.float32))
    base = TISSUES["wm"]
    tissue = replace(base, t1=base.t1 * rng.uniform(1.8, 2.6), t2=base.t2 * rng.uniform(1.5, 3.0),
                     pd=base.pd * rng.uniform(1.05, 1.2), t2star=base.t2star * rng.uniform(1.5, 3.0))
    return np.clip(lesion, 0.0, 1.0).astype(np.float32), tissue


def subject_tissues(seed: int) -> dict[str, Tissue]:
    """Tissue parameters of subject ``seed``.

    T1, T2, PD of each tissue are each scaled by ``1 + g + e`` clipped to
    [0.9, 1.1] (±10 %), with ``g ~ N(0, JITTER_SHARED_STD)`` drawn once per
    parameter and shared by all tissues (scanner/temperature-like) and
    ``e ~ N(0, JITTER_TISSUE_STD)`` per tissue; T2* follows T2. The shared part
    lets absolute values vary by ~±10 % while keeping the GM/WM contrasts of
    the named sequences from collapsing (independent ±10 % draws can cancel
    the T1-weighted GM/WM contrast).
    """
    rng = _rng(seed, _PARAMS)
    shared = rng.normal(0.0, JITTER_SHARED_STD, size=3)  # (T1, T2, PD), common to all tissues
    out = {}
    for name in TISSUE_NAMES:
        t = TISSUES[name]
        own = rng.normal(0.0, JITTER_TISSUE_STD, size=3)
        f1, f2, fp = (float(f) for f in np.clip(1.0 + shared + own, 0.9, 1.1))
        out[name] = replace(t, t1=t.t1 * f1, t2=t.t2 * f2, pd=t.pd * fp, t2star=t.t2star * f2)
    return out


def coil_maps(coils: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """complex64 ``(coils, size, size)`` sensitivities with Σ_c |S_c|² = 1."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    theta0 = rng.uniform(0, 2 * np.pi)
    maps = np.empty((coils, size, size), dtype=np.complex64)
    for k in range(coils):
        a = theta0 + 2 * np.pi * k / coils
        radius = 1.25 * rng.uniform(0.95, 1.05)
        cy, cx = radius * np.cos(a), radius * np.sin(a)
        sigma = rng.uniform(0.7, 0.9)
        mag = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        gy, gx = rng.uniform(-0.6, 0.6, size=2)
        phase = rng.uniform(-np.pi, np.pi) + gy * yy + gx * xx
        maps[k] = mag * np.exp(1j * phase)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return maps


def _poly_terms(n_slices: int, size: int) -> list[np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y = coords[None, :, None]
    x = coords[None, None, :]
    z = (np.linspace(-1, 1, n_slices) if n_slices > 1 else np.zeros(1)).astype(np.float32)[:, None, None]
    return [x, y, x * y, x * x, y * y, z]


def _bias_and_phase(rng: np.random.Generator, n_slices: int, size: int) -> np.ndarray:
    """complex64 (S, H, W): (1 + smooth bias) · exp(i · smooth phase)."""
    terms = _poly_terms(n_slices, size)
    shape = (n_slices, size, size)
    b = sum(c * t for c, t in zip(rng.uniform(-1, 1, size=len(terms)), terms))
    b = np.broadcast_to(b, shape)
    b = b / max(float(np.abs(b).max()), 1e-12) * rng.uniform(0.08, 0.15)
    pc = np.concatenate([rng.uniform(-1.5, 1.5, 2), rng.uniform(-0.75, 0.75, 3), rng.uniform(-0.3, 0.3, 1)])
    phi = rng.uniform(-np.pi, np.pi) + sum(c * t for c, t in zip(pc, terms))
    phi = np.broadcast_to(phi, shape)
    return ((1.0 + b) * np.exp(1j * phi)).astype(np.complex64)


def contrast_scale(seq: Sequence) -> float:
    """1 / max over tissues of the nominal signal (brightest pure tissue ≈ 1)."""
    return 1.0 / max(seq.tissue_signal(t) for t in TISSUES.values())


def simulate_subject(
    contrasts: dict[str, Sequence],
    *,
    seed: int,
    size: int = 128,
    n_slices: int = 24,
    coils: int = 1,
    snr: float | None = 30.0,
    source: str = "mni",
) -> dict[str, SubjectVolume]:
    """Simulate every contrast of subject ``seed``; see the module docstring.

    ``snr=None`` (or ``inf``) gives noise-free k-space (all other random draws
    are unchanged, so it is the exact noise-free counterpart). Returns a dict
    keyed like ``contrasts`` (same order).
    """
    _check_args(seed, size, n_slices, source)
    if isinstance(coils, bool) or not isinstance(coils, (int, np.integer)) or coils < 1:
        raise MrbenchError(f"coils must be a positive integer, got {coils!r}")
    if snr is not None and (
        isinstance(snr, bool) or not isinstance(snr, (int, float, np.integer, np.floating)) or not snr > 0
    ):
        raise MrbenchError(f"snr must be a positive number (or None for no noise), got {snr!r}")
    for name, seq in contrasts.items():
        if not isinstance(seq, Sequence):
            raise MrbenchError(f"contrast {name!r} must be a Sequence, got {type(seq).__name__}")

    maps = subject_tissue_maps(seed=seed, size=size, n_slices=n_slices, source=source)
    fractions = maps.stack()
    pixel_mm = (MNI_FOV_MM if source == "mni" else PHANTOM_FOV_MM) / size
    lesion, lesion_tissue = subject_lesions(seed, maps, pixel_mm)
    lesion_wm = lesion * maps.wm  # the white matter that is lesion
    brain = maps.brain() > 0.5
    tissues = subject_tissues(seed)
    sens = coil_maps(int(coils), size, _rng(seed, _COILS)) if coils > 1 else None

    out: dict[str, SubjectVolume] = {}
    for name, seq in contrasts.items():
        rng = _rng(seed, _CONTRAST, zlib.crc32(name.encode()))
        scale = contrast_scale(seq)
        sig = [seq.tissue_signal(tissues[t]) * scale for t in TISSUE_NAMES]
        mag = np.tensordot(np.asarray(sig, dtype=np.float32), fractions, axes=1)
        mag = mag + lesion_wm * np.float32(seq.tissue_signal(lesion_tissue) * scale - sig[TISSUE_NAMES.index("wm")])
        image = mag * _bias_and_phase(rng, n_slices, size)
        sigma = float(np.abs(image)[brain].mean()) / snr if snr is not None and math.isfinite(snr) else 0.0
        kspace, target = acquire(image, sens, sigma, rng)
        out[name] = SubjectVolume(kspace=kspace, target=target)
    return out


def acquire(
    image: np.ndarray, sens: np.ndarray | None, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Measure a complex ``(S, H, W)`` image: coils (``sens`` ``(C, H, W)`` or None), the
    orthonormal centred FFT, complex Gaussian noise of std ``sigma`` per sample (none at 0).

    Returns ``(kspace, target)``: k-space ``(S, H, W)`` or ``(S, C, H, W)`` complex64 and the
    magnitude (RSS) of its inverse FFT, float32 — the target comes from the noisy data, as in
    fastMRI. Shared by the synthetic subjects and ``mrbench data import`` (magnitude sources).
    """
    if sens is not None:
        image = image[:, None] * sens[None]
    kspace = fft2c(torch.from_numpy(np.ascontiguousarray(image, dtype=np.complex64))).numpy()
    if sigma > 0:
        noise = rng.standard_normal((2,) + kspace.shape, dtype=np.float32) * np.float32(sigma / math.sqrt(2))
        kspace = kspace + (noise[0] + 1j * noise[1]).astype(np.complex64)
    kspace = np.ascontiguousarray(kspace, dtype=np.complex64)
    img = ifft2c(torch.from_numpy(kspace)).numpy()
    target = np.abs(img) if sens is None else np.sqrt((img.real**2 + img.imag**2).sum(axis=1))
    return kspace, np.ascontiguousarray(target, dtype=np.float32)


def smooth_phase(rng: np.random.Generator, n_slices: int, size: int) -> np.ndarray:
    """complex64 ``(S, H, W)`` unit-modulus smooth phase (the synthetic subjects' phase model,
    without their bias field): what a magnitude image lacks for realistic k-space."""
    return np.exp(1j * np.angle(_bias_and_phase(rng, n_slices, size))).astype(np.complex64)
