"""`mrbench data import` throughput on the real scans the tests use (JSON on stdout).

Times (best of --repeat) the import of: nibabel's example4d.nii.gz (128×96×24, frame 0) resampled
to 128², with a synthetic phase, 8 simulated coils and noise at SNR 30; and twixtools' gre.dat
(2 coils, 160 lines × 320 oversampled samples), read from the twixtools sdist that `make test`
downloads into .venv/sdist. Peak resident memory of this process is reported beside them.

    .venv/bin/python benchmarks/bench_import.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from mrbench.data.importers.base import ImportOptions
from mrbench.data.importers.build import import_dataset


def _timed(src: Path, options: ImportOptions, repeat: int) -> dict:
    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            report = import_dataset(src, Path(tmp) / "ds", options=options)
            best = min(best, time.perf_counter() - t0)
    v = report.volumes[0]
    return {"seconds": round(best, 3), "kspace": v["kspace"], "slices_per_second": round(v["kspace"][0] / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = {"benchmark": "bench_import", "repeat": args.repeat}
    nib = Path(importlib.util.find_spec("nibabel").origin).parent / "tests" / "data" / "example4d.nii.gz"
    opts = ImportOptions(size=128, frame=0, phase=True, coils=8, snr=30.0, split=(1.0, 0.0, 0.0))
    out["nifti_example4d_128_8coils"] = _timed(nib, opts, args.repeat)
    archives = sorted((Path(sys.prefix) / "sdist").glob("twixtools-*.tar.gz"))
    if archives:
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(archives[-1]) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("example_data/gre.dat"))
                with tar.extractfile(member) as f, open(Path(tmp) / "gre.dat", "wb") as dst:
                    shutil.copyfileobj(f, dst)
            out["twix_gre_dat"] = _timed(Path(tmp) / "gre.dat", ImportOptions(split=(1.0, 0.0, 0.0)), args.repeat)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
