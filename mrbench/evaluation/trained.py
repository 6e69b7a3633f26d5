"""Evaluation of a trained run: what ``mrbench run`` scores at the end of training and what
``mrbench evaluate`` re-scores from a run directory (docs/design.md §6).

Seen test contexts are scored without adaptation; unseen contexts after adapting on their
support sets (:func:`unseen_adapted`, the one unseen-context loop: the run's own evaluation and
the support curves both go through it). :func:`load_trained` is the one loader of a stored run
(its config.json, data and best checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from ..config import Config, config_from_dict
from ..data.assemble import ExperimentData, assemble, choose_support
from ..data.dataset import SliceDataset, TaskData, VolumeStore
from ..distributed import select_device
from ..engine import image_grid
from ..errors import MrbenchError
from ..losses import self_supervised
from ..methods import Method, build_method
from ..store import RunStore
from .adaptation import adapted_volumes, select_adaptation, support_batch
from .evaluate import predict_volumes, score_volumes


def evaluate(
    method: Method,
    cfg: Config,
    data: ExperimentData,
    device: torch.device,
    volumes: VolumeStore,
    *,
    contexts: str = "all",
    adapt_steps: list[int] | None = None,
    writer=None,
    previews: list | None = None,
) -> dict:
    """Seen test tasks (no adaptation) and unseen contexts after adaptation: scored at 0 steps
    and at the step count chosen on seen validation — what the tables, claims and report read —
    or, with ``eval.curve`` or explicit ``adapt_steps`` (``mrbench evaluate --adapt-steps``),
    at every step count (the diagnostic curve). The choice itself is made over all of
    ``eval.adapt_steps`` either way, and one adaptation trajectory serves every count, so the
    scores at the chosen count do not depend on the curve (issue 31: the curve was ~a third
    of a demo run's evaluation).

    ``previews``, when given, receives one middle slice of the first test volume per
    context (and per adaptation step count) for the report's reconstruction viewer."""
    curve = cfg.eval.curve or adapt_steps is not None
    adapt_steps = sorted(set([0, *(adapt_steps if adapt_steps is not None else cfg.eval.adapt_steps)]))
    for m in method.models.values():
        m.eval()
    out: dict = {
        "run": cfg.run_name,
        "method": cfg.method,
        "scarcity": cfg.scarcity,
        "seed": cfg.train.seed,
        "contexts": {},
    }
    batch = max(8, cfg.train.batch)
    train_counts = data.slice_lists()
    if contexts in ("seen", "all"):
        test = SliceDataset(data.test, train=False, store=volumes)
        for t, task in enumerate(data.test):
            vols = predict_volumes(
                method.reconstructor(t), test, t, batch=batch, device=device, max_volumes=cfg.eval.max_volumes
            )
            _log_volume(writer, f"test/{task.name}", vols)
            _keep_preview(previews, task.name, 0, vols)
            out["contexts"][task.name] = {
                "seen": True,
                "scarce": data.scarce[t],
                "context": task.context.as_dict(),
                "train_slices": train_counts[task.name]["slices"],
                "kspace_source": kspace_sources(task),
                "steps": {"0": score_volumes(vols)},
            }
    if contexts in ("unseen", "all") and data.unseen_test:
        choice = select_adaptation(method, cfg, data, device, volumes, adapt_steps, batch=batch)
        out["adaptation"] = choice
        scored = adapt_steps if curve else sorted({0, int(choice["steps"])})
        own = lambda t, task: [(None, data.support_slices[task.name])]  # the run's own support set
        for task, _, by_steps in unseen_adapted(method, cfg, data, device, volumes, choice, lambda task: scored, own):
            steps_out = {}
            for steps, vols in by_steps.items():
                steps_out[str(steps)] = score_volumes(vols)
                _keep_preview(previews, task.name, steps, vols)
                if steps == scored[-1]:
                    _log_volume(writer, f"unseen/{task.name}/steps{steps}", vols)
            out["contexts"][task.name] = {
                "seen": False,
                "scarce": False,
                "context": task.context.as_dict(),
                "train_slices": 0,
                "kspace_source": kspace_sources(task),
                "support_slices": [list(s) for s in data.support_slices[task.name]],
                "chosen_steps": choice["steps"],
                "steps": steps_out,
            }
    out["summary"] = _summary(out["contexts"])
    return out


def unseen_adapted(
    method: Method,
    cfg: Config,
    data: ExperimentData,
    device: torch.device,
    volumes: VolumeStore,
    choice: dict,
    steps_for: Callable[[TaskData], list[int] | None],
    supports_for: Callable[[int, TaskData], list[tuple]],
) -> Iterator[tuple[TaskData, object, dict]]:
    """The one unseen-context loop: for each unseen context (``steps_for(task)``: the step
    counts to score, None to skip it) and each of its support sets (``supports_for(t, task)``:
    ``(key, slice picks)`` pairs), adapt with ``choice`` (rule, lr) and predict the context's
    test volumes after every step count; yields ``(task, key, {steps: volumes})``."""
    batch = max(8, cfg.train.batch)
    test = SliceDataset(data.unseen_test, train=False, store=volumes)
    pool = SliceDataset(data.unseen_support, train=False, store=volumes, targets_optional=self_supervised(cfg))
    for t, task in enumerate(data.unseen_test):
        steps = steps_for(task)
        if steps is None:
            continue

        def predict(recon, t=t):
            return predict_volumes(recon, test, t, batch=batch, device=device, max_volumes=cfg.eval.max_volumes)

        for key, picks in supports_for(t, task):
            support = support_batch(pool, t, picks, device)
            yield task, key, adapted_volumes(method, task.context, support, choice, steps, predict)


def load_trained(path: str | os.PathLike) -> tuple[RunStore, Config, ExperimentData, Method, torch.device]:
    """A stored run as it was trained: its config.json, its data, its method with the best
    checkpoint's weights (a learned method), on the device its config names."""
    store = RunStore(path)
    if not store.config_path.exists():
        raise MrbenchError(f"{path}: not a run directory (no config.json)")
    cfg = config_from_dict(store.read_json("config.json"))
    device = select_device(cfg.train.device)
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, device)
    if method.learned:
        method.load_state_dict(store.load_checkpoint("best", map_location=device)["models"])
    return store, cfg, data, method, device


