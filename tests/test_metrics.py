"""mrbench.evaluation.metrics against fastMRI's way of calling scikit-image."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mrbench.evaluation.metrics import nmse, psnr, ssim, volume_metrics

TOL = 1e-4


# --- the reference: fastmri/evaluate.py, verbatim in spirit -------------------


def ref_nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def ref_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))


def ref_ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    maxval = gt.max() if maxval is None else maxval
    return float(np.mean([structural_similarity(gt[s], pred[s], data_range=maxval) for s in range(gt.shape[0])]))


# --- test volumes --------------------------------------------------------------


def blob_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth 'anatomy': Gaussian blobs and an ellipse on a near-zero background."""
    n, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    vol = np.zeros(shape)
    for s in range(n):
        ay, ax = rng.uniform(0.5, 0.8, 2)
        vol[s] += 0.4 * (((yy / ay) ** 2 + (xx / ax) ** 2) < 1)  # sharp-edged ellipse
        for _ in range(6):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            r = rng.uniform(0.05, 0.3)
            vol[s] += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return vol


def noisy(rng: np.random.Generator, gt: np.ndarray, level: float) -> np.ndarray:
    """Magnitude of gt plus complex Gaussian noise (Rician, as in MRI), level relative to gt.max()."""
    sigma = level * gt.max()
    return np.abs(gt + sigma * (rng.standard_normal(gt.shape) + 1j * rng.standard_normal(gt.shape)))


def cases():
    """(id, gt, pred) float64 pairs: white-noise and image-like volumes, several noise levels."""
    out = []
    for seed, shape in enumerate([(4, 32, 32), (3, 40, 57), (16, 128, 128)]):
        rng = np.random.default_rng(seed)
        white = rng.random(shape)
        out.append((f"white{shape}-0.1", white, white + 0.1 * rng.standard_normal(shape)))
        blobs = blob_volume(rng, shape)
        for level in (0.01, 0.05, 0.3):
            out.append((f"blobs{shape}-{level}", blobs, noisy(rng, blobs, level)))
    # a smoothed 'reconstruction' (blurred + slightly biased), not just added noise
    rng = np.random.default_rng(7)
    blobs = blob_volume(rng, (5, 48, 64))
    blurred = (blobs + np.roll(blobs, 1, axis=1) + np.roll(blobs, 1, axis=2)) / 3 * 0.95
    out.append(("blobs-blurred", blobs, blurred))
    # fastMRI's raw magnitude scale is ~1e-4: the constants must scale with data_range
    rng = np.random.default_rng(8)
    small = 3e-4 * blob_volume(rng, (6, 64, 64))
    out.append(("blobs-1e-4-scale", small, noisy(rng, small, 0.05)))
    return out


CASES = cases()
IDS = [c[0] for c in CASES]


@functools.cache
def reference(i: int, *casts: str) -> dict[str, float]:
    """fastMRI/skimage values for CASES[i], the inputs cast through ``casts`` first."""
    _, gt, pred = CASES[i]
    for dtype in casts:
        gt, pred = gt.astype(dtype), pred.astype(dtype)
    return {"nmse": ref_nmse(gt, pred), "psnr": ref_psnr(gt, pred), "ssim": ref_ssim(gt, pred)}


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_matches_fastmri_skimage_float64(i):
    _, gt, pred = CASES[i]
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    ref = reference(i)
    assert float(nmse(g, p)) == pytest.approx(ref["nmse"], abs=TOL, rel=1e-9)
    assert float(psnr(g, p)) == pytest.approx(ref["psnr"], rel=1e-9)
    assert float(ssim(g, p)) == pytest.approx(ref["ssim"], abs=1e-9)
    m = volume_metrics(g, p)
    assert set(m) == {"nmse", "psnr", "ssim"} and all(type(v) is float for v in m.values())
    assert m == pytest.approx(ref, rel=1e-9, abs=1e-9)


# float32: all the small volumes and one 16x128x128 (skimage is the slow side here)
F32 = [i for i, c in enumerate(CASES) if "(16, 128, 128)" not in c[0] or c[0].endswith("-0.05")]


@pytest.mark.parametrize("i", F32, ids=[IDS[i] for i in F32])
def test_float32_inputs(i):
    _, gt, pred = CASES[i]
    g32, p32 = torch.from_numpy(gt.astype(np.float32)), torch.from_numpy(pred.astype(np.float32))
    m = volume_metrics(g32, p32)
    # the exact (float64) values of the float32 data ...
    assert m == pytest.approx(reference(i, "float32", "float64"), rel=1e-9, abs=1e-9)
    # ... and what fastMRI gets feeding float32 to skimage (which then works in float32)
    ref = reference(i, "float32")
    assert m["nmse"] == pytest.approx(ref["nmse"], abs=TOL, rel=1e-5)
    assert m["psnr"] == pytest.approx(ref["psnr"], rel=1e-6)
    assert m["ssim"] == pytest.approx(ref["ssim"], abs=TOL)
    assert float(ssim(g32, p32)) == m["ssim"]


