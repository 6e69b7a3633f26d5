"""``mc``: measurement consistency alone, ‖A f(y) − y‖₁ (deepinv's MCLoss).

It only asks the reconstruction to agree with the points that were measured, which the
zero-filled image already does: the loss has no information about the missing k-space, so a
network trained with it learns nothing beyond zero-filled (the deepinv benchmark's MC ≈ no
learning row). With hard data consistency (``unet``, ``km-unet``) it is exactly zero."""

from __future__ import annotations

from .base import Loss, measurement_consistency


class MeasurementConsistency(Loss):
    name = "mc"

    def __call__(self, run, batch):
        return measurement_consistency(run(batch), batch)
