"""metadrop: bi-level Meta-Drop-style training over contexts (docs/design.md §5.8).

One network ``models["net"] = make_backbone()``. A step (:meth:`MetaDrop.step`):

1. draw a training task A uniformly among the seen tasks (contexts) and a
   *meta* task B ≠ A according to ``meta.meta_context`` (:func:`meta_candidates`):

   * ``other-contrast`` — B's contrast differs from A's;
   * ``other-mask`` — same contrast, different mask kind;
   * ``other-acceleration`` — same contrast and mask, different acceleration;
   * ``any`` — any other task.

   Where A has no such partner (e.g. ``other-mask`` with a single seen mask)
   B is drawn from all other tasks instead; which tasks fall back is fixed at
   construction (``MetaDrop.fallback``: the task indices, no warning).
   A single seen task is a :class:`~mrbench.errors.MrbenchError`.
2. save φ₀; one SGD step at ``meta.inner_lr`` on a batch of ``meta.support``
   slices of A gives φ̃ = φ₀ − η_in ∇L_A(φ₀) (SGD rather than Adam: the
   "one optimizer step" of the Meta-Drop notes, without optimiser state that
   the bi-level update would have to carry);
3. the meta loss on a batch of ``meta.query`` slices of B at φ̃;
4. φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇_φ̃ L_meta(φ̃) with α = ``meta.alpha``,
   η_meta = ``meta.eta_meta`` (the first-order form of the notes: the
   gradient is taken at φ̃, not through the inner step) when
   ``meta.outer = "sgd"``. With ``meta.outer = "adam"`` (the default) the
   last term is the engine's Adam step on ∇_φ̃ L_meta(φ̃) at ``train.lr``
   (schedule and clipping included), as MAML's outer loop: plain SGD at
   η_meta moved a VarNet by almost nothing within a CPU budget (the demo's
   metadrop ended 0.0 dB above zero-filled), Adam's per-parameter scaling
   makes the same update direction learn at the pace of the other methods.

With ``outer = "sgd"`` the update is written in place under ``no_grad`` and
every ``.grad`` is left ``None``, so the engine's gradient clipping and Adam
step change nothing (``train.lr``, ``train.schedule`` and ``train.grad_clip``
do not apply); with ``"adam"`` the parameters are set to φ₀ + α(φ̃ − φ₀) and
``.grad`` to the meta gradient for the engine's step. The random draws use torch's global generator (checkpointed
by the engine), the batches the engine's sampler: runs resume exactly.

Budget: ``meta.support + meta.query`` slices per step (both batches go
through forward+backward once). Test-time adaptation is the base class's
fine-tuning (Adam at ``eval.adapt_lr``), like the non-meta methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..data.contexts import Context
from ..errors import MrbenchError
from .base import Method, Phase, StepResult, l1_per_sample, reconstruct
from .meta import MetaOptions, episode_phase

RULES: dict[str, Callable[[Context, Context], bool]] = {
    "other-contrast": lambda a, b: b.contrast != a.contrast,
    "other-mask": lambda a, b: b.contrast == a.contrast and b.mask != a.mask,
    "other-acceleration": lambda a, b: (b.contrast, b.mask) == (a.contrast, a.mask) and b.acceleration != a.acceleration,
    "any": lambda a, b: True,
}


def meta_candidates(contexts: Sequence[Context], rule: str) -> tuple[list[list[int]], list[int]]:
    """For every task A: the tasks B ≠ A its meta batch may come from under ``rule``, and the
    indices of the tasks that have none under the rule (they fall back to every other task)."""
    if len(contexts) < 2:
        raise MrbenchError(
            "method metadrop needs at least two seen contexts (a meta batch comes from another one); "
            "add data.tasks, data.mask or data.acceleration"
        )
    pred = RULES[rule]
    out, fallback = [], []
    for i, a in enumerate(contexts):
        cands = [j for j, b in enumerate(contexts) if j != i and pred(a, b)]
        if not cands:
            fallback.append(i)
            cands = [j for j in range(len(contexts)) if j != i]
        out.append(cands)
    return out, fallback


def draw_pair(candidates: Sequence[Sequence[int]], generator: torch.Generator | None = None) -> tuple[int, int]:
    """(A, B): A uniform over the tasks, B uniform over A's candidates."""
    a = int(torch.randint(len(candidates), (1,), generator=generator))
    cands = candidates[a]
    b = cands[int(torch.randint(len(cands), (1,), generator=generator))]
    return a, b


