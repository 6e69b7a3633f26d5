"""Slice loading with masking from memory: slices per second (target ≥ 2000/s at 128², single-coil).

Writes a few 128×128 single-coil volumes to a temporary directory, loads them into
a training SliceDataset (a new random mask per sample, as in training), warms the
in-memory store, then times ``dataset[i]`` over shuffled indices. Prints one JSON object.
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrbench.data.contexts import Context
from mrbench.data.dataset import SliceDataset, TaskData
from mrbench.data.fastmri_format import read_meta, write_volume


def main(size=128, slices=24, volumes=8, n=4000):
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        metas = []
        for v in range(volumes):
            img = (rng.standard_normal((slices, size, size)) + 1j * rng.standard_normal((slices, size, size))).astype(np.complex64)
            k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
            p = Path(tmp) / f"v{v}.h5"
            write_volume(p, k.astype(np.complex64), np.abs(img).astype(np.float32), acquisition="AXT1", patient_id=str(v))
            metas.append(read_meta(p))
        for kind in ("equispaced", "random", "gaussian", "gaussian2d"):
            ds = SliceDataset([TaskData("t", Context("AXT1", kind, 4), tuple(metas))], train=True, seed=0)
            for i in range(len(ds)):  # warm: decode every volume once
                ds[i]
            order = np.random.default_rng(1).integers(0, len(ds), n)
            t0 = time.perf_counter()
            for i in order:
                ds[int(i)]
            dt = time.perf_counter() - t0
            results[kind] = round(n / dt, 1)
    print(json.dumps({
        "benchmark": "slice_loading",
        "shape": [size, size],
        "coils": 1,
        "slices_per_second": results,
        "target_slices_per_second": 2000,
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
