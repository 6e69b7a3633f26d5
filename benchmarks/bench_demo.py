"""The demo from empty, timed: what a new user's first `make demo` costs (issue 31).

    .venv/bin/python benchmarks/bench_demo.py [--profile full] [--seeds 0,1,2] [--jobs 0] [--keep DIR]

Synthesises the built-in data into a temporary folder (timed on its own), then runs
``mrbench demo`` into an empty runs folder in a child process (the command a user types,
timed as the wall clock of that process), and reads every finished run's manifest for where
the time went: per method variant (the table row label) the summed run seconds, and
training vs evaluation (each run's own clock: ``train_seconds`` to the end of training, the
rest of ``wall_seconds`` evaluation and writing). Install time is not included (the venv
exists already). Prints one JSON object on stdout: wall, synthesis, per-label seconds,
training and evaluation shares, runs, cores, CPU model, load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="the demo's profile (full: the 135-run grid)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the demo's)")
    ap.add_argument("--jobs", type=int, default=0, help="runs in parallel (0: one per core)")
    ap.add_argument("--keep", default=None, help="write data and runs here instead of a temporary folder")
    args = ap.parse_args()

    from mrbench.data.synth.build import synthesize
    from mrbench.demo import DEMO_SYNTH
    from mrbench.reports.results import _SUFFIX
    from mrbench.store import cpu_model
    from mrbench.sweep import cores

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-demo-"))
    data, out = root / "data", root / "runs"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    synthesize(DEMO_SYNTH, data, overwrite=data.exists())
    synth = time.perf_counter() - t0
    cmd = [
        sys.executable,
        "-m",
        "mrbench",
        "demo",
        "--out",
        str(out),
        "--data",
        str(data),
        "--quiet",
        "--jobs",
        str(args.jobs),
    ]
    cmd += ["--profile", args.profile] if args.profile else []
    cmd += ["--seeds", args.seeds] if args.seeds else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"mrbench demo failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    per_label: dict[str, float] = {}
    train = total = 0.0
    runs = 0
    for manifest in sorted(out.rglob("manifest.json")):
        m = json.loads(manifest.read_text())
        label = _SUFFIX.sub("", manifest.parent.name)
        per_label[label] = per_label.get(label, 0.0) + float(m.get("wall_seconds", 0.0))
        train += float(m.get("train_seconds", 0.0))
        total += float(m.get("wall_seconds", 0.0))
        runs += 1
    print(
        json.dumps(
            {
                "benchmark": "demo from empty",
                "command": " ".join(cmd[1:]),
                "profile": args.profile or "quick (default)",
                "wall_seconds": round(wall, 1),
                "synthesis_seconds": round(synth, 1),
                "runs": runs,
                "run_seconds_summed": round(total, 1),
                "training_share": round(train / total, 3) if total else None,
                "evaluation_share": round(1 - train / total, 3) if total else None,
                "seconds_per_label": {k: round(v, 1) for k, v in sorted(per_label.items(), key=lambda kv: -kv[1])},
                "cores": cores(),
                "cpu": cpu_model(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "where": str(root) if args.keep else "temporary (removed by the OS)",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
