"""zero-filled: no learning; |F⁻¹ masked k-space| (RSS for multi-coil). The floor every table shows."""

from __future__ import annotations

from .base import Method, Phase, Reconstructor


class ZeroFilled(Method):
    name = "zero-filled"
    learned = False

    @classmethod
    def run_variant(cls, cfg) -> str:
        return "none"

    def phases(self) -> list[Phase]:
        return []

    def reconstructor(self, task: int) -> Reconstructor:
        return lambda batch: batch.zero_filled

    def adapt(self, ctx, support, steps, lr) -> Reconstructor:
        return lambda batch: batch.zero_filled
