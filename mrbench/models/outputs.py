"""What a backbone's output is: the one interface every backbone shares and the one place its
complex image becomes what is scored (docs/design.md §4).

Backbones take ``(masked k-space, mask, num_low_frequencies[, task])`` and return the complex
full-size image; :func:`magnitude` centre-crops its magnitude to the targets (fastMRI's
convention). Losses, methods and evaluation all reach backbones through these functions.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.dataset import Sample
from ..fourier import center_crop


def backbone_args(model: nn.Module, batch: Sample, task: torch.Tensor | None = None) -> tuple:
    """The positional arguments of the common backbone interface for a batch (plus the
    task indices for task-aware backbones)."""
    args = (batch.kspace, batch.mask, batch.num_low_frequencies)
    if getattr(model, "task_aware", False):
        args = (*args, batch.task if task is None else task)
    return args


def image(model: nn.Module, batch: Sample, task: torch.Tensor | None = None) -> torch.Tensor:
    """A backbone's complex (B, H, W) full-size image of a batch.

    Task-aware backbones (``task_aware = True``, e.g. ``mtl-varnet``) also get the
    task index of every sample (``task``, default ``batch.task``) to route it
    through that task's parameters.
    """
    return model(*backbone_args(model, batch, task))


def magnitude(out: torch.Tensor, batch: Sample) -> torch.Tensor:
    """The one place a backbone's complex image becomes what is scored: its magnitude,
    centre-cropped to the targets (fastMRI's convention)."""
    return center_crop(out.abs(), tuple(batch.target.shape[-2:]))


def reconstruct(model: nn.Module, batch: Sample, task: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, h, w) magnitude reconstruction of a batch (:func:`image`, :func:`magnitude`)."""
    return magnitude(image(model, batch, task), batch)
