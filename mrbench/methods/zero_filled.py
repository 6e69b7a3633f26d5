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

    def adapt_path(self, ctx, support, step_counts, lr, rule="finetune"):
        for k in sorted(set(step_counts)):
            yield k, (lambda batch: batch.zero_filled)
