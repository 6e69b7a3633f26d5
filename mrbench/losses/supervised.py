"""``sup``: the supervised oracle — L1 between the reconstruction's magnitude (centre-cropped)
and the fully-sampled target, over the volume maximum. What every method trained with before
the loss axis existed; the reference the self-supervised losses are judged against. For a
backbone that returns its intermediate estimates in training (``rim``: ``out.estimates``) the
loss is their average, Putzky & Welling's objective."""

from __future__ import annotations

from ..models.outputs import magnitude
from .base import Loss, l1_per_sample


class Supervised(Loss):
    name = "sup"
    supervised = True

    def __call__(self, run, batch):
        out = run(batch)
        estimates = getattr(out, "estimates", None) or [out]  # a RIM in training: every time step
        return sum(l1_per_sample(magnitude(x, batch), batch) for x in estimates) / len(estimates)
