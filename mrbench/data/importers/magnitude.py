"""Magnitude volumes (NIfTI, DICOM) → slices of one orientation → simulated k-space.

1. :func:`canonical` permutes and flips the voxel axes to RAS+ (x toward the subject's right,
   y anterior, z superior) from the affine — no interpolation, so no voxel value changes.
2. :func:`plane_slices` takes the slices of ``--plane`` (``acquired``: the plane with the fewest
   slices, e.g. a single sagittal image) in the radiological display
   convention (axial: anterior up, the subject's right on the image's left), with their
   in-plane pixel size, and keeps ``--slices`` from the volume's centre.
3. :func:`fit` makes them square ``--size``: ``resample`` pads the shorter physical side with
   zeros (square field of view, square pixels) and interpolates linearly after a box
   prefilter when shrinking; ``crop`` centre-crops or zero-pads without interpolation.
4. :func:`simulate_kspace` scales the volume to its 99.5th percentile = 1, optionally adds a
   smooth phase and coil sensitivities, and measures it with the orthonormal centred FFT and
   complex noise at ``--snr`` — the synthetic subjects' own measurement
   (:func:`mrbench.data.synth.subject.acquire`). Such k-space has no scanner noise structure,
   no oversampling and (without ``--phase``) Hermitian symmetry: reconstruction from it looks
   easier than from raw data (Shimron et al., PNAS 2022), so every file says
   ``kspace_source = "simulated from magnitude"`` and the tables print it.
"""

from __future__ import annotations

import zlib

import numpy as np

from ...errors import MrbenchError
from ..synth.subject import acquire, coil_maps, smooth_phase
from .base import SIMULATED, Imported, ImportOptions, Source

# voxel permutation per plane: (slice axis, row axis, column axis) of the RAS+ volume
_PLANE_AXES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(volume, voxel sizes)`` with the axes permuted and flipped to RAS+ (the axis whose
    direction lies closest to each world axis); ``affine`` maps voxels to RAS+ mm."""
    rot = np.asarray(affine, dtype=float)[:3, :3]
    sizes = np.sqrt((rot**2).sum(axis=0))
    if not np.all(sizes > 0) or abs(np.linalg.det(rot)) < 1e-12:
        raise MrbenchError("the affine is singular (a voxel axis without a direction)")
    direction = rot / sizes
    world = [-1, -1, -1]
    for axis in np.argsort(-np.abs(direction).max(axis=0)):  # the most clear-cut axis first
        order = np.argsort(-np.abs(direction[:, axis]))
        world[axis] = next(int(w) for w in order if w not in world)
    out = volume
    for axis in range(3):
        if direction[world[axis], axis] < 0:
            out = np.flip(out, axis=axis)
    perm = [world.index(w) for w in range(3)]
    return np.ascontiguousarray(np.transpose(out, perm)), sizes[perm]


def plane_slices(volume: np.ndarray, voxel: np.ndarray, plane: str, n_slices: int, where: str) -> tuple[np.ndarray, tuple[float, float]]:
    """``(slices (S, rows, cols), (row mm, column mm))`` of a RAS+ volume in ``plane``,
    rows top-down (anterior or superior first), columns from the subject's right."""
    if plane == "acquired":  # the plane of the volume's fewest slices (its acquisition plane)
        plane = min(_PLANE_AXES, key=lambda p: volume.shape[_PLANE_AXES[p][0]])
    s_ax, r_ax, c_ax = _PLANE_AXES[plane]
    stack = np.transpose(volume, (s_ax, r_ax, c_ax))[:, ::-1, ::-1]
    if min(stack.shape[1:]) < 8:
        thin = min(_PLANE_AXES, key=lambda p: volume.shape[_PLANE_AXES[p][0]])
        raise MrbenchError(
            f"{where}: {plane} slices would be {stack.shape[1]}×{stack.shape[2]} pixels "
            f"(the volume is {'×'.join(map(str, volume.shape))} in RAS+); its slices are {thin}: pass --plane {thin} (or acquired)"
        )
    total = stack.shape[0]
    if n_slices and n_slices < total:
        start = (total - n_slices) // 2
        stack = stack[start : start + n_slices]
    return np.ascontiguousarray(stack, dtype=np.float32), (float(voxel[r_ax]), float(voxel[c_ax]))


