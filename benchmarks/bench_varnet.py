"""Training-step throughput of mrbench's VarNet against fastMRI's reference VarNet.

    .venv/bin/python benchmarks/bench_varnet.py [--device cpu|cuda] [--size demo|paper]
        [--coils 8] [--height 128] [--width 128] [--batch 1] [--steps 15] [--warmup 3] [--threads N]

One training step = forward + L1 loss against the fully-sampled RSS image +
backward + Adam step. Both models get the same sizes (``mrbench.models.SIZES``)
and the same multi-coil input (smooth synthetic anatomy × Gaussian coil
profiles, 4× equispaced column mask with a fully sampled centre). fastMRI's
``VarNet`` takes real (B, C, H, W, 2) k-space and a bool (B, 1, 1, W, 1) mask.
Timing runs both in this process, interleaved (the order alternates every
repetition so load spikes hit both alike), and reports the median over
``--steps`` timed steps after ``--warmup`` untimed ones. Single-coil (C = 1)
throughput is measured the same way for both (fastMRI's VarNet runs its
sensitivity network on the one coil, mrbench skips it).

Peak memory of one training step: on CUDA ``torch.cuda.max_memory_allocated``
in this process; on CPU a fresh child process per model reports the growth of
``ru_maxrss`` (the peak resident set, which never decreases, so it cannot be
attributed per model inside one process) from after model/input creation to
after the steps.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrbench.fourier import fft2c, ifft2c, rss  # noqa: E402
from mrbench.models import SIZES, VarNet  # noqa: E402


def make_input(batch: int, coils: int, h: int, w: int, device: str, seed: int = 0) -> dict:
    """Masked multi-coil k-space, mask, ACS width and the fully-sampled RSS target."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.zeros(batch, h, w, dtype=torch.complex64)
    for b in range(batch):
        for _ in range(6):
            cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
            r = 0.1 + 0.3 * float(torch.rand(1, generator=g))
            img[b] += float(0.3 + 0.7 * torch.rand(1, generator=g)) * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = img * torch.exp(1j * 0.5 * xx)
    if coils > 1:
        ang = torch.arange(coils) * (2 * math.pi / coils)
        sens = torch.stack([torch.exp(-((yy - 0.8 * a.sin()) ** 2 + (xx - 0.8 * a.cos()) ** 2)) for a in ang])
        sens = (sens / rss(sens, dim=0)).to(torch.complex64)
        images = img[:, None] * sens[None]
    else:
        images = img[:, None]
    full = fft2c(images)
    target = rss(ifft2c(full), dim=1)
    acs = max(2, round(0.08 * w))
    cols = torch.zeros(w, dtype=torch.bool)
    cols[::4] = True
    start = (w - acs + 1) // 2
    cols[start : start + acs] = True
    mask = cols.view(1, 1, 1, w).expand(batch, 1, h, w).to(torch.float32).contiguous()
    kspace = full * mask
    return {
        "kspace": kspace.to(device),
        "mask": mask.to(device),
        "nlf": torch.full((batch,), acs, dtype=torch.long, device=device),
        "target": target.to(device),
        # fastMRI's layout
        "kspace_ri": torch.view_as_real(kspace).contiguous().to(device),
        "mask_fm": cols.view(1, 1, 1, w, 1).expand(batch, 1, 1, w, 1).contiguous().to(device),
        "acs": acs,
    }


def build(which: str, size: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    s = SIZES[size]
    if which == "mrbench":
        model = VarNet(**s)
    else:
        from fastmri.models import VarNet as FastmriVarNet

        model = FastmriVarNet(
            num_cascades=s["cascades"], sens_chans=s["sens_chans"], sens_pools=s["sens_pools"],
            chans=s["chans"], pools=s["pools"],
        )
    return model.to(device)


def make_step(which: str, model: torch.nn.Module, data: dict):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    if which == "mrbench":
        def forward():
            return model(data["kspace"], data["mask"], data["nlf"])
    else:
        def forward():
            return model(data["kspace_ri"], data["mask_fm"], data["acs"])

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(forward(), data["target"])
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict, device: str, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step for each named step function, interleaved."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else reversed(names):
            _sync(device)
            t0 = time.perf_counter()
            steps[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def memory_probe(which: str, args) -> float:
    """Peak memory growth (MiB) of a few training steps, measured in this (fresh) process."""
    data = make_input(args.batch, args.coils, args.height, args.width, args.device)
    model = build(which, args.size, args.device)
    step = make_step(which, model, data)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="demo", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--memory-probe", choices=["mrbench", "fastmri"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda but CUDA is not available"}))
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps({"peak_mib": memory_probe(args.memory_probe, args)}))
        return 0

    result: dict = {
        "benchmark": "varnet_train_step",
        "device": args.device,
        "size": args.size,
        "config": SIZES[args.size],
        "input": {"batch": args.batch, "coils": args.coils, "height": args.height, "width": args.width},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "steps_timed": args.steps,
        "warmup": args.warmup,
    }
    models = {w: build(w, args.size, args.device) for w in ("mrbench", "fastmri")}
    result["params"] = {w: sum(p.numel() for p in m.parameters()) for w, m in models.items()}

    multi = make_input(args.batch, args.coils, args.height, args.width, args.device)
    sec = time_interleaved({w: make_step(w, m, multi) for w, m in models.items()}, args.device, args.warmup, args.steps)
    result["multicoil_steps_per_s"] = {w: 1.0 / s for w, s in sec.items()}
    result["multicoil_speedup"] = sec["fastmri"] / sec["mrbench"]

    single = make_input(args.batch, 1, args.height, args.width, args.device, seed=1)
    single_models = {w: build(w, args.size, args.device) for w in ("mrbench", "fastmri")}
    steps = {w: make_step(w, m, single) for w, m in single_models.items()}
    try:
        steps["fastmri"]()
    except Exception as exc:  # noqa: BLE001 - report, don't fail the benchmark
        result["singlecoil_fastmri_error"] = f"{type(exc).__name__}: {exc}"
        del steps["fastmri"]
    sec = time_interleaved(steps, args.device, args.warmup, args.steps)
    result["singlecoil_steps_per_s"] = {w: 1.0 / s for w, s in sec.items()}
    if "fastmri" in sec:
        result["singlecoil_speedup"] = sec["fastmri"] / sec["mrbench"]

    if args.device == "cuda":
        result["peak_memory_mib"] = {
            "method": "torch.cuda.max_memory_allocated growth over 3 training steps",
            **{w: memory_probe(w, args) for w in ("mrbench", "fastmri")},
        }
    else:
        peaks = {"method": "ru_maxrss growth over 3 training steps, fresh process per model"}
        for w in ("mrbench", "fastmri"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", w] + [
                f"--{k}={getattr(args, k)}" for k in ("device", "size", "batch", "coils", "height", "width", "threads")
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            peaks[w] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
        result["peak_memory_mib"] = peaks

    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
