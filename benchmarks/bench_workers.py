"""Training-batch loading with DataLoader workers: slices per second for train.workers 0, 1, 2.

    .venv/bin/python benchmarks/bench_workers.py [--coils 8] [--size 256] [--batches 48]

Writes multi-coil fastMRI-layout volumes to a temporary directory and reads training batches
the way the engine does with ``train.workers`` (the training process draws items and masks,
the workers read, mask and crop; ``data.cache_gb = 0``, so every slice comes from its file, as
with a dataset larger than memory). Prints one JSON object: slices/s per worker count and the
ratio to 0 workers. The batches are identical for every worker count (tested elsewhere);
only the time differs.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrbench.data.contexts import Context
from mrbench.data.dataset import SliceDataset, TaskData, VolumeStore
from mrbench.data.fastmri_format import read_meta, write_volume
from mrbench.engine import _Drawn


def main(coils=8, size=256, slices=8, volumes=4, batches=48, batch=4):
    rng = np.random.default_rng(0)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        metas = []
        for v in range(volumes):
            k = rng.standard_normal((slices, coils, size, size)) + 1j * rng.standard_normal((slices, coils, size, size))
            t = np.abs(rng.standard_normal((slices, size, size))).astype(np.float32)
            path = Path(tmp) / f"v{v}.h5"
            write_volume(path, k.astype(np.complex64), t, acquisition="AXT1", patient_id=f"p{v}")
            metas.append(read_meta(path))
        task = TaskData("AXT1/random/4x", Context("AXT1", "random", 4.0), tuple(metas))
        for workers in (0, 1, 2):
            ds = SliceDataset([task], train=True, seed=0, store=VolumeStore(max_bytes=0))
            order = np.random.default_rng(1).integers(len(ds), size=(batches, batch))

            def plan():
                for idx in order:  # noqa: B023 (called at once, inside this iteration)
                    yield [(int(i), ds.mask_for(int(i))) for i in idx]  # noqa: B023 (called at once, inside this iteration)

            t0 = time.perf_counter()
            if workers == 0:
                for items in plan():
                    torch.utils.data.default_collate([ds.sample(i, drawn=d) for i, d in items])
            else:
                loader = torch.utils.data.DataLoader(
                    _Drawn(ds), batch_sampler=plan(), num_workers=workers, collate_fn=torch.utils.data.default_collate
                )
                for _ in loader:
                    pass
            out[workers] = batches * batch / (time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "data": f"{volumes} volumes × {slices} slices, {coils} coils, {size}×{size}, read from file (cache_gb 0)",
                "slices_per_second": {str(w): round(r, 1) for w, r in out.items()},
                "ratio_to_0_workers": {str(w): round(r / out[0], 2) for w, r in out.items()},
                "cores": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=48)
    a = ap.parse_args()
    main(coils=a.coils, size=a.size, batches=a.batches)
