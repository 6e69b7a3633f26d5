"""Mixed supervision: some tasks trained from their undersampled scans alone.

``data.self_supervised = ["AXFLAIR"]`` trains every sample of those tasks with
``train.ssl_loss`` (e.g. ``ei``) and every other sample with the supervised loss — the
"scarce contrast has no ground truth" regime: the abundant contrasts' targets supervise the
shared network while the scarce one contributes only its measurements. Every method gets it
the way it gets any loss (its training step, inner and outer loops and fine-tuning call the
method's loss), so multi-task weightings still see per-sample values.

A batch is split by each sample's task (its context's contrast; while adapting, the context
adapted to), each part goes through its own loss and the per-sample values are put back in
batch order. Unseen contexts are never in ``data.self_supervised`` (it names seen tasks), so
fine-tuning on a support set is supervised, as for every other run.
"""

from __future__ import annotations

import torch

from ..data.dataset import Sample, take
from .base import Loss, Run


class MixedSupervision(Loss):
    name = "mixed"
    supervised = True  # the other tasks read their targets

    def __init__(self, supervised: Loss, self_supervised: Loss, contrasts, ssl_weight: float = 1.0):
        """``contrasts``: ``data.self_supervised``; ``ssl_weight``: ``train.ssl_weight``."""
        super().__init__(supervised.opts)
        self.parts = (supervised, self_supervised)
        self.ssl_contrasts = set(contrasts)
        self.ssl_weight = float(ssl_weight)

    def _which(self, batch: Sample) -> torch.Tensor:
        """(B,) bool: the samples of self-supervised tasks."""
        ctxs = self.sample_contexts(batch)
        return torch.tensor([c is not None and c.contrast in self.ssl_contrasts for c in ctxs])

    def _split(self, batch: Sample):
        ssl = self._which(batch)
        for part, chosen in zip(self.parts, (~ssl, ssl)):
            if chosen.any():
                part.contexts, part.adapting = self.contexts, self.adapting
                yield part, chosen.nonzero().flatten()

    def _gather(self, batch: Sample, fn) -> torch.Tensor:
        out = None
        for part, idx in self._split(batch):
            values = fn(part, take(batch, idx))
            if out is None:
                out = values.new_zeros((batch.kspace.shape[0], *values.shape[1:]))
            out = out.index_copy(0, idx.to(values.device), values)
        return out

    def __call__(self, run: Run, batch: Sample) -> torch.Tensor:
        """Per-sample losses; the self-supervised samples' scaled by ``train.ssl_weight`` (at the
        demo budget, weight 1 let the EI samples pull the shared network off the supervised
        contrast too: baselines/demo/README.md)."""
        w = self.ssl_weight
        return self._gather(batch, lambda part, b: part(run, b) * (w if part is self.parts[1] else 1.0))

    def infer(self, run: Run, batch: Sample) -> torch.Tensor:
        return self._gather(batch, lambda part, b: part.infer(run, b))
