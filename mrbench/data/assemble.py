"""From a data configuration to the tasks every method of an experiment sees.

This is where the fair-comparison rules of docs/design.md §5 are made concrete:

* seen tasks = contexts (contrast × mask × acceleration) of ``data.tasks``;
* training volumes of the ``data.scarce`` contrasts are cut to the scarcity
  level, keyed by contrast and ``data.split_seed`` only — never by the method or
  the run seed — so every method of an experiment trains on the same slices;
* validation uses the first ``data.val_volumes`` volumes of each task, test all;
* each unseen context gets one support set from its *train* split, chosen by
  ``split_seed`` and the context name only and shared by every method: ``eval.support``
  whole volumes (``eval.support_unit = "volumes"``, the default: 2 volumes, 48 slices
  of the built-in data) or single slices;
* each seen context gets a support set the same way from its (scarcity-cut) training
  volumes: with its validation volumes it is the held-out data on which every
  method's adaptation rule, learning rate and step count are chosen
  (:func:`mrbench.evaluation.adaptation.select_adaptation`), never on the test set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import MrbenchError
from .contexts import Context, context_grid
from .dataset import TaskData
from .index import VolumeIndex, scan, shape_key
from .scarcity import scarcity_subset, slice_list, slice_list_hash


@dataclass
class ExperimentData:
    index: VolumeIndex
    train: list[TaskData]
    val: list[TaskData]
    test: list[TaskData]
    unseen_test: list[TaskData]
    unseen_support: list[TaskData]  # support volumes; `support_slices` picks the k shots
    support_slices: dict[str, list[tuple[str, int]]]  # unseen context name -> (file, slice)
    scarce: list[bool]  # per seen task
    seen_support_slices: dict[str, list[tuple[str, int]]] = None  # seen task name -> (file, slice)

    def slice_lists(self) -> dict[str, dict]:
        """Per training task: number of slices and the SHA-256 of the exact slice list."""
        out = {}
        for t in self.train:
            sl = slice_list(t.volumes)
            out[t.name] = {"slices": len(sl), "volumes": len(t.volumes), "sha256": slice_list_hash(sl)}
        return out


def seen_contexts(data_cfg) -> list[Context]:
    return context_grid(data_cfg.tasks, data_cfg.mask, data_cfg.acceleration, data_cfg.center_fraction)


def unseen_contexts(data_cfg) -> list[Context]:
    out = []
    for u in data_cfg.unseen:
        out.append(
            Context(
                str(u["contrast"]),
                str(u.get("mask", data_cfg.mask[0])),
                float(u.get("acceleration", data_cfg.acceleration[0])),
                data_cfg.center_fraction,
            )
        )
    return out


def assemble(data_cfg, scarcity: int, support: int = 2, unit: str = "volumes") -> ExperimentData:
    index = scan(data_cfg.root)
    index.require_splits()
    seen = seen_contexts(data_cfg)
    train, val, test, scarce = [], [], [], []
    seen_support: dict[str, list[tuple[str, int]]] = {}
    for ctx in seen:
        vols = index.select("train", ctx.contrast)
        is_scarce = ctx.contrast in data_cfg.scarce
        if is_scarce:
            vols = scarcity_subset(vols, scarcity, data_cfg.split_seed, ctx.contrast)
        train.append(TaskData(ctx.name, ctx, tuple(vols)))
        seen_support[ctx.name] = choose_support(vols, support, data_cfg.split_seed, ctx.name, unit)
        scarce.append(is_scarce)
        v = index.select("val", ctx.contrast)
        val.append(TaskData(ctx.name, ctx, tuple(v[: data_cfg.val_volumes] if data_cfg.val_volumes else v)))
        test.append(TaskData(ctx.name, ctx, tuple(index.select("test", ctx.contrast))))
    unseen_test, unseen_support, support_slices = [], [], {}
    seen_names = {c.name for c in seen}
    for ctx in unseen_contexts(data_cfg):
        if ctx.name in seen_names:
            raise MrbenchError(f"data.unseen: {ctx.name} is also a seen context")
        unseen_test.append(TaskData(ctx.name, ctx, tuple(index.select("test", ctx.contrast))))
        pool = index.select("train", ctx.contrast)
        unseen_support.append(TaskData(ctx.name, ctx, tuple(pool)))
        support_slices[ctx.name] = choose_support(pool, support, data_cfg.split_seed, ctx.name, unit)
    return ExperimentData(index, train, val, test, unseen_test, unseen_support, support_slices, scarce, seen_support)


def choose_support(volumes, k: int, seed: int, name: str, unit: str = "slices") -> list[tuple[str, int]]:
    """``k`` whole volumes (every slice of each) or ``k`` slices of the pool (fewer if the pool
    is smaller), chosen by (split seed, context) only: the same for every method."""
    digest = hashlib.sha256(f"support|{seed}|{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    if len({shape_key(v) for v in volumes}) > 1:  # one size, so the support set stacks (chosen alike for all)
        ordered = sorted(volumes, key=lambda v: v.name)
        first = shape_key(ordered[int(rng.integers(len(ordered)))])
        volumes = [v for v in volumes if shape_key(v) == first]
    if unit == "volumes":
        ordered = sorted(volumes, key=lambda v: v.name)
        pick = rng.choice(len(ordered), size=min(k, len(ordered)), replace=False)
        return slice_list([ordered[i] for i in pick])
    all_slices = slice_list(volumes)
    pick = rng.choice(len(all_slices), size=min(k, len(all_slices)), replace=False)
    return sorted(all_slices[i] for i in pick)
