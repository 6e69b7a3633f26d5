"""fastMRI-exact per-volume reconstruction metrics, in torch, vectorised over slices.

These reproduce ``fastmri/evaluate.py`` (Zbontar et al., fastMRI, 2018), which
calls scikit-image on magnitude volumes ``gt``, ``pred`` of shape
``(slices, h, w)``:

* ``nmse = ||gt - pred||² / ||gt||²`` over the whole volume;
* ``psnr = peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` over the
  whole volume. Note the data range is the volume's *maximum*, not max - min;
* ``ssim = mean_s structural_similarity(gt[s], pred[s], data_range=gt.max())``,
  i.e. one SSIM per slice with the *volume's* maximum as data range, then the
  mean over slices.

SSIM follows Wang et al., "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 13(4), 2004, with scikit-image's defaults: a
7×7 uniform window, K1 = 0.01, K2 = 0.03 and sample covariance (normalised by
NP / (NP - 1), NP = 49). scikit-image filters the full image with
``uniform_filter`` (reflect mode) and then crops ``(7 - 1) // 2 = 3`` pixels off
every border before averaging the SSIM map. The kept pixels are exactly those
whose 7×7 window lies inside the image, so the reflected border never
contributes: a "valid"-mode 7×7 box mean gives the same map, which is what is
computed here, for all slices at once.

All arithmetic is float64 whatever the input dtype; on float64 input the
results equal scikit-image's to ~1e-15. (For float32 input scikit-image and
numpy compute in float32, so fastMRI's own numbers carry float32 rounding:
SSIM ~1e-7, NMSE ~1e-5 relative.) Results are 0-d float64 tensors, on the
inputs' device. Inputs are detached: these are evaluation metrics, not losses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["nmse", "psnr", "ssim", "volume_metrics"]

_WIN = 7  # scikit-image's default win_size
_NP = _WIN * _WIN  # pixels per window
_K1 = 0.01
_K2 = 0.03


def _as_volumes(gt: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (gt, pred) pair and return float64 (slices, h, w) volumes."""
    gt = torch.as_tensor(gt)
    pred = torch.as_tensor(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got gt {tuple(gt.shape)} and pred {tuple(pred.shape)}")
    if gt.ndim not in (2, 3):
        raise ValueError(f"expected (slices, h, w) or (h, w) volumes, got shape {tuple(gt.shape)}")
    if gt.is_complex() or pred.is_complex():
        raise ValueError("metrics are defined on magnitude images; take .abs() of complex data first")
    if gt.ndim == 2:  # one slice
        gt, pred = gt.unsqueeze(0), pred.unsqueeze(0)
    # Metrics are evaluation only: no autograd graph, one float64 conversion.
    gt = gt.detach().to(torch.float64).contiguous()
    pred = pred.detach().to(torch.float64).contiguous()
    return gt, pred


def _range(gt: torch.Tensor, data_range) -> torch.Tensor:
    """fastMRI's data range: the maximum of the whole gt volume unless given."""
    if data_range is None:
        return gt.max()
    return torch.as_tensor(data_range, dtype=torch.float64, device=gt.device)


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1)
    return torch.dot(flat, flat)


def _nmse(gt: torch.Tensor, sse: torch.Tensor) -> torch.Tensor:
    energy = _sq_norm(gt)
    if energy == 0:  # all-zero reference: NMSE is undefined
        return torch.tensor(float("nan"), dtype=torch.float64, device=gt.device)
    return sse / energy


def _psnr(sse: torch.Tensor, numel: int, data_range: torch.Tensor) -> torch.Tensor:
    mse = sse / numel
    if mse == 0:  # identical volumes; skimage returns inf too
        return torch.tensor(float("inf"), dtype=torch.float64, device=sse.device)
    return 10 * torch.log10(data_range**2 / mse)


# Float64 bytes of the four stacked maps per band of rows (see _ssim_per_slice).
_BAND_BYTES = 4 << 20


class _Band(NamedTuple):
    """Views into the scratch buffer for one band height, made once per call.

    Two regions are reused in turn: maps ``m`` -> vertical sums ``v`` ->
    running sums ``c`` (over ``m``) -> window sums ``box`` (over ``v``) ->
    ``ratio`` (over ``c``).
    """

    m: torch.Tensor  # (4, n, r + 6, w): a, b, a² + k2/NP, b², with the 6-row halo
    v: torch.Tensor  # (4, n, r, w): vertical 7-tap sums
    c: torch.Tensor  # (4, n, r, w): running sums of v along rows
    box: torch.Tensor  # (4, n, r, w - 6): 7x7 window sums
    ratio: torch.Tensor  # (2, n, r, w - 6): A1/B1, A2/B2


