"""Training-step throughput and parameter count of mtl-varnet block structures vs a plain VarNet.

    .venv/bin/python benchmarks/bench_mtl.py [--device cpu|cuda] [--tasks 2] [--cascades 8]
        [--batch 4] [--size 128] [--steps 4] [--warmup 1] [--threads N]

Each structure (all-shared ``I…``, split ``IIV…``, shared-encoder ``IIY…``,
attention ``IIW…`` and a mixed one) is built at the demo sizes
(``mrbench.models.SIZES["demo"]``: 8 chans, 3 pools) with ``--cascades``
cascades and ``--tasks`` tasks; the reference is a plain ``VarNet`` of the
same depth. One training step = forward on a single-coil batch whose samples
alternate between the tasks (so every task-specific part runs) + L1 loss +
backward + Adam step. Reported per structure: the median seconds per step
over ``--steps`` timed steps after ``--warmup`` untimed ones (models
interleaved step by step, so load spikes on a shared machine hit all alike),
steps/s, the ratio to the plain VarNet, and the parameter count split into
shared and task-specific parts (``task_specific_per_task`` × tasks = the
cost of multi-tasking; the shared part equals the plain VarNet's regulariser
size for ``I`` cascades).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrbench.models import SIZES, VarNet
from mrbench.models.mtl_varnet import MTLVarNet


def make_batch(batch: int, size: int, tasks: int, device: str):
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(batch, 1, size, size, dtype=torch.complex64)
    for b in range(batch):
        for _ in range(5):
            c = torch.rand(2, generator=g) - 0.5
            img[b, 0] += torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / 0.05)
    full = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    target = img[:, 0].abs()
    cols = torch.zeros(size, dtype=torch.bool)
    cols[::4] = True
    acs = max(2, round(0.08 * size))
    cols[(size - acs + 1) // 2 : (size - acs + 1) // 2 + acs] = True
    mask = cols.view(1, 1, 1, size).expand(batch, 1, size, size).float().contiguous()
    return dict(
        kspace=(full * mask).to(device),
        mask=mask.to(device),
        nlf=torch.full((batch,), acs, device=device),
        task=(torch.arange(batch) % tasks).to(device),
        target=target.to(device),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--cascades", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.cascades
    demo = {k: v for k, v in SIZES["demo"].items() if k != "cascades"}
    structures = {
        "varnet": None,
        "I" * n: "I" * n,
        "IIV" + "V" * (n - 3): "II" + "V" * (n - 2),
        "IIY" + "Y" * (n - 3): "II" + "Y" * (n - 2),
        "IIW" + "W" * (n - 3): "II" + "W" * (n - 2),
        "mixed": ("IIVYW" * n)[:n],
    }
    torch.manual_seed(0)
    models, opts = {}, {}
    for name, blocks in structures.items():
        m = VarNet(cascades=n, **demo) if blocks is None else MTLVarNet(args.tasks, blocks, **demo)
        models[name] = m.to(args.device)
        opts[name] = torch.optim.Adam(m.parameters(), lr=1e-4)
    batch = make_batch(args.batch, args.size, args.tasks, args.device)

    def step(name: str) -> float:
        m, opt = models[name], opts[name]
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if isinstance(m, MTLVarNet):
            out = m(batch["kspace"], batch["mask"], batch["nlf"], batch["task"])
        else:
            out = m(batch["kspace"], batch["mask"], batch["nlf"])
        (out.abs() - batch["target"]).abs().mean().backward()
        opt.step()
        sync()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for rep in range(args.warmup + args.steps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            dt = step(name)
            if rep >= args.warmup:
                times[name].append(dt)

    base_t = statistics.median(times["varnet"])
    base_p = sum(p.numel() for p in models["varnet"].parameters())
    results = {}
    for name, blocks in structures.items():
        m = models[name]
        total = sum(p.numel() for p in m.parameters())
        med = statistics.median(times[name])
        row = {
            "blocks": blocks or "plain VarNet",
            "parameters": total,
            "parameters_vs_varnet": round(total / base_p, 3),
            "s_per_step": round(med, 4),
            "steps_per_s": round(1 / med, 3),
            "time_vs_varnet": round(med / base_t, 3),
        }
        if blocks is not None:
            per_task = sum(p.numel() for p in m.task_parameters(0))
            row["task_specific_per_task"] = per_task
            row["task_specific_total"] = sum(sum(p.numel() for p in m.task_parameters(t)) for t in range(args.tasks))
            row["shared_regulariser"] = sum(p.numel() for p in m.shared_parameters())
        results[name] = row
    print(
        json.dumps(
            {
                "benchmark": "mtl-varnet block structures, training step (fwd+L1+bwd+Adam)",
                "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "loadavg": os.getloadavg(),
                "tasks": args.tasks,
                "cascades": n,
                "batch": args.batch,
                "size": [args.size, args.size],
                "coils": 1,
                "sizes": demo,
                "steps": args.steps,
                "warmup": args.warmup,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
