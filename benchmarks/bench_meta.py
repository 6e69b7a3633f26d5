"""MAML meta-step time and peak memory: first- vs second-order, 1 and 3 inner steps.

    .venv/bin/python benchmarks/bench_meta.py [--device auto|cpu|cuda] [--size 128] [--chans 8]
        [--pools 3] [--support 4] [--query 4] [--tasks 4] [--steps 3] [--warmup 1] [--threads 1]

``kmmaml`` times KM-MAML's own meta-step the same way (its km-unet of the same
base size; the inner loop adapts the hypernetworks only; mrbench only — torchopt
and higher have no kernel-modulation counterpart to compare with).

One meta-step is exactly what the engine runs for method ``maml``: the
method's own custom step (:meth:`mrbench.methods.maml.MAML.step`, i.e.
:func:`mrbench.methods.meta.inner_loop` with ``torch.func.functional_call``)
over ``--tasks`` tasks, each with a ``--support``-slice support batch and a
``--query``-slice query batch, on a ``unet`` backbone (``--chans`` channels,
``--pools`` pools; single-coil ``--size``² k-space, equispaced 4× mask), then
gradient clipping and the Adam step. The batches are pre-made, so data loading
is not timed. Reported per (order, inner steps): the median seconds per
meta-step over ``--steps`` timed steps after ``--warmup`` untimed ones, and the
peak memory of the step — on CUDA ``torch.cuda.max_memory_allocated`` above
what is allocated before the first step; on CPU the growth of the process's
``ru_maxrss`` (each configuration runs in its own subprocess, so one
configuration's peak does not hide another's). ``ratio_second_over_first``
divides order 2 by order 1 at the same number of inner steps (target ≤ 3×).

``torchopt`` and ``higher`` are timed on the same step when importable —
torchopt's functional API (``torchopt.sgd``: ``init`` / ``update`` /
``apply_updates`` over a tuple of parameters, evaluated with
``torch.func.functional_call``) and ``higher.innerloop_ctx`` (differentiable
SGD), the same inner learning rate and order; otherwise they are reported as
``"not installed"``. They are benchmark-only: ``make bench`` installs them into
the venv (``pip install -c constraints.txt torchopt higher``); mrbench itself
never imports them.

``--rounds`` (default 3) repeats every configuration for every implementation,
back to back in a rotated order, and reports the median over rounds
(``mrbench_over_fastest_other`` < 1 means mrbench's step is the fastest): on a
shared 2-core VM single passes disagreed by ±20 %. ``interleaved_one_process_seconds``
times the MAML implementations turn by turn inside one process (``--pairs``
rounds, :func:`interleaved`): the fairest time comparison, since process-to-process
variance drops out; its ``paired_ratio_mrbench_over`` gives, per library, the
median of the per-round ratios mrbench / library with a 95 % bootstrap interval.
``no_slower_than_fastest_other`` reads the target from those intervals: ``met`` where mrbench's ratio
to the fastest library is below 1 or its interval contains 1 (no slower within
what the machine can resolve), ``missed`` where the whole interval is above 1.

``vmap`` is mrbench's own step with ``meta.vmap = true``: the T tasks' inner loops run as
one vectorised call (:func:`mrbench.methods.meta.vmap_query_losses`, ``torch.func.vmap`` over
``torch.func.grad``) instead of the per-task Python loop. Reported per configuration:
``vmap_results`` (seconds per step, as ``results``), and in the interleaved timings
``vmap_speedup_over_loop`` (loop / vmap, paired, with its 95 % interval) and
``paired_ratio_vmap_over`` each library; ``vmap`` reads issue 15's target from them
(≥ 1.5× the loop, at ``--tasks 4``, the default). The meta-gradients are equal
(tests/test_meta_vmap.py).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrbench.config import load_config
from mrbench.data.contexts import context_grid
from mrbench.data.dataset import Sample, TaskData
from mrbench.methods.base import l1_per_sample, reconstruct
from mrbench.methods.kmmaml import KMMAML
from mrbench.methods.maml import MAML
from mrbench.models import UNetRecon

CONFIGS = [(1, 1), (2, 1), (1, 3), (2, 3)]  # (order, inner steps)
INNER_LR = 1e-2


def bootstrap_ci(values: np.ndarray, seed: int = 0, statistic=np.mean) -> tuple[float, float]:
    """95 % percentile bootstrap CI of ``statistic`` (default the mean; NaNs for no values,
    the statistic itself for fewer than 2 values or no spread)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        v = float(statistic(values)) if len(values) else float("nan")
        return (v, v) if len(values) else (float("nan"), float("nan"))
    from scipy.stats import bootstrap

    res = bootstrap(
        (values,),
        statistic,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def make_batch(n: int, size: int, seed: int, device: torch.device) -> Sample:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 1, size, size, generator=g, dtype=torch.complex64)
    mask = torch.zeros(n, 1, size, size)
    mask[..., ::4] = 1
    c = max(1, round(0.08 * size))
    mask[..., size // 2 - c // 2 : size // 2 - c // 2 + c] = 1
    target = torch.rand(n, size, size, generator=g)
    s = Sample(
        k * mask,
        mask,
        target,
        target,
        torch.zeros(n, dtype=torch.long),
        ["x"] * n,
        torch.zeros(n),
        torch.ones(n),
        torch.full((n,), c),
    )
    return Sample(*(v.to(device) if torch.is_tensor(v) else v for v in s))


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10  # bytes on macOS, KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, device: torch.device, warmup: int, steps: int) -> dict:
    """Median seconds of ``step()`` and the peak memory above the state before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_mb()
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = rss_mb() - base
    return {"seconds_per_step": round(statistics.median(times), 4), "peak_memory_mb": round(peak, 1)}


def run_one(args, order: int, inner: int, impl: str, build_only: bool = False):
    device = torch.device(args.device)
    torch.manual_seed(0)
    vmap = impl == "vmap"  # mrbench's own step with meta.vmap: one vectorised inner loop over the tasks
    if vmap:
        impl = "mrbench"
    cfg = load_config(
        None,
        [
            "model.backbone=unet",
            f"model.chans={args.chans}",
            f"model.pools={args.pools}",
            f"meta.order={order}",
            f"meta.inner_steps={inner}",
            f"meta.inner_lr={INNER_LR}",
            f"meta.support={args.support}",
            f"meta.query={args.query}",
            f"meta.tasks_per_batch={args.tasks}",
            f"meta.vmap={str(vmap).lower()}",
        ],
        method="maml",
    )
    contexts = context_grid([f"C{i}" for i in range(args.tasks)], ["equispaced"], [4.0])
    tasks = [TaskData(c.name, c, ()) for c in contexts]
    if impl == "kmmaml":  # KM-MAML's own step: the km-unet, inner loop on the hypernetworks only
        cfg.model.backbone = "km-unet"
        method = KMMAML.from_config(cfg, tasks, [False] * args.tasks)
        impl = "mrbench"
    else:
        method = MAML.from_config(cfg, tasks, [False] * args.tasks, lambda: UNetRecon(args.chans, args.pools))
    method.models.to(device).train()
    batches = {
        (t, n): make_batch(n, args.size, 10 * t + i, device)
        for t in range(args.tasks)
        for i, n in enumerate((args.support, args.query))
    }

    def source(n, task=None):
        return batches[(task, n)]

    net = method.models["net"]
    params = params_all = list(net.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)

    if impl == "mrbench":

        def meta_step():
            opt.zero_grad(set_to_none=True)
            method.step(source)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    elif impl == "torchopt":  # pragma: no cover - only where torchopt is installed
        import torchopt

        from mrbench.methods.meta import functional_reconstruct

        names = [n for n, _ in net.named_parameters()]
        buffers = dict(net.named_buffers())
        inner_sgd = torchopt.sgd(lr=INNER_LR)  # torchopt's functional API: init / update / apply_updates

        def loss_at(params, batch):
            out = functional_reconstruct(net, {**buffers, **dict(zip(names, params))}, batch)
            return l1_per_sample(out, batch).mean()

        def meta_step():
            opt.zero_grad(set_to_none=True)
            for t in range(args.tasks):
                params = tuple(net.parameters())
                state = inner_sgd.init(params)
                for _ in range(inner):
                    grads = torch.autograd.grad(
                        loss_at(params, source(args.support, t)), params, create_graph=order == 2
                    )
                    updates, state = inner_sgd.update(grads, state, inplace=False)
                    params = torchopt.apply_updates(params, updates, inplace=False)
                (loss_at(params, source(args.query, t)) / args.tasks).backward()
            torch.nn.utils.clip_grad_norm_(params_all, 1.0)
            opt.step()
    elif impl == "higher":  # pragma: no cover - only where higher is installed
        import higher

        def meta_step():
            opt.zero_grad(set_to_none=True)
            inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
            for t in range(args.tasks):
                with higher.innerloop_ctx(
                    net, inner_opt, track_higher_grads=order == 2, copy_initial_weights=False
                ) as (fnet, diffopt):
                    for _ in range(inner):
                        s = source(args.support, t)
                        diffopt.step(l1_per_sample(reconstruct(fnet, s), s).mean())
                    q = source(args.query, t)
                    (l1_per_sample(reconstruct(fnet, q), q).mean() / args.tasks).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    else:
        raise ValueError(impl)
    if build_only:
        return meta_step
    return measure(meta_step, device, args.warmup, args.steps)


def child(args) -> None:
    order, inner, impl = args.one.split(",")
    torch.set_num_threads(args.threads)
    if impl == "interleaved":
        print(json.dumps(interleaved(args, int(order), int(inner))))
        return
    print(json.dumps(run_one(args, int(order), int(inner), impl)))


def interleaved(args, order: int, inner: int) -> dict:
    """All MAML implementations built in one process and timed turn by turn (the fairest
    time comparison on a noisy machine: same process, same memory, same moment).

    ``--pairs`` rounds; in each, every implementation takes one meta-step, in an order
    rotated from round to round (each follows each other equally often). Per other
    library, the round's ratio ``mrbench / library`` is a paired measurement — both
    steps ran seconds apart — so machine-wide drifts (this VM's speed moved by 30 %
    within minutes) cancel. Reported: the median seconds per implementation, and per
    library the median of the paired ratios with a 95 % bootstrap interval of that
    median (the reports' percentile bootstrap, :func:`bootstrap_ci` below).
    """
    device = torch.device(args.device)
    steps = {
        impl: run_one(args, order, inner, impl, build_only=True)
        for impl in ("mrbench", "vmap", "torchopt", "higher")
        if impl in ("mrbench", "vmap") or available(impl)
    }
    times: dict = {impl: [] for impl in steps}
    order_ = list(steps)
    for i in range(args.warmup + args.pairs):
        for impl in order_[i % len(order_) :] + order_[: i % len(order_)]:
            step = steps[impl]
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - t0)
    out: dict = {impl: round(statistics.median(v), 4) for impl, v in times.items()}

    def paired(num: str, den: str) -> dict:
        r = [a / b for a, b in zip(times[num], times[den])]
        lo, hi = bootstrap_ci(r, statistic=np.median)
        return {"median": round(statistics.median(r), 3), "ci95": [round(lo, 3), round(hi, 3)]}

    libs = [impl for impl in order_ if impl not in ("mrbench", "vmap")]
    out["paired_ratio_mrbench_over"] = {lib: paired("mrbench", lib) for lib in libs}
    # meta.vmap: its speed-up over the per-task loop (loop / vmap, > 1 = faster) and its time
    # over each library's (< 1 = faster)
    out["vmap_speedup_over_loop"] = paired("mrbench", "vmap")
    out["paired_ratio_vmap_over"] = {lib: paired("vmap", lib) for lib in libs}
    out["pairs"] = args.pairs
    return out


def spawn(args, order: int, inner: int, impl: str) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{order},{inner},{impl}"]
    for k in ("device", "size", "chans", "pools", "support", "query", "tasks", "steps", "warmup", "threads", "pairs"):
        cmd += [f"--{k}", str(getattr(args, k))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _combine(values: list[dict]) -> dict:
    """Median seconds over rounds, largest peak memory; the first error if every round failed."""
    ok = [v for v in values if "seconds_per_step" in v]
    if not ok:
        return values[0]
    return {
        "seconds_per_step": round(statistics.median(v["seconds_per_step"] for v in ok), 4),
        "peak_memory_mb": max(v["peak_memory_mb"] for v in ok),
        "rounds": [v["seconds_per_step"] for v in ok],
    }


def available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--chans", type=int, default=8)
    p.add_argument("--pools", type=int, default=3)
    p.add_argument("--support", type=int, default=4)
    p.add_argument("--query", type=int, default=4)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    # one thread by default: on a small shared machine two threads made the timings erratic
    # (a 2-core box under load gave 4-30 s per step, against 0.7-1.4 s with one thread)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the implementations")
    p.add_argument("--pairs", type=int, default=12, help="paired turn-by-turn rounds in one process (interleaved)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one:
        child(args)
        return
    t0 = time.perf_counter()
    impls = ["mrbench", "vmap", "kmmaml"] + [lib for lib in ("torchopt", "higher") if available(lib)]
    # Rounds: every implementation of one configuration runs back to back, in a rotated
    # order each round, so load drifts on a shared machine hit all of them alike; the
    # reported time is the median over rounds (memory: the largest peak).
    runs: dict = {impl: {f"order{o}_k{k}": [] for o, k in CONFIGS} for impl in impls}
    for r in range(args.rounds):
        for order, inner in CONFIGS:
            for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
                runs[impl][f"order{order}_k{inner}"].append(spawn(args, order, inner, impl))
    results: dict = {impl: {key: _combine(vals) for key, vals in by.items()} for impl, by in runs.items()}
    results["mrbench"] = results.pop("mrbench")
    for lib in ("torchopt", "higher"):
        results.setdefault(lib, "not installed")
    together = {f"order{o}_k{k}": spawn(args, o, k, "interleaved") for o, k in CONFIGS}
    fastest_other = {}
    for key in runs["mrbench"]:
        others = [
            results[lib][key]["seconds_per_step"]
            for lib in ("torchopt", "higher")
            if isinstance(results[lib], dict) and "seconds_per_step" in results[lib][key]
        ]
        if others and "seconds_per_step" in results["mrbench"][key]:
            fastest_other[key] = round(results["mrbench"][key]["seconds_per_step"] / min(others), 3)
    verdict = {}
    for key, one in together.items():
        libs = one.get("paired_ratio_mrbench_over", {})
        if libs:
            fastest = min(libs, key=lambda lib: one[lib])
            lo = one["paired_ratio_mrbench_over"][fastest]["ci95"][0]
            verdict[key] = {"fastest_other": fastest, "target": "met" if lo <= 1.0 else "missed"}
    # issue 15's vmap target: ≥ 1.5× the per-task loop, and no slower than the fastest library
    vmap_target = {}
    for key, one in together.items():
        if "vmap_speedup_over_loop" not in one:
            continue
        speedup = one["vmap_speedup_over_loop"]
        vs = one.get("paired_ratio_vmap_over", {})
        fastest = min(vs, key=lambda lib: one[lib]) if vs else None
        vmap_target[key] = {
            "tasks": args.tasks,
            "speedup_over_loop": speedup,
            "at_least_1.5x": "met"
            if speedup["ci95"][0] >= 1.5
            else ("missed" if speedup["ci95"][1] < 1.5 else "within noise"),
            "vs_fastest_library": None if fastest is None else {fastest: vs[fastest]},
        }
    ratios = {}
    for inner in (1, 3):
        a, b = results["mrbench"][f"order1_k{inner}"], results["mrbench"][f"order2_k{inner}"]
        if "seconds_per_step" in a and "seconds_per_step" in b:
            ratios[f"k{inner}"] = {
                "time": round(b["seconds_per_step"] / a["seconds_per_step"], 2),
                "memory": round(b["peak_memory_mb"] / a["peak_memory_mb"], 2) if a["peak_memory_mb"] > 0 else None,
            }
    print(
        json.dumps(
            {
                "benchmark": "maml meta-step (unet backbone)",
                "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
                "cpu": platform.processor() or platform.machine(),
                "threads": args.threads,
                "torch": torch.__version__,
                "setup": {
                    "size": args.size,
                    "chans": args.chans,
                    "pools": args.pools,
                    "support": args.support,
                    "query": args.query,
                    "tasks": args.tasks,
                    "timed_steps": args.steps,
                    "warmup": args.warmup,
                    "memory": "cuda max_memory_allocated above the pre-step allocation"
                    if args.device != "cpu"
                    else "ru_maxrss growth over the steps (own subprocess per configuration)",
                },
                "results": results["mrbench"],
                "vmap_results": results["vmap"],
                "kmmaml": results["kmmaml"],
                "torchopt": results["torchopt"],
                "higher": results["higher"],
                "ratio_second_over_first": ratios,
                "mrbench_over_fastest_other": fastest_other,
                "interleaved_one_process_seconds": together,
                "no_slower_than_fastest_other": verdict,
                "vmap": vmap_target,
                "rounds": args.rounds,
                "target_ratio_max": 3.0,
                "wall_seconds": round(time.perf_counter() - t0, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
