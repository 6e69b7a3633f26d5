"""Training regimes, looked up by name. Adding one is one file and one line here."""

from __future__ import annotations

import torch

from ..registry import Registry
from .base import Method, Phase, StepResult
from .conditioned import Conditioned
from .joint import Joint
from .kmmaml import KMMAML
from .maml import MAML
from .metadrop import MetaDrop
from .mtl import MTL
from .stl import STL
from .transfer import Transfer
from .zero_filled import ZeroFilled

METHODS: Registry[type[Method]] = Registry(
    "method", {cls.name: cls for cls in (ZeroFilled, STL, Joint, Transfer, MTL, MAML, MetaDrop, KMMAML, Conditioned)}
)


def build_method(cfg, data, device: torch.device) -> Method:
    """The run's method on ``data`` (an :class:`~mrbench.data.assemble.ExperimentData`): seeded
    by ``train.seed``, given its backbone factory and its loss (``train.loss``), on ``device``."""
    torch.manual_seed(cfg.train.seed)
    method = METHODS[cfg.method].from_config(cfg, data.train, data.scarce)
    method.models.to(device)
    return method


__all__ = ["METHODS", "Method", "Phase", "StepResult", "build_method"]
