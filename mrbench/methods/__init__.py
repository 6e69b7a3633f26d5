"""Training regimes, looked up by name. Adding one is one file and one line here."""

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

__all__ = ["METHODS", "Method", "Phase", "StepResult"]
