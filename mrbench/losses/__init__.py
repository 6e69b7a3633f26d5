"""Training losses and their registry (docs/design.md §11): supervised, measurement
consistency and the self-supervised losses of deepinv's MRI benchmark. Adding one is its file
plus one line here; ``train.loss`` picks it, its options live on its class."""

from __future__ import annotations

from ..errors import MrbenchError
from .base import Loss
from .equivariant import EquivariantImaging, MultiOperator, MultiOperatorEquivariant
from .mc import MeasurementConsistency
from .ssdu import SSDU, Noise2Inverse, WeightedSSDU
from .supervised import Supervised

LOSSES: dict[str, type[Loss]] = {
    "sup": Supervised,
    "mc": MeasurementConsistency,
    "ssdu": SSDU,
    "noise2inverse": Noise2Inverse,
    "weighted-ssdu": WeightedSSDU,
    "ei": EquivariantImaging,
    "moi": MultiOperator,
    "mo-ei": MultiOperatorEquivariant,
}


def self_supervised(cfg) -> bool:
    """Whether the run's loss never reads a target: its training and support volumes may then
    lack one (and must be single-coil: the losses recompute measurements with A = M F)."""
    return not LOSSES[cfg.train.loss].supervised


def build_loss(cfg) -> Loss:
    name = cfg.train.loss
    if name not in LOSSES:
        raise MrbenchError(f"train.loss: unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name](cfg)


__all__ = ["LOSSES", "Loss", "build_loss", "self_supervised"]
