"""Tissue-fraction maps for the synthetic brain.

Two sources, same output format (:class:`TissueMaps`, float32 fractions in
[0, 1] per voxel, ``csf + gm + wm + fat <= 1``, background 0):

* :func:`mni_slab` — the MNI ICBM152 2009a (symmetric) template that
  ships inside the nilearn wheel (GM/WM probability maps and the brain-extracted
  T1, 197×233×189 at 1 mm). CSF is the brain mask minus GM and WM, so the
  ventricles, the sulci and a thin sub-arachnoid layer come out as CSF. The
  template is skull-stripped, so a scalp (fat) shell is added at a fixed
  distance outside the brain, leaving a dark "skull" gap in between.
* :func:`phantom_tissue_maps` — a fast procedural ellipse phantom (no nilearn)
  for unit tests.

Orientation: arrays are ``(Z, Y, X)`` = (inferior→superior slices, rows,
columns), displayed as radiological axial images: anterior at the top (row 0),
patient's right on the image's left (column 0).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mrbench.errors import MrbenchError

TISSUE_NAMES = ("csf", "gm", "wm", "fat")

#: In-plane field of view (mm) the MNI template is padded to (square).
MNI_FOV_MM = 256.0
#: Default axial coverage, as fractions of the brain's inferior→superior extent
#: (about the level of the temporal horns/third ventricle up to the upper
#: convexity, ~58 % of the brain).
DEFAULT_Z_RANGE = (0.30, 0.88)

# Scalp model (mm): the "skull" is a signal-free gap starting at the smoothed
# brain hull, then a fat/scalp shell.
_SKULL_MM = 5.0
_SCALP_MM = 5.0
_SUBARACHNOID_ITER = 1  # dilations (1 mm each) of the brain mask counted as CSF


@dataclass(frozen=True)
class TissueMaps:
    """Tissue fractions (float32, identical shapes ``(Z, Y, X)``)."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    fat: np.ndarray

    def __post_init__(self) -> None:
        shape = self.csf.shape
        for f in fields(self):
            a = getattr(self, f.name)
            if a.shape != shape:
                raise ValueError(f"TissueMaps.{f.name} has shape {a.shape}, expected {shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.csf.shape

    def stack(self) -> np.ndarray:
        """``(4, *shape)`` array in :data:`TISSUE_NAMES` order."""
        return np.stack([getattr(self, n) for n in TISSUE_NAMES])

    @classmethod
    def from_stack(cls, arr: np.ndarray) -> "TissueMaps":
        arr = np.asarray(arr, dtype=np.float32)
        return cls(*(np.ascontiguousarray(arr[i]) for i in range(len(TISSUE_NAMES))))

    def brain(self) -> np.ndarray:
        """Intracranial fraction ``csf + gm + wm``."""
        return self.csf + self.gm + self.wm


# --------------------------------------------------------------------------- MNI


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise MrbenchError(
            "synth-brain with source 'mni' needs the nilearn package (its wheel ships the "
            "MNI ICBM152 template); install nilearn or use source='phantom'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _load_template(name: str) -> np.ndarray:
    import nibabel as nib

    path = _nilearn_data_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise MrbenchError(f"MNI template file missing from the nilearn install: {path}")
    img = nib.load(str(path))
    if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise MrbenchError(f"unexpected orientation {nib.aff2axcodes(img.affine)} in {path}")
    vol = np.asarray(img.dataobj)
    # (x: L→R, y: P→A, z: I→S) → (z, y, x), rows anterior-first, columns right-first.
    return np.ascontiguousarray(vol.transpose(2, 1, 0)[:, ::-1, ::-1])


def _pad_inplane(vol: np.ndarray, side: int) -> np.ndarray:
    h, w = vol.shape[-2:]
    ph, pw = side - h, side - w
    pad = [(0, 0)] * (vol.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
    return np.pad(vol, pad)


@functools.lru_cache(maxsize=1)
def _mni_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oriented template: GM, WM fractions (float32) and brain mask (bool)."""
    gm = _load_template("gm") * np.float32(1 / 255)
    wm = _load_template("wm") * np.float32(1 / 255)
    tot = gm + wm
    over = tot > 1.0
    if over.any():  # never sum above 1
        gm[over] /= tot[over]
        wm[over] /= tot[over]
    # The brain-extracted T1 is non-zero exactly on the brain incl. ventricles
    # and sulcal CSF (it has no holes and contains every voxel with GM+WM > 0.5).
    mask = _load_template("t1") > 0
    for a in (gm, wm, mask):
        a.setflags(write=False)
    return gm, wm, mask


def _upsample2(a: np.ndarray, axis: int) -> np.ndarray:
    """×2 linear upsampling along ``axis`` (cell-centred grid, edges clamped)."""
    a = np.moveaxis(a, axis, 0)
    prev = np.concatenate([a[:1], a[:-1]])
    nxt = np.concatenate([a[1:], a[-1:]])
    out = np.empty((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
    out[0::2] = 0.75 * a + 0.25 * prev
    out[1::2] = 0.75 * a + 0.25 * nxt
    return np.moveaxis(out, 0, axis)


def _scalp_shell(brain_mask: np.ndarray) -> np.ndarray:
    """Soft fat shell at ``_SKULL_MM``..``_SKULL_MM+_SCALP_MM`` outside the brain hull.

    Computed at 2 mm for speed (the distance transform is the costly step),
    then linearly interpolated back to 1 mm.
    """
    z, h, w = brain_mask.shape
    m = np.pad(brain_mask, ((0, z % 2), (0, h % 2), (0, w % 2)))
    m2 = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).any(axis=(1, 3, 5))
    # Smooth hull: bridges the gaps between lobes/hemispheres, ignores sulci.
    hull = ndi.gaussian_filter(m2.astype(np.float32), 2.0) > 0.15
    hull = ndi.binary_fill_holes(hull)
    dist = ndi.distance_transform_edt(~hull).astype(np.float32) * 2.0  # mm
    lo, hi = _SKULL_MM, _SKULL_MM + _SCALP_MM
    shell = np.clip(dist - lo + 0.5, 0, 1) * np.clip(hi - dist + 0.5, 0, 1)
    up = shell
    for axis in range(3):
        up = _upsample2(up, axis)
    return up[:z, :h, :w]


def _derive(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(4, Z, Y, X)`` csf/gm/wm/fat from template GM, WM and brain mask."""
    # a thin sub-arachnoid CSF layer around the brain
    mask = ndi.binary_dilation(mask, iterations=_SUBARACHNOID_ITER)
    mask_f = ndi.gaussian_filter(mask.astype(np.float32), 0.5)
    np.maximum(mask_f, gm + wm, out=mask_f)
    csf = np.clip(mask_f - gm - wm, 0.0, 1.0)
    fat = np.clip(_scalp_shell(mask) * (1.0 - mask_f), 0.0, 1.0)
    return np.stack([csf, gm, wm, fat]).astype(np.float32, copy=False)


def _z_extent(brain: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(brain.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("tissue maps contain no brain")
    return int(zs[0]), int(zs[-1])


def _positions(lo: int, hi: int, n_slices: int, z_range: tuple[float, float]) -> np.ndarray:
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    f0, f1 = z_range
    if not 0.0 <= f0 <= f1 <= 1.0:
        raise ValueError(f"z_range must satisfy 0 <= lo <= hi <= 1, got {z_range}")
    ext = hi - lo
    if n_slices == 1:
        return np.array([lo + 0.5 * (f0 + f1) * ext])
    return np.linspace(lo + f0 * ext, lo + f1 * ext, n_slices)


def _resample_inplane(stack: np.ndarray, size: int, side: int | None = None) -> np.ndarray:
    """``(..., H, W)`` → zero-pad to a ``side`` square (default max(H, W)) → ``(..., size, size)``."""
    h, w = stack.shape[-2:]
    side = max(h, w) if side is None else side
    lead = stack.shape[:-2]
    flat = stack.reshape((-1, h, w))
    if (h, w) != (side, side):
        flat = _pad_inplane(flat, side)
    if side % size == 0 and side != size:  # exact block average (anti-aliased, fast)
        f = side // size
        flat = flat.reshape(flat.shape[0], size, f, size, f).mean(axis=(2, 4))
    elif side != size:
        flat = ndi.zoom(flat, (1.0, size / side, size / side), order=1, grid_mode=True, mode="grid-constant")
    return np.clip(flat, 0.0, 1.0).astype(np.float32).reshape(lead + (size, size))


@functools.lru_cache(maxsize=8)
def mni_slab(size: int, z_range: tuple[float, float] = DEFAULT_Z_RANGE, margin_mm: int = 12):
    """Cached in-plane-resampled MNI slab at native 1 mm slice spacing.

    Returns ``(stack, z_lo, z_hi, pixel_mm)``: ``stack`` is read-only float32
    ``(4, Zs, size, size)`` (FOV :data:`MNI_FOV_MM`) holding the template
    slices of ``z_range`` extended by ``margin_mm`` each side; ``z_lo``/``z_hi``
    are the (fractional) positions of the ``z_range`` ends in ``stack``'s slice
    index; ``pixel_mm`` the in-plane pixel size. Same content as the matching
    part of the full template but derived from a crop of the template
    only, so per-subject simulation never touches the full volume.
    """
    gm, wm, mask = _mni_raw()
    nz = mask.shape[0]
    lo, hi = _z_extent(mask)
    # the derived brain (csf+gm+wm > 0.5) includes the sub-arachnoid dilation
    lo, hi = max(lo - _SUBARACHNOID_ITER, 0), min(hi + _SUBARACHNOID_ITER, nz - 1)
    za, zb = _positions(lo, hi, 2, z_range)
    s0 = max(0, int(np.floor(za)) - margin_mm)
    s1 = min(nz, int(np.ceil(zb)) + margin_mm + 1)
    ctx = 16  # extra slices so the scalp hull near the crop ends sees its neighbours
    c0, c1 = max(0, s0 - ctx), min(nz, s1 + ctx)
    derived = _derive(gm[c0:c1], wm[c0:c1], mask[c0:c1])[:, s0 - c0 : s1 - c0]
    stack = _resample_inplane(derived, size, side=int(MNI_FOV_MM))
    stack.setflags(write=False)
    return stack, float(za - s0), float(zb - s0), MNI_FOV_MM / size


# ------------------------------------------------------------------- phantom


def _soft_ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, theta: float, px: float
) -> np.ndarray:
    """Anti-aliased ellipse indicator (≈ partial volume), px = pixel size."""
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    r = np.sqrt(u * u + v * v)
    # signed distance ≈ (1 - r)·min radius; ramp over one pixel
    return np.clip((1.0 - r) * min(rx, ry) / px + 0.5, 0.0, 1.0).astype(np.float32)


def _paint(maps: np.ndarray, alpha: np.ndarray, tissue: int | None) -> None:
    """Painter's algorithm on fractions; ``tissue=None`` paints empty space."""
    maps *= 1.0 - alpha
    if tissue is not None:
        maps[tissue] += alpha


def phantom_tissue_maps(n_slices: int, size: int, rng: np.random.Generator) -> TissueMaps:
    """Procedural head phantom ``(n_slices, size, size)``, no external data.

    Nested ellipses: fat scalp ring, signal-free skull gap, CSF layer, GM
    cortex ring, WM interior, a few random ellipses (deep GM / CSF / WM
    lesions) and two CSF ventricles. The cross-section shrinks towards the
    ends of the slab, like a head. Anterior is up (the head is longer in Y).
    """
    if n_slices < 1 or size < 8:
        raise ValueError(f"need n_slices >= 1 and size >= 8, got {n_slices}, {size}")
    px = 2.0 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    head_ry = 0.86 * rng.uniform(0.95, 1.05)
    head_rx = 0.70 * rng.uniform(0.95, 1.05)
    theta0 = rng.uniform(-0.08, 0.08)
    vent_r = rng.uniform(0.8, 1.2)
    n_extra = int(rng.integers(2, 5))
    extras = [
        (
            rng.uniform(-0.35, 0.35),  # cy (fraction of brain radius)
            rng.uniform(-0.45, 0.45),  # cx
            rng.uniform(0.06, 0.14),  # ry
            rng.uniform(0.06, 0.14),  # rx
            rng.uniform(0, np.pi),
            int(rng.choice([0, 1, 1, 2])),  # csf / gm (deep nuclei) / wm
        )
        for _ in range(n_extra)
    ]
    out = np.zeros((4, n_slices, size, size), dtype=np.float32)
    zpos = np.linspace(-0.8, 0.8, n_slices) if n_slices > 1 else np.zeros(1)
    for k, z in enumerate(zpos):
        m = out[:, k]
        sc = float(np.sqrt(max(1.0 - (0.6 * z) ** 2, 0.2)))
        ry, rx = head_ry * sc, head_rx * sc
        ell = functools.partial(_soft_ellipse, yy, xx, px=px)
        _paint(m, ell(0.0, 0.0, ry, rx, theta0), 3)  # scalp fat
        t = 0.045  # shell thicknesses (normalised FOV units)
        _paint(m, ell(0.0, 0.0, ry - t, rx - t, theta0), None)  # skull
        bry, brx = ry - 2.2 * t, rx - 2.2 * t
        _paint(m, ell(0.0, 0.0, bry, brx, theta0), 0)  # CSF layer
        _paint(m, ell(0.0, 0.0, bry - 0.02, brx - 0.02, theta0), 1)  # cortex
        _paint(m, ell(0.0, 0.0, bry - 0.09, brx - 0.09, theta0), 2)  # WM
        for cy, cx, ery, erx, th, tis in extras:
            _paint(m, ell(cy * bry, cx * brx, ery * sc, erx * sc, th), tis)
        vs = vent_r * max(1.0 - abs(z), 0.15)
        for side in (-1.0, 1.0):
            _paint(m, ell(-0.02, side * 0.09, 0.22 * vs, 0.075 * vs, side * 0.25), 0)
    return TissueMaps.from_stack(out)