def _band_views(work: torch.Tensor, n: int, r: int, w: int, size_m: int) -> _Band:
    rows_in, wv = r + _WIN - 1, w - _WIN + 1
    region1, region2 = work[:size_m], work[size_m:]
    return _Band(
        m=region1[: 4 * n * rows_in * w].view(4, n, rows_in, w),
        v=region2[: 4 * n * r * w].view(4, n, r, w),
        c=region1[: 4 * n * r * w].view(4, n, r, w),
        box=region2[: 4 * n * r * wv].view(4, n, r, wv),
        ratio=region1[: 2 * n * r * wv].view(2, n, r, wv),
    )


def _ssim_per_slice(
    gt: torch.Tensor, pred: torch.Tensor, data_range: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM of each slice, shape (slices,), and Σ (gt - pred)² of the volume.

    ``gt``/``pred`` are float64 (slices, h, w). The squared error comes for free
    from the b² map below and saves NMSE/PSNR another pass over the volume.

    Wang et al.'s per-window formula

        S = (2 ux uy + C1)(2 vxy + C2) / ((ux² + uy² + C1)(vx + vy + C2))

    is rewritten in a = x + y and b = x - y, which needs four box-filtered maps
    instead of five and is algebraically identical:

        2 ux uy = (ua² - ub²) / 2        ux² + uy² = (ua² + ub²) / 2
        2 vxy   = (va - vb) / 2          vx + vy   = (va + vb) / 2

    where va is the (sample) variance of a in the window. Each factor pair
    (numerator, denominator) is rescaled by a common constant so that only
    window *sums* are needed, never means.

    Every step works on all slices at once. On CPU the chain is bound by
    memory traffic, not arithmetic, so the valid rows are taken in a few bands
    (each band: all slices, its rows plus the 6-row halo) sized to stay in
    cache; small volumes are a single band.
    """
    n, h, w = gt.shape
    if h < _WIN or w < _WIN:
        raise ValueError(f"SSIM needs slices of at least {_WIN}x{_WIN} pixels, got {h}x{w}")
    hv, wv = h - _WIN + 1, w - _WIN + 1  # valid-mode output size
    rows_fit = max(8, _BAND_BYTES // (4 * n * w * 8) - (_WIN - 1))
    n_bands = -(-hv // rows_fit) if gt.device.type == "cpu" else 1  # GPUs: one band
    band = -(-hv // n_bands)  # valid rows per band, balanced

    # Scale A1, B1 by 2 NP² and A2, B2 by 2 (NP - 1): then with Va = Σa² - (Σa)² / NP
    # (= (NP - 1) × the sample variance of a), A1 = (Σa)² - (Σb)² + k1, B1 = (Σa)² + (Σb)² + k1,
    # A2 = Va - Vb + k2 and B2 = Va + Vb + k2, where k1 = 2 NP² C1 and k2 = 2 (NP - 1) C2.
    # k2 rides along in a² (k2 / NP per pixel, so + k2 per window sum) and k1 in (Σa)²,
    # so both members of each (A, B) pair pick them up from one butterfly below.
    dev = gt.device
    per_range2 = [2 * _K2**2 * (_NP - 1) / _NP, 0.0, 2 * _K1**2 * _NP * _NP, 0.0]
    consts = torch.tensor(per_range2, dtype=torch.float64, device=dev) * data_range**2
    k_sq, k_mean = consts[:2].view(2, 1, 1, 1), consts[2:].view(2, 1, 1, 1)
    minus_one = torch.tensor(-1.0, dtype=torch.float64, device=dev)

    size_m = 4 * n * (band + _WIN - 1) * w
    work = torch.empty(size_m + 4 * n * band * w, dtype=torch.float64, device=dev)
    views: dict[int, _Band] = {}
    sums = torch.empty(n_bands, n, dtype=torch.float64, device=dev)
    sse = torch.empty(n_bands, dtype=torch.float64, device=dev)
    for i, r0 in enumerate(range(0, hv, band)):
        r = min(band, hv - r0)
        if r not in views:
            views[r] = _band_views(work, n, r, w, size_m)
        m, v, c, box, ratio = views[r]
        x, y = gt[:, r0 : r0 + r + _WIN - 1], pred[:, r0 : r0 + r + _WIN - 1]

        # Maps to filter: a, b, a² + k2/NP, b².
        torch.add(x, y, out=m[0])
        torch.sub(x, y, out=m[1])
        torch.addcmul(k_sq, m[:2], m[:2], out=m[2:])
        own = r if r0 + r < hv else r + _WIN - 1  # rows not shared with the next band
        torch.sum(m[3, :, :own], dim=(0, 1, 2), out=sse[i])  # b² = (x - y)²

        # Valid 7-tap sums down the columns (one strided reduction), then along the
        # rows as differences of running sums (float64: ~1e-13 relative error).
        torch.sum(m.unfold(2, _WIN, 1), dim=-1, out=v)
        torch.cumsum(v, dim=3, out=c)
        box[..., 0] = c[..., _WIN - 1]
        torch.sub(c[..., _WIN:], c[..., :-_WIN], out=box[..., 1:])
        # box = window sums [Σa, Σb, Σa² + k2, Σb²] at every valid pixel of the band.

        box[2:].addcmul_(box[:2], box[:2], value=-1.0 / _NP)  # Va + k2, Vb
        torch.addcmul(k_mean, box[:2], box[:2], out=box[:2])  # (Σa)² + k1, (Σb)²
        # Pairs (f, s) = ((Σa)² + k1, (Σb)²) and (Va + k2, Vb): A = f - s, B = f + s, and
        # A / B = 2 f / (f + s) - 1 (B > 0; the subtraction costs at most ~1e-16 absolute).
        first, second = box[0::2], box[1::2]
        torch.add(first, second, out=ratio)  # B1, B2
        torch.addcdiv(minus_one, first, ratio, value=2, out=ratio)  # A1 / B1, A2 / B2
        # Σ over the band of the SSIM map (A1/B1)(A2/B2), per slice.
        torch.sum(torch.mul(ratio[0], ratio[1], out=ratio[0]), dim=(1, 2), out=sums[i])
    return sums.sum(dim=0) / (hv * wv), sse.sum()


def nmse(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Normalised MSE ``||gt - pred||² / ||gt||²`` over the whole volume.

    As ``fastmri.evaluate.nmse``. Returns NaN (rather than raising or
    returning inf) when ``gt`` is all zeros, since the ratio is undefined.
    """
    gt, pred = _as_volumes(gt, pred)
    return _nmse(gt, _sq_norm(gt - pred))


def psnr(gt: torch.Tensor, pred: torch.Tensor, data_range=None) -> torch.Tensor:
    """PSNR in dB over the whole volume, as ``fastmri.evaluate.psnr``.

    ``10 log10(data_range² / MSE)`` with ``data_range = gt.max()`` of the whole
    volume by default (skimage's ``peak_signal_noise_ratio``). Identical inputs
    give ``inf``, like scikit-image.
    """
    gt, pred = _as_volumes(gt, pred)
    return _psnr(_sq_norm(gt - pred), gt.numel(), _range(gt, data_range))


def ssim(gt: torch.Tensor, pred: torch.Tensor, data_range=None) -> torch.Tensor:
    """Mean over slices of the per-slice SSIM, as ``fastmri.evaluate.ssim``.

    Each slice's SSIM is skimage's ``structural_similarity`` with its defaults
    (7×7 uniform window, K1=0.01, K2=0.03, sample covariance, 3-pixel border
    cropped); ``data_range`` (fastMRI's ``maxval``) defaults to the maximum of
    the whole gt volume, shared by all slices. Slices must be at least 7×7.
    """
    gt, pred = _as_volumes(gt, pred)
    return _ssim_per_slice(gt, pred, _range(gt, data_range))[0].mean()


def volume_metrics(gt: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    """``{"nmse", "psnr", "ssim"}`` of one volume, as fastMRI reports them.

    Same values as calling :func:`nmse`, :func:`psnr` and :func:`ssim`, but the
    inputs are validated and converted once and the shared sums reused.
    """
    gt, pred = _as_volumes(gt, pred)
    data_range = gt.max()
    per_slice, sse = _ssim_per_slice(gt, pred, data_range)
    return {
        "nmse": float(_nmse(gt, sse)),
        "psnr": float(_psnr(sse, gt.numel(), data_range)),
        "ssim": float(per_slice.mean()),
    }
