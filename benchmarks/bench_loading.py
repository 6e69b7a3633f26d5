"""Slice loading with masking from memory: slices per second (target ≥ 2000/s at 128², single-coil).

    .venv/bin/python benchmarks/bench_loading.py [--rounds 5] [--samples 4000]

Writes a few 128×128 single-coil volumes to a temporary directory, loads them into
a training SliceDataset per mask kind (a new random mask per sample, as in
training), warms the in-memory store, then times ``dataset[i]`` over shuffled
indices. The kinds take turns over ``--rounds`` rounds (load drifts on a shared
machine hit all alike); per kind the median and the best round's rate are
reported. Prints one JSON object.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrbench.data.contexts import Context
from mrbench.data.dataset import SliceDataset, TaskData
from mrbench.data.fastmri_format import read_meta, write_volume


def main(size=128, slices=24, volumes=8, samples=4000, rounds=5):
    rng = np.random.default_rng(0)
    kinds = ("equispaced", "random", "gaussian", "gaussian2d")
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        metas = []
        for v in range(volumes):
            img = (rng.standard_normal((slices, size, size)) + 1j * rng.standard_normal((slices, size, size))).astype(
                np.complex64
            )
            k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
            p = Path(tmp) / f"v{v}.h5"
            write_volume(
                p, k.astype(np.complex64), np.abs(img).astype(np.float32), acquisition="AXT1", patient_id=str(v)
            )
            metas.append(read_meta(p))
        datasets = {}
        for kind in kinds:
            ds = SliceDataset([TaskData("t", Context("AXT1", kind, 4), tuple(metas))], train=True, seed=0)
            for i in range(len(ds)):  # warm: decode every volume once
                ds[i]
            datasets[kind] = ds
        per_round = max(1, samples // rounds)
        order = np.random.default_rng(1).integers(0, len(datasets[kinds[0]]), per_round)
        for _ in range(rounds):
            for kind, ds in datasets.items():
                t0 = time.perf_counter()
                for i in order:
                    ds[int(i)]
                rates[kind].append(per_round / (time.perf_counter() - t0))
    print(
        json.dumps(
            {
                "benchmark": "slice_loading",
                "shape": [size, size],
                "coils": 1,
                "slices_per_second": {kind: round(statistics.median(r), 1) for kind, r in rates.items()},
                "best_round_slices_per_second": {kind: round(max(r), 1) for kind, r in rates.items()},
                "rounds": rounds,
                "samples_per_round": per_round,
                "target_slices_per_second": 2000,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=4000, help="timed samples per kind, over all rounds")
    args = ap.parse_args()
    main(samples=args.samples, rounds=args.rounds)