def metadrop_update(
    model: nn.Module,
    train_loss: Callable[[], torch.Tensor],
    meta_loss: Callable[[], torch.Tensor],
    inner_lr: float,
    alpha: float,
    eta_meta: float | None,
) -> tuple[float, float]:
    """One Meta-Drop update of ``model``'s parameters in place; returns (L_train(φ₀), L_meta(φ̃)).

    ``eta_meta = None``: stop at φ₀ + α(φ̃ − φ₀) and leave ∇_φ̃ L_meta(φ̃) in ``.grad``
    for an outer optimiser's step.

    ``train_loss()`` / ``meta_loss()`` evaluate the loss of the training / meta
    batch with the model's *current* parameters. Leaves every ``.grad`` as it
    was (``None`` in the engine), using :func:`torch.autograd.grad`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    phi0 = [p.detach().clone() for p in params]
    with torch.enable_grad():
        lt = train_loss()
        grads = torch.autograd.grad(lt, params, allow_unused=True)
    with torch.no_grad():  # φ̃ = φ₀ − η_in ∇L_train(φ₀)
        for p, g in zip(params, grads):
            if g is not None:
                p.sub_(inner_lr * g)
    with torch.enable_grad():
        lm = meta_loss()
        meta_grads = torch.autograd.grad(lm, params, allow_unused=True)
    with torch.no_grad():  # φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇_φ̃ L_meta(φ̃)
        for p, p0, g in zip(params, phi0, meta_grads):
            new = p0 + alpha * (p - p0)
            if g is not None and eta_meta is not None:
                new = new - eta_meta * g
            p.copy_(new)
            if eta_meta is None:
                p.grad = g
    return float(lt.detach()), float(lm.detach())


@dataclass
class MetaDropOptions:
    """``[meta]`` keys of metadrop only (the module docstring has the update they enter)."""

    alpha: float = 1.0  # φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇L_meta(φ̃)
    eta_meta: float = 1e-3  # with outer = "sgd"
    outer: str = "adam"  # adam (engine's Adam at train.lr on the meta gradient) | sgd (η_meta)
    meta_context: str = "any"  # other-contrast | other-mask | other-acceleration | any

    def check(self, key):
        if not self.alpha > 0:
            raise MrbenchError(f"{key('alpha')}: must be > 0")
        if not self.eta_meta > 0:
            raise MrbenchError(f"{key('eta_meta')}: must be > 0")
        if self.meta_context not in RULES:
            raise MrbenchError(f"{key('meta_context')}: must be {', '.join(RULES)}, got {self.meta_context!r}")
        if self.outer not in ("adam", "sgd"):
            raise MrbenchError(f"{key('outer')}: must be adam or sgd, got {self.outer!r}")


class MetaDrop(Method):
    name = "metadrop"
    options = {"meta": (MetaOptions, MetaDropOptions)}

    def __init__(self, cfg, tasks, scarce, make_backbone):
        super().__init__(cfg, tasks, scarce, make_backbone)
        self.candidates, self.fallback = meta_candidates([t.context for t in self.tasks], cfg.meta.meta_context)
        self.models["net"] = make_backbone()

    def phases(self) -> list[Phase]:
        return episode_phase(self)

    def step(self, source) -> StepResult:
        m = self.cfg.meta
        net = self.models["net"]
        a, b = draw_pair(self.candidates)
        batch_a = source(m.support, task=a)
        batch_b = source(m.query, task=b)

        def loss(batch):
            return lambda: l1_per_sample(reconstruct(net, batch), batch).mean()

        # sgd: in place, .grad left None, the engine's step changes nothing; adam: the engine steps
        eta = m.eta_meta if m.outer == "sgd" else None
        lt, lm = metadrop_update(net, loss(batch_a), loss(batch_b), m.inner_lr, m.alpha, eta)
        n = m.support + m.query
        # logged loss: the mean L1 over both batches' slices (A's at φ₀, B's at φ̃)
        return StepResult((lt * m.support + lm * m.query) / n, n, {a: lt, b: lm})
