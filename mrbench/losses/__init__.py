"""Training losses and their registry (docs/design.md §11): supervised, measurement
consistency and the self-supervised losses of deepinv's MRI benchmark. Adding one is its file
plus one line here; ``train.loss`` picks it, its options live on its class."""

from __future__ import annotations

from ..errors import MrbenchError
from ..registry import Registry
from .base import Loss
from .equivariant import EquivariantImaging, MultiOperator, MultiOperatorEquivariant
from .mc import MeasurementConsistency
from .mixed import MixedSupervision
from .ssdu import SSDU, Noise2Inverse, WeightedSSDU
from .supervised import Supervised

LOSSES: Registry[type[Loss]] = Registry(
    "loss",
    {
        "sup": Supervised,
        "mc": MeasurementConsistency,
        "ssdu": SSDU,
        "noise2inverse": Noise2Inverse,
        "weighted-ssdu": WeightedSSDU,
        "ei": EquivariantImaging,
        "moi": MultiOperator,
        "mo-ei": MultiOperatorEquivariant,
    },
)


def self_supervised(cfg) -> bool:
    """Whether some training volumes may lack a target: the run's loss never reads one, or some
    tasks train self-supervised (``data.self_supervised``); those volumes must be single-coil
    (the losses recompute measurements with A = M F)."""
    return not LOSSES[cfg.train.loss].supervised or bool(cfg.data.self_supervised)


def build_loss(cfg) -> Loss:
    """``train.loss``, or with ``data.self_supervised`` the mixed supervision of
    :mod:`mrbench.losses.mixed` (those tasks with ``train.ssl_loss``)."""
    name = cfg.train.loss
    if name not in LOSSES:
        raise MrbenchError(f"train.loss: unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    if cfg.data.self_supervised:
        parts = LOSSES[name](cfg.loss), LOSSES[cfg.train.ssl_loss](cfg.loss)
        return MixedSupervision(*parts, cfg.data.self_supervised, cfg.train.ssl_weight)
    return LOSSES[name](cfg.loss)


__all__ = ["LOSSES", "Loss", "build_loss", "self_supervised"]
