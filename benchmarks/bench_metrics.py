"""Time mrbench's fastMRI metrics against fastMRI's way of calling scikit-image.

    .venv/bin/python benchmarks/bench_metrics.py [--slices 16] [--size 128] [--threads N]

Both sides get the same float64 (slices, h, w) volume pair (an image-like
volume plus Rician noise) and compute NMSE, PSNR and SSIM as
``fastmri/evaluate.py`` does. The two sides run in alternating warm blocks (so
load drifts hit both alike); the median over all timed calls
(``time.perf_counter``) is reported. Exits non-zero if the values differ by
more than 1e-4. Prints one JSON object on stdout.

numpy's OpenBLAS pool is held to one thread (``OPENBLAS_NUM_THREADS=1`` unless
set): the reference's only BLAS call is the ``np.linalg.norm`` of NMSE, and after
it OpenBLAS's idle threads keep spinning on the cores for a while. On a 2-core
machine they then fight torch's OpenMP threads in the next timed call (single
calls of 5-90 ms instead of ~2 ms were measured), which times the two thread
pools' contention, not either implementation. scikit-image itself is
single-threaded either way.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS (see above)

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrbench.evaluation.metrics import volume_metrics

TOL = 1e-4
TARGET_SPEEDUP = 5.0


def fastmri_reference(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """fastmri/evaluate.py: nmse, psnr (data_range=gt.max()), mean per-slice ssim (maxval=gt.max())."""
    maxval = gt.max()
    return {
        "nmse": float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2),
        "psnr": float(peak_signal_noise_ratio(gt, pred, data_range=maxval)),
        "ssim": float(np.mean([structural_similarity(gt[s], pred[s], data_range=maxval) for s in range(gt.shape[0])])),
    }


def image_like_volume(rng: np.random.Generator, slices: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs in an ellipse on a dark background, and a Rician-noisy copy."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    gt = np.zeros((slices, size, size))
    for s in range(slices):
        gt[s] += 0.4 * ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1)
        for _ in range(6):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            r = rng.uniform(0.05, 0.3)
            gt[s] += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    sigma = 0.05 * gt.max()
    pred = np.abs(gt + sigma * (rng.standard_normal(gt.shape) + 1j * rng.standard_normal(gt.shape)))
    return gt, pred


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=40, help="timed calls per side")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks of repeats")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before each block")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gt, pred = image_like_volume(np.random.default_rng(0), args.slices, args.size)
    gt_t, pred_t = torch.from_numpy(gt), torch.from_numpy(pred)

    ours = volume_metrics(gt_t, pred_t)
    ref = fastmri_reference(gt, pred)
    diff = {k: abs(ours[k] - ref[k]) for k in ref}

    def timed(fn, *a) -> float:
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    # Alternating blocks: each side runs warm within its block, and load drifts
    # on the machine hit both sides alike across blocks.
    t_ours, t_ref = [], []
    block = max(1, args.repeats // args.rounds)
    for _ in range(args.rounds):
        for _ in range(args.warmup):
            volume_metrics(gt_t, pred_t)
        t_ours += [timed(volume_metrics, gt_t, pred_t) for _ in range(block)]
        for _ in range(args.warmup):
            fastmri_reference(gt, pred)
        t_ref += [timed(fastmri_reference, gt, pred) for _ in range(block)]

    ms_ours = statistics.median(t_ours) * 1e3
    ms_ref = statistics.median(t_ref) * 1e3
    ok = all(d <= TOL for d in diff.values())
    print(
        json.dumps(
            {
                "benchmark": "metrics",
                "shape": list(gt.shape),
                "dtype": "float64",
                "repeats": len(t_ours),
                "mrbench_ms": round(ms_ours, 3),
                "skimage_ms": round(ms_ref, 3),
                "speedup": round(ms_ref / ms_ours, 2),
                "target_speedup": TARGET_SPEEDUP,
                "mrbench_min_ms": round(min(t_ours) * 1e3, 3),
                "skimage_min_ms": round(min(t_ref) * 1e3, 3),
                "speedup_of_mins": round(min(t_ref) / min(t_ours), 2),
                "values": ours,
                "max_abs_diff": diff,
                "within_tol": ok,
                "tol": TOL,
                "torch_threads": torch.get_num_threads(),
                "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