def fit(stack: np.ndarray, pixel: tuple[float, float], size: int, how: str) -> np.ndarray:
    """Square ``size`` × ``size`` slices (see the module docstring); size 0 keeps the larger side."""
    from scipy import ndimage

    s, h, w = stack.shape
    if how == "crop":
        size = size or max(h, w)
        return _centre(stack, size, size)
    # a square field of view with square pixels (of the finer side's size)
    step = min(pixel)
    rows, cols = max(1, round(h * pixel[0] / step)), max(1, round(w * pixel[1] / step))
    if (rows, cols) != (h, w):
        stack = _zoom(stack, rows / h, cols / w, ndimage)
    side = max(rows, cols)
    stack = _centre(stack, side, side)
    size = size or side
    if size != side:
        stack = _zoom(stack, size / side, size / side, ndimage)
    return np.ascontiguousarray(stack, dtype=np.float32)


def _zoom(stack: np.ndarray, fy: float, fx: float, ndimage) -> np.ndarray:
    box = (1, max(1, int(round(1 / fy))), max(1, int(round(1 / fx))))
    if box != (1, 1, 1):  # shrinking: average over the pixels that fold into one (no aliasing)
        stack = ndimage.uniform_filter(stack, size=box, mode="nearest")
    return ndimage.zoom(stack, (1, fy, fx), order=1, mode="nearest", grid_mode=True)


def _centre(stack: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes to ``(h, w)``."""
    out = np.zeros(stack.shape[:-2] + (h, w), dtype=stack.dtype)
    sh, sw = stack.shape[-2:]
    ch, cw = min(h, sh), min(w, sw)
    oy, ox = (h - ch) // 2, (w - cw) // 2
    iy, ix = (sh - ch) // 2, (sw - cw) // 2
    out[..., oy : oy + ch, ox : ox + cw] = stack[..., iy : iy + ch, ix : ix + cw]
    return out


def simulate_kspace(stack: np.ndarray, source: Source, options: ImportOptions, extra: dict) -> Imported:
    """The fastMRI volume of magnitude slices (module docstring, step 4)."""
    if not np.isfinite(stack).all():
        raise MrbenchError(f"{source.paths[0]}: the image has NaN/Inf values")
    mag = np.clip(stack, 0, None)
    scale = float(np.percentile(mag, 99.5)) or float(mag.max())
    if not scale > 0:
        raise MrbenchError(f"{source.paths[0]}: the image is all zeros")
    mag = (mag / scale).astype(np.float32)
    s, h, _ = mag.shape
    rng = np.random.default_rng([options.seed, zlib.crc32(f"{source.subject}/{source.contrast}".encode())])
    image = mag.astype(np.complex64)
    if options.phase:  # slices are square (fit)
        image = image * smooth_phase(rng, s, h)
    sens = coil_maps(options.coils, h, rng) if options.coils > 1 else None
    sigma = 0.0
    if options.snr is not None:
        foreground = mag > 0.1 * mag.max()
        sigma = float(mag[foreground].mean()) / options.snr
    kspace, target = acquire(image, sens, sigma, rng)
    attrs = {
        "kspace_source": SIMULATED,
        "intensity_scale": scale,
        "synthetic_phase": bool(options.phase),
        "simulated_coils": int(options.coils if options.coils > 1 else 1),
        "snr": float(options.snr) if options.snr is not None else float("inf"),
        **extra,
    }
    return Imported(kspace=kspace, target=target, params=dict(source.params), attrs=attrs)
