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
``--steps`` timed steps after ``--warmup`` untimed ones (the quartiles and
the ratio of the fastest steps are reported too: on a shared machine other
processes' load shows up as spread). The host's load average is recorded. Single-coil (C = 1)
throughput is measured the same way for both (fastMRI's VarNet runs its
sensitivity network on the one coil, mrbench skips it).

Peak memory of training: a fresh child process per model (the peak resident
set never decreases, so it cannot be attributed per model inside one process)
reports the growth over 3 steps from a freshly built model: on CPU of the
peak RSS (VmHWM, reset via /proc/self/clear_refs once model and input exist;
``ru_maxrss`` growth where that is unavailable), on CUDA of
``torch.cuda.max_memory_allocated``.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrbench.fourier import fft2c, ifft2c, rss
from mrbench.models import SIZES, VarNet


def make_input(batch: int, coils: int, h: int, w: int, device: str, seed: int = 0) -> dict:
    """Masked multi-coil k-space, mask, ACS width and the fully-sampled RSS target."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.zeros(batch, h, w, dtype=torch.complex64)
    for b in range(batch):
        for _ in range(6):
            cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
            r = 0.1 + 0.3 * float(torch.rand(1, generator=g))
            img[b] += float(0.3 + 0.7 * torch.rand(1, generator=g)) * torch.exp(
                -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)
            )
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
            num_cascades=s["cascades"],
            sens_chans=s["sens_chans"],
            sens_pools=s["sens_pools"],
            chans=s["chans"],
            pools=s["pools"],
        )
    return model.to(device)


PRECISION = {"value": "fp32"}  # --precision: bf16 = CUDA autocast of forward and loss


def make_step(which: str, model: torch.nn.Module, data: dict):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    if which == "mrbench":

        def forward():
            return model(data["kspace"], data["mask"], data["nlf"]).abs()  # the backbone's image is complex
    else:

        def forward():
            return model(data["kspace_ri"], data["mask_fm"], data["acs"])

    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if PRECISION["value"] == "bf16"
        else torch.autocast(device_type="cpu", enabled=False)
    )

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.l1_loss(forward().float(), data["target"])
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict, device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step (one entry per timed step) for each named step function, interleaved."""
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
    return times


def summarise(times: dict[str, list[float]], result: dict, prefix: str) -> None:
    """steps/s from the median step time; speed-up from medians and from the fastest steps."""
    med = {n: statistics.median(t) for n, t in times.items()}
    result[f"{prefix}_steps_per_s"] = {n: round(1.0 / m, 3) for n, m in med.items()}
    result[f"{prefix}_step_ms_quartiles"] = {
        n: [round(1e3 * q, 1) for q in statistics.quantiles(t, n=4)] for n, t in times.items()
    }
    if "fastmri" in med:
        result[f"{prefix}_speedup"] = round(med["fastmri"] / med["mrbench"], 3)
        result[f"{prefix}_speedup_best_step"] = round(min(times["fastmri"]) / min(times["mrbench"]), 3)


def _vm_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB from /proc/self/status (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_probe(which: str, args) -> dict:
    """Peak memory growth (MiB) of 3 training steps from a fresh model, in this (fresh) process.

    CPU: the peak resident set (VmHWM) is reset through /proc/self/clear_refs
    after the model and the input exist, so the growth counts activations,
    gradients, Adam state and allocator slack of the steps only. Without
    that reset (non-Linux), ``ru_maxrss`` growth is reported, which can
    under-count (the import-time peak may be higher than the steps').
    """
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
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    base = _vm_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        reset = base is not None
    except OSError:
        reset = False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    if reset:
        return {"peak_mib": (_vm_kib("VmHWM") - base) / 1024, "how": "VmHWM reset"}
    return {"peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "how": "ru_maxrss"}


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
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: CUDA autocast (GPU only)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory probes")
    ap.add_argument("--memory-probe", choices=["mrbench", "fastmri"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "--device cuda but CUDA is not available"}))
        return 2
    if args.precision == "bf16" and args.device != "cuda":
        print(json.dumps({"error": "--precision bf16 needs --device cuda"}))
        return 2
    PRECISION["value"] = args.precision
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return 0

    result: dict = {
        "benchmark": "varnet_train_step",
        "device": args.device,
        "size": args.size,
        "precision": args.precision,
        "config": SIZES[args.size],
        "input": {"batch": args.batch, "coils": args.coils, "height": args.height, "width": args.width},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "steps_timed": args.steps,
        "warmup": args.warmup,
    }
    if hasattr(os, "getloadavg"):
        result["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    models = {w: build(w, args.size, args.device) for w in ("mrbench", "fastmri")}
    result["params"] = {w: sum(p.numel() for p in m.parameters()) for w, m in models.items()}

    multi = make_input(args.batch, args.coils, args.height, args.width, args.device)
    times = time_interleaved(
        {w: make_step(w, m, multi) for w, m in models.items()}, args.device, args.warmup, args.steps
    )
    summarise(times, result, "multicoil")

    single = make_input(args.batch, 1, args.height, args.width, args.device, seed=1)
    single_models = {w: build(w, args.size, args.device) for w in ("mrbench", "fastmri")}
    steps = {w: make_step(w, m, single) for w, m in single_models.items()}
    try:
        steps["fastmri"]()
    except Exception as exc:
        result["singlecoil_fastmri_error"] = f"{type(exc).__name__}: {exc}"
        del steps["fastmri"]
    summarise(time_interleaved(steps, args.device, args.warmup, args.steps), result, "singlecoil")

    # peak memory: a fresh process per model, so neither sees the other's allocations
    peaks: dict = {}
    for w in () if args.no_memory else ("mrbench", "fastmri"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", w] + [
            f"--{k}={getattr(args, k)}" for k in ("device", "size", "batch", "coils", "height", "width", "threads")
        ]
        out = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
        peaks[w] = round(out["peak_mib"], 1)
        how = out.get("how", "torch.cuda.max_memory_allocated")
    if peaks:
        peaks["method"] = f"growth over 3 training steps from a fresh model ({how}), one process per model"
        result["multicoil_peak_memory_mib"] = peaks
    if hasattr(os, "getloadavg"):
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
