"""Contexts: (contrast, mask kind, acceleration), the unit meta-learning adapts to.

*Seen* contexts appear in training, *unseen* ones only in evaluation
(docs/design.md §1). The centre fraction rides along as a parameter of the mask but
is not part of a context's identity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

from .masks import MaskFunc, make_mask


@dataclass(frozen=True, order=True)
class Context:
    contrast: str
    mask: str = "equispaced"
    acceleration: float = 4.0
    center_fraction: float = 0.08

    def __post_init__(self):
        make_mask(self.mask, self.acceleration, self.center_fraction)  # validates the numbers

    @property
    def name(self) -> str:
        """Stable, readable key, e.g. ``AXT2/equispaced/4x``."""
        return f"{self.contrast}/{self.mask}/{self.acceleration:g}x"

    def mask_func(self) -> MaskFunc:
        return make_mask(self.mask, self.acceleration, self.center_fraction)

    def as_dict(self) -> dict:
        return {
            "contrast": self.contrast,
            "mask": self.mask,
            "acceleration": self.acceleration,
            "center_fraction": self.center_fraction,
        }


def context_grid(
    contrasts: Iterable[str],
    masks: Iterable[str],
    accelerations: Iterable[float],
    center_fraction: float = 0.08,
) -> list[Context]:
    """All combinations, in a fixed order (contrast, mask, acceleration)."""
    return [
        Context(c, m, float(a), center_fraction)
        for c, m, a in itertools.product(contrasts, masks, accelerations)
    ]