def test_band_splitting_gives_same_values(monkeypatch):
    """Force many small row bands (uneven last one) through the banded SSIM/SSE path."""
    import mrbench.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_BAND_BYTES", 1)  # minimum band height: 8 valid rows
    for i in (IDS.index("blobs(3, 40, 57)-0.05"), IDS.index("white(4, 32, 32)-0.1")):
        _, gt, pred = CASES[i]
        m = volume_metrics(torch.from_numpy(gt), torch.from_numpy(pred))
        assert m == pytest.approx(reference(i), rel=1e-9, abs=1e-9)


def test_returns_float64_scalars():
    rng = np.random.default_rng(3)
    gt = torch.from_numpy(blob_volume(rng, (2, 16, 16))).float()
    pred = gt + 0.05
    for f in (nmse, psnr, ssim):
        v = f(gt, pred)
        assert isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype == torch.float64
        assert math.isfinite(float(v))


def test_ssim_uses_volume_max_not_slice_max():
    """fastMRI passes the volume's max to every slice; per-slice ranges would differ."""
    rng = np.random.default_rng(4)
    gt = blob_volume(rng, (3, 32, 32)) * np.array([1.0, 0.2, 0.05])[:, None, None]
    pred = noisy(rng, gt, 0.02)
    ours = float(ssim(torch.from_numpy(gt), torch.from_numpy(pred)))
    assert ours == pytest.approx(ref_ssim(gt, pred), abs=1e-9)
    per_slice_max = np.mean([structural_similarity(gt[s], pred[s], data_range=gt[s].max()) for s in range(3)])
    assert abs(ours - per_slice_max) > 1e-3


def test_explicit_data_range():
    rng = np.random.default_rng(5)
    gt = blob_volume(rng, (3, 24, 30))
    pred = noisy(rng, gt, 0.1)
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    assert float(ssim(g, p, data_range=2.5)) == pytest.approx(ref_ssim(gt, pred, maxval=2.5), abs=1e-9)
    want = peak_signal_noise_ratio(gt, pred, data_range=2.5)
    assert float(psnr(g, p, data_range=2.5)) == pytest.approx(want, rel=1e-9)
    assert float(psnr(g, p, data_range=torch.tensor(2.5))) == pytest.approx(want, rel=1e-9)


def test_single_slice_2d_input():
    rng = np.random.default_rng(6)
    gt = blob_volume(rng, (1, 33, 29))
    pred = noisy(rng, gt, 0.05)
    g2, p2 = torch.from_numpy(gt[0]), torch.from_numpy(pred[0])
    assert float(ssim(g2, p2)) == pytest.approx(structural_similarity(gt[0], pred[0], data_range=gt.max()), abs=1e-9)
    assert float(psnr(g2, p2)) == pytest.approx(ref_psnr(gt, pred), rel=1e-9)
    assert float(nmse(g2, p2)) == pytest.approx(ref_nmse(gt, pred), rel=1e-9)
    assert volume_metrics(g2, p2) == volume_metrics(torch.from_numpy(gt), torch.from_numpy(pred))


def test_identical_inputs():
    gt = torch.from_numpy(blob_volume(np.random.default_rng(9), (3, 20, 20)))
    assert float(psnr(gt, gt.clone())) == math.inf
    assert float(nmse(gt, gt.clone())) == 0.0
    assert float(ssim(gt, gt.clone())) == pytest.approx(1.0, abs=1e-12)
    assert volume_metrics(gt, gt.clone()) == pytest.approx({"nmse": 0.0, "psnr": math.inf, "ssim": 1.0})
    with np.errstate(divide="ignore"):  # skimage divides by a zero MSE
        assert peak_signal_noise_ratio(gt.numpy(), gt.numpy(), data_range=float(gt.max())) == math.inf


def test_all_zero_gt_nmse_is_nan():
    gt = torch.zeros(2, 16, 16)
    assert math.isnan(float(nmse(gt, torch.rand(2, 16, 16))))
    assert math.isnan(float(nmse(gt, gt)))


@pytest.mark.parametrize("f", [nmse, psnr, ssim, volume_metrics])
def test_shape_mismatch_raises(f):
    with pytest.raises(ValueError, match=r"\(2, 16, 16\).*\(2, 16, 15\)"):
        f(torch.rand(2, 16, 16), torch.rand(2, 16, 15))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.rand(2, 6, 16), torch.rand(2, 6, 16))
    with pytest.raises(ValueError, match="magnitude"):
        psnr(torch.rand(2, 8, 8, dtype=torch.complex64), torch.rand(2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="slices, h, w"):
        nmse(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))


def test_no_autograd_graph_and_inputs_untouched():
    gt = torch.rand(2, 16, 16, requires_grad=True)
    pred = torch.rand(2, 16, 16)
    before = pred.clone()
    v = ssim(gt, pred)
    assert not v.requires_grad
    assert torch.equal(pred, before)
