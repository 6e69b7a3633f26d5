"""The interface every training loss implements (docs/design.md §11).

A loss sees what a self-supervised method may see — the measured k-space, the mask and a way
to run the network — and, only if it is the supervised one, the fully-sampled target::

    loss(run, batch) -> (B,) per-sample losses

``run(sample)`` is the network on a :class:`~mrbench.data.dataset.Sample` (possibly with
other k-space and mask, e.g. an SSDU split or a transformed image's measurements) and returns
its complex full-size (B, H, W) image. Per-sample values keep the multi-task weightings
working (they average per task). Every value is divided by the sample's volume maximum, as
the supervised L1 is, so losses are comparable across datasets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

import torch

from ..data.dataset import Sample
from ..models.outputs import magnitude
from ..physics import MRIOperator

Run = Callable[[Sample], torch.Tensor]


class Loss:
    name: ClassVar[str] = "base"
    options: ClassVar[dict[str, type]] = {}
    supervised: ClassVar[bool] = False  # reads batch.target

    def __init__(self, opts=None):
        self.opts = opts  # the [loss] section (the keys the losses declare in ``options``)
        self.contexts: list = []  # the method's seen tasks' contexts, by batch.task (set by the method)
        self.adapting = None  # the context being adapted to, whatever batch.task says (adapting_to)

    @contextlib.contextmanager
    def adapting_to(self, ctx):
        """While adapting to ``ctx`` every sample's acquisition is ``ctx``'s (a support set's
        task index does not index the seen tasks)."""
        before, self.adapting = self.adapting, ctx
        try:
            yield
        finally:
            self.adapting = before

    def sample_contexts(self, batch: Sample) -> list:
        """Each sample's context (mask kind, acceleration), for losses that need the sampling
        distribution; None where unknown."""
        if self.adapting is not None:
            return [self.adapting] * batch.kspace.shape[0]
        return [self.contexts[int(t)] if int(t) < len(self.contexts) else None for t in batch.task]

    def __call__(self, run: Run, batch: Sample) -> torch.Tensor:
        raise NotImplementedError

    def infer(self, run: Run, batch: Sample) -> torch.Tensor:
        """The complex image at inference: the network on all the measurements (a loss that
        trains on parts of them may average over parts instead, e.g. Noise2Inverse)."""
        return run(batch)

    def reconstruct(self, run: Run, batch: Sample) -> torch.Tensor:
        """What is scored: :meth:`infer`'s magnitude, centre-cropped to the targets."""
        return magnitude(self.infer(run, batch), batch)


def l1_per_sample(pred: torch.Tensor, batch: Sample) -> torch.Tensor:
    """L1 between magnitude images, divided by each volume's maximum (scale-free across datasets)."""
    err = (pred - batch.target).abs().mean(dim=(-2, -1))
    return err / batch.max_value.to(err.dtype)


def operator(batch: Sample, mask: torch.Tensor | None = None) -> MRIOperator:
    """The single-coil forward operator A = M F of a batch (``mask`` replaces the batch's)."""
    if batch.kspace.shape[1] != 1:
        raise ValueError("self-supervised losses need single-coil data (A without coil sensitivities)")
    return MRIOperator(batch.mask if mask is None else mask)


def with_measurements(batch: Sample, kspace: torch.Tensor, mask: torch.Tensor) -> Sample:
    """``batch`` with other measured k-space and mask (what the network is then run on)."""
    return batch._replace(kspace=kspace.to(batch.kspace.dtype), mask=mask.to(batch.mask.dtype))


def kspace_l1(residual: torch.Tensor, weight: torch.Tensor, batch: Sample) -> torch.Tensor:
    """Per-sample mean |residual| over the k-space points where ``weight`` > 0 (weighted by it),
    divided by the volume maximum: the k-space counterpart of the supervised L1."""
    w = weight.expand_as(residual).to(residual.real.dtype)
    num = (residual.abs() * w).flatten(1).sum(1)
    den = (w > 0).flatten(1).sum(1).clamp_min(1)
    return num / den / batch.max_value.to(num.dtype)


def image_l1(a: torch.Tensor, b: torch.Tensor, batch: Sample) -> torch.Tensor:
    """Per-sample mean |a − b| of two complex (B, H, W) images over the volume maximum."""
    return (a - b).abs().flatten(1).mean(1) / batch.max_value.to(a.real.dtype)


def measurement_consistency(x: torch.Tensor, batch: Sample) -> torch.Tensor:
    """‖A x − y‖₁ per sample, on the measured points."""
    return kspace_l1(operator(batch).A(x) - batch.kspace, batch.mask, batch)
