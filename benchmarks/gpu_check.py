"""``make gpu``: the one prepared GPU check, sized for a short lease (≤ 8 minutes on one GPU).

    .venv/bin/python benchmarks/gpu_check.py [--out baselines/gpu] [--budget 2000]

On a machine without CUDA it prints one line and exits 0 (nothing to do). With CUDA it runs,
in order, each with a time limit, and prints one JSON object (also written to
``<out>/gpu_check.json``):

1. the GPU-marked tests (``pytest -m gpu``: bf16 training, …);
2. ``benchmarks/bench_varnet.py`` at fastMRI's size — 12 cascades, 18 channels, 640×368 k-space,
   16 coils, batch 1 — mrbench's VarNet and ``fastmri.models.VarNet`` in one process, fp32 and
   bf16 (steps/s and the paired ratio);
3. one GPU-profile cell of each paper experiment (``--profile gpu`` with ``train.budget`` capped at
   ``--budget`` slices so the lease suffices), on built-in data it synthesises first, with its
   wall time and metrics.
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

ROOT = Path(__file__).resolve().parents[1]

#: (experiment file, method, synth arguments for its data): one cell each
CELLS = [
    ("evaluate/liu2021_mtl.toml", "mtl", ["--subjects", "12", "--size", "128"]),
    (
        "evaluate/kmmaml2023.toml",
        "kmmaml",
        [
            "--subjects",
            "12",
            "--size",
            "128",
            "--contrasts",
            "AXT1,AXT2,AXPD,AXFLAIR,T1GRE:gre:tr=20:te=5:flip=30,STIR:ir:tr=4000:te=30:ti=150",
        ],
    ),
    ("evaluate/deepinv_ssl.toml", "stl", ["--subjects", "12", "--size", "128"]),
]


def run(cmd: list[str], timeout: int, **kw) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)
        return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout} s", time.perf_counter() - t0


def last_json(text: str) -> dict | None:
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "baselines" / "gpu"))
    ap.add_argument("--budget", type=int, default=2000)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("make gpu: no CUDA device on this machine; nothing run")
        return 0
    py = sys.executable
    result: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rc, out, sec = run([py, "-m", "pytest", "-q", "-m", "gpu", "tests"], timeout=180)
    result["gpu_tests"] = {
        "exit": rc,
        "seconds": round(sec, 1),
        "summary": out.strip().splitlines()[-1] if out.strip() else "",
    }
    result["varnet_fastmri_size"] = {}
    for precision in ("fp32", "bf16"):
        rc, out, sec = run(
            [
                py,
                "benchmarks/bench_varnet.py",
                "--device",
                "cuda",
                "--size",
                "paper",
                "--coils",
                "16",
                "--height",
                "640",
                "--width",
                "368",
                "--steps",
                "10",
                "--warmup",
                "3",
                "--precision",
                precision,
                "--no-memory",
            ],
            timeout=150,
        )
        result["varnet_fastmri_size"][precision] = last_json(out) or {"exit": rc, "output": out[-500:]}
    cells = {}
    with tempfile.TemporaryDirectory() as tmp:
        for exp, method, synth in CELLS:
            data = Path(tmp) / Path(exp).stem
            rc, out, _ = run([py, "-m", "mrbench", "data", "synth", "--out", str(data), "--quiet", *synth], timeout=120)
            if rc != 0:
                cells[exp] = {"exit": rc, "output": out[-500:]}
                continue
            rc, out, sec = run(
                [
                    py,
                    "-m",
                    "mrbench",
                    "run",
                    method,
                    "--config",
                    exp,
                    "--profile",
                    "gpu",
                    "--quiet",
                    "--set",
                    f"data.root={data}",
                    "--set",
                    f"run.out={tmp}/runs",
                    "--set",
                    f"train.budget={args.budget}",
                    "--set",
                    f"train.val_every={args.budget}",
                ],
                timeout=150,
            )
            cells[exp] = {
                "method": method,
                "exit": rc,
                "seconds": round(sec, 1),
                "budget": args.budget,
                "output": out.strip().splitlines()[-12:],
            }
    result["gpu_profile_cells"] = cells
    text = json.dumps(result, indent=1)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "gpu_check.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
