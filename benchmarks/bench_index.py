"""Opening a large dataset: volume-index time cold and warm, and slices read per second.

    .venv/bin/python benchmarks/bench_index.py [--volumes 2000] [--size 32] [--slices 4]

Writes ``--volumes`` small single-coil fastMRI-format files (train/val/test, two contrasts)
to a temporary directory, then times:

* ``cold``: :func:`mrbench.data.index.scan` with no cache — every HDF5 header opened (the
  first open of a dataset; it also writes ``.mrbench-index.json``);
* ``warm``: the same scan again, headers from the cache (a file is re-read only when its size
  or modification time changed);
* ``uncached``: a scan with ``cache=False`` once the OS has the files in its page cache (what
  every run start cost before the cache);
* ``digests_cold`` / ``digests_warm``: the run manifest's per-file digests, computed, then from
  the cache;
* ``slices_per_s``: ``SliceDataset`` reads of one slice each (file opened per access: the
  store's memory budget set to 0, as for data larger than memory), shuffled.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mrbench.data.contexts import Context
from mrbench.data.dataset import SliceDataset, TaskData, VolumeStore
from mrbench.data.fastmri_format import write_volume
from mrbench.data.index import scan
from mrbench.data.index_cache import IndexCache
from mrbench.store import file_digest


def write_files(root: Path, volumes: int, size: int, slices: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((slices, size, size)).astype(np.complex64)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)).astype(
        np.complex64
    )
    target = np.abs(img).astype(np.float32)
    for v in range(volumes):
        split = ("train", "train", "train", "train", "val", "test")[v % 6]
        contrast = ("AXT1", "AXT2")[(v // 6) % 2]
        (root / split).mkdir(parents=True, exist_ok=True)
        write_volume(root / split / f"vol{v:05d}_{contrast}.h5", k, target, acquisition=contrast, patient_id=str(v))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        t_write, _ = timed(lambda: write_files(root, args.volumes, args.size, args.slices))
        cold, index = timed(lambda: scan(root))
        warm, again = timed(lambda: scan(root))
        assert again.volumes == index.volumes
        uncached, _ = timed(lambda: scan(root, cache=False))
        files = [v.path for vols in index.volumes.values() for v in vols]

        def digests():
            cache = IndexCache(root)
            out = [cache.digest(f, file_digest) for f in files]
            cache.save()
            return out

        d_cold, first = timed(digests)
        d_warm, second = timed(digests)
        assert first == second
        vols = index.select("train", "AXT1")
        data = SliceDataset(
            [TaskData("AXT1", Context("AXT1", "equispaced", 4.0), tuple(vols))],
            train=True,
            store=VolumeStore(max_bytes=0),
        )
        order = np.random.default_rng(1).permutation(len(data))[: args.reads]
        t_read, _ = timed(lambda: [data[int(i)] for i in order])
    print(
        json.dumps(
            {
                "volumes": args.volumes,
                "size": args.size,
                "slices_per_volume": args.slices,
                "write_seconds": round(t_write, 2),
                "index_cold_seconds": round(cold, 3),
                "index_warm_seconds": round(warm, 3),
                "index_uncached_seconds": round(uncached, 3),
                "warm_speedup_over_uncached": round(uncached / warm, 1),
                "digests_cold_seconds": round(d_cold, 3),
                "digests_warm_seconds": round(d_warm, 3),
                "slices_per_s_from_files": round(len(order) / t_read, 1),
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
