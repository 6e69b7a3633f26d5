"""Scoring a reconstructor on a task's volumes, the fastMRI way.

A *reconstructor* is any callable ``batch -> (B, h, w)`` magnitude images
already cropped to the targets (see :func:`mrbench.models.outputs.reconstruct`).
Slices are predicted in batches, re-assembled per volume, and each volume is
scored with :func:`~mrbench.evaluation.metrics.volume_metrics` using the
volume's own maximum as the data range (fastMRI's evaluate.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from ..data.dataset import Sample, SliceDataset
from .metrics import volume_metrics

METRICS = ("nmse", "psnr", "ssim")


def batches(dataset: SliceDataset, indices: list[int], batch: int, device: torch.device):
    """Collated batches of up to ``batch`` consecutive items, moved to ``device``; a batch
    ends where the item size changes (volumes of several sizes), else every ``batch`` items."""
    shapes = dataset.item_shapes
    start = 0
    while start < len(indices):
        end = start + 1
        while end < len(indices) and end - start < batch and shapes[indices[end]] == shapes[indices[start]]:
            end += 1
        samples = [dataset[i] for i in indices[start:end]]
        yield to_device(torch.utils.data.default_collate(samples), device)
        start = end


def to_device(batch: Sample, device: torch.device) -> Sample:
    return Sample(*(x.to(device) if isinstance(x, torch.Tensor) else x for x in batch))


@torch.no_grad()
def predict_volumes(
    reconstructor: Callable[[Sample], torch.Tensor],
    dataset: SliceDataset,
    task: int,
    *,
    batch: int = 8,
    device: torch.device = torch.device("cpu"),
    max_volumes: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """``{file: {"pred", "target", "zero_filled"}}`` volumes (S, h, w) on the CPU."""
    items = dataset.task_items(task)
    if max_volumes:
        keep = sorted({dataset.items[i][1].name for i in items})[:max_volumes]
        items = [i for i in items if dataset.items[i][1].name in keep]
    slices: dict[str, dict[int, tuple]] = defaultdict(dict)
    for b in batches(dataset, items, batch, device):
        pred = reconstructor(b).float().cpu()
        for j, (fname, s) in enumerate(zip(b.fname, b.slice_idx.tolist())):
            slices[fname][s] = (pred[j], b.target[j].cpu(), b.zero_filled[j].cpu(), b.mask[j].cpu())
    out = {}
    for fname, by_slice in slices.items():
        order = sorted(by_slice)
        out[fname] = {
            key: torch.stack([by_slice[s][k] for s in order])
            for k, key in enumerate(("pred", "target", "zero_filled", "mask"))
        }
    return out


def score_volumes(volumes: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Per-volume metrics plus mean/std over volumes, the zero-filled means for reference,
    and the achieved acceleration of the (fixed) masks."""
    per_volume = {f: volume_metrics(v["target"], v["pred"]) for f, v in sorted(volumes.items())}
    accel = [float(v["mask"].numel() / v["mask"].sum()) for v in volumes.values()]
    zero = [volume_metrics(v["target"], v["zero_filled"]) for v in volumes.values()]
    return {
        "volumes": per_volume,
        "mean": {m: float(np.mean([r[m] for r in per_volume.values()])) for m in METRICS},
        "std": {m: float(np.std([r[m] for r in per_volume.values()])) for m in METRICS},
        "zero_filled": {m: float(np.mean([r[m] for r in zero])) for m in METRICS},
        "achieved_acceleration": float(np.mean(accel)),
    }