def support_curves(path: str | os.PathLike, sizes: list[int]) -> dict:
    """Each unseen context's metrics against the support-set size (docs/design.md §6): for
    every k in ``sizes`` a support set of k units (``eval.support_unit``), drawn as every
    method's is (split seed and context only), adapted with the run's own chosen rule and lr
    along its step counts, the test volumes scored after each. Stored in metrics.json as
    ``contexts[name]["support_curve"][k][steps]`` (mean metrics); the rest is kept."""
    store = RunStore(path)
    if not store.metrics_path.exists():
        raise MrbenchError(f"{path}: no metrics.json (an unfinished run); finish it with mrbench run … --resume")
    store, cfg, data, method, device = load_trained(path)
    if not data.unseen_test:
        raise MrbenchError(f"{path}: no unseen contexts (data.unseen in config.json), so no support curves")
    metrics = store.read_json("metrics.json")
    choice = metrics.get("adaptation")
    for m in method.models.values():
        m.eval()
    if not choice or choice.get("rule") in (None, "none"):
        choice = {"rule": "none", "lr": None, "steps": 0}
    entries = metrics["contexts"]

    def steps_for(task):
        entry = entries.get(task.name)
        if entry is None:
            return None
        entry["support_curve"] = {}  # this call's sizes replace an earlier curve
        return sorted(int(s) for s in entry["steps"])

    def supports_for(t, task):
        units = cfg.eval.support_unit
        return [
            (k, choose_support(data.unseen_support[t].volumes, k, cfg.data.split_seed, task.name, units)) for k in sizes
        ]

    volumes = VolumeStore.from_config(cfg.data)
    for task, k, by_steps in unseen_adapted(method, cfg, data, device, volumes, choice, steps_for, supports_for):
        entries[task.name]["support_curve"][str(k)] = {str(s): score_volumes(v)["mean"] for s, v in by_steps.items()}
    store.write_json("metrics.json", metrics)
    return metrics


def evaluate_run_dir(path: str | os.PathLike, contexts: str = "all", adapt_steps: list[int] | None = None) -> dict:
    """Re-evaluate a stored run from its config.json and best.pt; rewrite metrics.json."""
    store, cfg, data, method, device = load_trained(path)
    previews: list[dict] = []
    metrics = evaluate(
        method,
        cfg,
        data,
        device,
        VolumeStore.from_config(cfg.data),
        contexts=contexts,
        adapt_steps=adapt_steps,
        previews=previews,
    )
    if store.metrics_path.exists():
        old = store.read_json("metrics.json")
        for key in ("history", "cost"):
            if key in old:
                metrics[key] = old[key]
    store.write_json("metrics.json", metrics)
    store.write_previews(previews)
    return metrics


def kspace_sources(task) -> str:
    """Where a context's test k-space came from (``attrs["kspace_source"]`` of its volumes):
    the tables and the ledger print "simulated from magnitude" beside results (issue 33)."""
    return ", ".join(sorted({v.kspace_source for v in task.volumes} - {""}))


def _summary(contexts: dict) -> dict:
    summary = {}
    for kind, seen in (("seen", True), ("unseen", False)):
        rows = [c for c in contexts.values() if c["seen"] == seen]
        if not rows:
            continue
        summary[kind] = {}
        for steps in sorted({s for c in rows for s in c["steps"]}, key=int):
            vals = [c["steps"][steps]["mean"] for c in rows if steps in c["steps"]]
            summary[kind][steps] = {m: sum(v[m] for v in vals) / len(vals) for m in ("nmse", "psnr", "ssim")}
    return summary


def _keep_preview(previews: list | None, context: str, steps: int, vols: dict) -> None:
    if previews is None or not vols:
        return
    name = sorted(vols)[0]
    v = vols[name]
    s = v["pred"].shape[0] // 2
    previews.append(
        {
            "context": context,
            "steps": steps,
            "volume": name,
            "slice": s,
            **{k: v[k][s].numpy() for k in ("target", "zero_filled", "pred")},
        }
    )


def _log_volume(writer, tag: str, vols: dict) -> None:
    """One image per slice of the first volume, so TensorBoard's step slider scrolls through it."""
    if writer is None or not vols:
        return

    v = vols[sorted(vols)[0]]
    for s in range(v["pred"].shape[0]):
        writer.add_image(tag, image_grid(v["pred"][s], v["target"][s], v["zero_filled"][s]), s, dataformats="HW")
