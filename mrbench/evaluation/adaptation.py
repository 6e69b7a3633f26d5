"""Test-time adaptation: choosing each method's rule, learning rate and step count on
held-out *seen*-context data, then applying the choice to the unseen contexts
(docs/design.md §5.9).

Why choose at all: a fixed rule and rate is not the same thing for every method. SGD at
``meta.inner_lr = 1e-2`` moved a VarNet by ~2e-5 relative per step (adaptation was inert),
Adam on a 4-slice support set overfitted, and the step count that helps depends on both.
Choosing on the unseen test set would be peeking; so every method gets the same protocol:

* candidates: each rule the method offers (:meth:`~mrbench.methods.base.Method.adapt_rules`:
  ``finetune`` = Adam at each lr of ``eval.adapt_lr``; a meta-learner's own ``inner`` rule
  at its own rates) × each step count of ``eval.adapt_steps`` (one trajectory per
  candidate serves every step count);
* data: each seen context's support set — ``eval.support`` volumes (or slices) of its own
  training split, chosen like the unseen contexts' — and its *validation* volumes;
* criterion: mean validation SSIM over the seen contexts (the checkpoint rule's metric);
  ties go to fewer steps, then to the earlier candidate.

The choice and every candidate's validation scores go into ``metrics.json``
(``adaptation``); the unseen contexts are then evaluated with the chosen rule and lr at
every step count (the curve), and tables read them at the chosen step count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.dataset import Sample, SliceDataset
from ..losses import self_supervised
from .evaluate import predict_volumes, score_volumes, to_device


def support_batch(dataset: SliceDataset, task: int, wanted, device: torch.device) -> Sample:
    """One batch of the (file, slice) items ``wanted`` of ``task`` in ``dataset`` (fixed masks)."""
    wanted = set(map(tuple, wanted))
    idx = [i for i in dataset.task_items(task) if (dataset.items[i][1].name, dataset.items[i][2]) in wanted]
    return to_device(torch.utils.data.default_collate([dataset[i] for i in idx]), device)


def candidates(method, lrs) -> list[tuple[str, float | None]]:
    """(rule, lr) pairs: ``finetune`` at every lr, other rules (a meta-learner's own) once."""
    out: list[tuple[str, float | None]] = []
    for rule in method.adapt_rules():
        out += [(rule, float(lr)) for lr in lrs] if rule == "finetune" else [(rule, None)]
    return out


def fixed_choice(method, cfg, steps: list[int]) -> dict:
    """No selection (``eval.select = "fixed"``): the method's first rule, the first lr, the
    largest step count."""
    rule = method.adapt_rules()[0] if method.learned else "none"
    return {
        "selected_on": "fixed",
        "rule": rule,
        "lr": float(cfg.eval.adapt_lr[0]),
        "steps": max(steps),
        "candidates": [],
    }


def select_adaptation(method, cfg, data, device, volumes, steps: list[int], batch: int = 8) -> dict:
    """Choose (rule, lr, steps) for ``method`` on the seen contexts' validation data."""
    if not method.learned:
        return {"selected_on": "none", "rule": "none", "lr": None, "steps": 0, "candidates": []}
    if cfg.eval.select == "fixed":
        return fixed_choice(method, cfg, steps)
    val = SliceDataset(data.val, train=False, store=volumes)
    pool = SliceDataset(data.train, train=False, store=volumes, targets_optional=self_supervised(cfg))
    scores: dict[tuple, list[dict]] = {}
    cands = candidates(method, cfg.eval.adapt_lr)
    for t, task in enumerate(data.val):
        support = support_batch(pool, t, data.seen_support_slices[task.name], device)
        zero = None
        for rule, lr in cands:
            for k, recon in method.adapt_path(task.context, support, steps, lr or 0.0, rule):
                if k == 0 and zero is not None:  # 0 steps is the trained network for every rule
                    scores.setdefault((rule, lr, k), []).append(zero)
                    continue
                mean = score_volumes(predict_volumes(recon, val, t, batch=batch, device=device))["mean"]
                if k == 0:
                    zero = mean
                scores.setdefault((rule, lr, k), []).append(mean)
    rows = [
        {"rule": rule, "lr": lr, "steps": k, **{m: float(np.mean([s[m] for s in vals])) for m in ("ssim", "psnr")}}
        for (rule, lr, k), vals in scores.items()
    ]
    order = {c: i for i, c in enumerate(cands)}
    best = max(rows, key=lambda r: (round(r["ssim"], 6), -r["steps"], -order[(r["rule"], r["lr"])]))
    return {
        "selected_on": "seen-validation",
        "rule": best["rule"],
        "lr": best["lr"],
        "steps": best["steps"],
        "candidates": rows,
    }


def adapted_volumes(method, ctx, support: Sample, choice: dict, steps: list[int], predict: Callable) -> dict[int, dict]:
    """``{k: predict(reconstructor after k steps)}`` with the chosen rule and lr, one trajectory."""
    out = {}
    rule = choice["rule"] if choice["rule"] != "none" else method.adapt_rules()[0]
    for k, recon in method.adapt_path(ctx, support, steps, choice["lr"] or 0.0, rule):
        out[k] = predict(recon)
    return out
