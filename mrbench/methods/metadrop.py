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
2. save φ₀ and take one step on a batch of ``meta.support`` slices of A to φ̃;
3. the meta loss on a batch of ``meta.query`` slices of B at φ̃;
4. φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇_φ̃ L_meta(φ̃) with α = ``meta.alpha`` (the
   first-order form: the gradient is taken at φ̃, not through the inner step).

``meta.outer`` names how steps 2 and 4 are taken (the names before issue 32, ``notes`` and
``adam``, still work and print a deprecation line):

* ``adam-inner`` (default; was ``notes``) — as the Meta-Drop notes write it: φ̃ is *the training
  optimiser's step*, one Adam step at the engine's scheduled ``train.lr`` with
  its own moments carried from step to step (:class:`AdamInnerStep`,
  checkpointed with the method), and the last term is plain SGD at
  ``meta.eta_meta``. Adam does the learning; the meta gradient nudges φ̃
  towards weights that also fit the other context. η_meta = 1 was chosen on the
  demo's *seen-context validation* data (seed 0, 1200 slices, mean over the seen
  tasks): SSIM 0.603 / 0.597 / 0.633 / 0.695 / 0.729 at η_meta = 1e-3 / 1e-2 / 0.1 /
  1 / 3 with 1 + 3 slices per step, and 0.755 at η_meta = 1 with 3 + 1 slices
  (the Adam step on A does most of the learning, so A's batch is the larger one);
  the ``adam-outer`` variant reached 0.725 at 1 + 3.
* ``adam-outer`` (was ``adam``) — the variant used before: φ̃ by SGD at ``meta.inner_lr``, the last
  term replaced by the engine's Adam step on ∇_φ̃ L_meta(φ̃) at ``train.lr``
  (schedule and clipping included), as MAML's outer loop. The steps are
  swapped relative to the notes (Adam on the meta gradient, SGD on the
  training gradient).
* ``sgd`` — SGD for both (``meta.inner_lr`` and ``meta.eta_meta``): moves a
  VarNet by almost nothing within a CPU budget.

With ``adam-inner`` and ``sgd`` the update is written in place under ``no_grad`` and
every ``.grad`` is left ``None``, so the engine's Adam step changes nothing; with
``adam-outer`` the parameters are set to φ₀ + α(φ̃ − φ₀) and ``.grad`` to the meta
gradient for the engine's step. The random draws use torch's global generator
(checkpointed by the engine), the batches the engine's sampler: runs resume exactly.

Budget: ``meta.support + meta.query`` slices per step (both batches go
through forward+backward once). Test-time adaptation is the base class's
fine-tuning (Adam at ``eval.adapt_lr``), like the non-meta methods.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.contexts import Context
from ..errors import MrbenchError
from ..models.outputs import image
from .base import StepResult
from .meta import Episodic, MetaOptions

RULES: dict[str, Callable[[Context, Context], bool]] = {
    "other-contrast": lambda a, b: b.contrast != a.contrast,
    "other-mask": lambda a, b: b.contrast == a.contrast and b.mask != a.mask,
    "other-acceleration": lambda a, b: (
        (b.contrast, b.mask) == (a.contrast, a.mask) and b.acceleration != a.acceleration
    ),
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


def draw_pair(
    candidates: Sequence[Sequence[int]], generator: torch.Generator | None = None, weights: torch.Tensor | None = None
) -> tuple[int, int]:
    """(A, B): A by the task-sampling rule (uniform over the tasks, or ∝ ``weights``), B uniform
    over A's candidates."""
    if weights is None:
        a = int(torch.randint(len(candidates), (1,), generator=generator))
    else:
        a = int(torch.multinomial(weights, 1, generator=generator))
    cands = candidates[a]
    b = cands[int(torch.randint(len(cands), (1,), generator=generator))]
    return a, b


InnerStep = Callable[[list, list], None]  # (parameters, gradients) → update in place


def sgd_inner_step(lr: float) -> InnerStep:
    """φ̃ = φ₀ − lr·∇L_A(φ₀)."""

    def step(params, grads):
        for p, g in zip(params, grads):
            if g is not None:
                p.sub_(lr * g)

    return step


class AdamInnerStep:
    """φ̃ = one Adam step from φ₀ on ∇L_A(φ₀), the optimiser's moments carried from step to step
    (the "training optimiser's step" of the Meta-Drop notes); its state is checkpointed with
    the method. ``lr`` is set before each step (the engine's scheduled rate); gradients are
    clipped to ``clip`` (0 = off) like the engine's."""

    def __init__(self, params: list, lr: float, clip: float = 0.0):
        self.opt = torch.optim.Adam(params, lr=lr)
        self.clip = clip

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def __call__(self, params, grads):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach().clone()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        self.opt.step()
        for p in params:
            p.grad = None


def metadrop_update(
    model: nn.Module,
    train_loss: Callable[[], torch.Tensor],
    meta_loss: Callable[[], torch.Tensor],
    inner: float | InnerStep,
    alpha: float,
    eta_meta: float | None,
) -> tuple[float, float]:
    """One Meta-Drop update of ``model``'s parameters in place; returns (L_train(φ₀), L_meta(φ̃)).

    ``inner``: the step φ₀ → φ̃, an SGD learning rate or an :data:`InnerStep` (e.g.
    :class:`AdamInnerStep`).

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
    with torch.no_grad():  # φ̃ from φ₀ by one step on L_train
        (inner if callable(inner) else sgd_inner_step(inner))(params, grads)
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
    eta_meta: float = (
        1.0  # plain SGD rate of the meta-gradient term (outer = adam-inner | sgd); 1.0 chosen on seen validation
    )
    # adam-inner (Adam inner step, SGD η_meta outer) | adam-outer (SGD inner, the engine's Adam outer) | sgd (both SGD)
    outer: str = "adam-inner"
    meta_context: str = "any"  # other-contrast | other-mask | other-acceleration | any

    def check(self, key):
        if not self.alpha > 0:
            raise MrbenchError(f"{key('alpha')}: must be > 0")
        if not self.eta_meta > 0:
            raise MrbenchError(f"{key('eta_meta')}: must be > 0")
        if self.meta_context not in RULES:
            raise MrbenchError(f"{key('meta_context')}: must be {', '.join(RULES)}, got {self.meta_context!r}")
        if self.outer in OUTER_ALIASES:
            new = OUTER_ALIASES[self.outer]
            print(f'warning: {key("outer")} = "{self.outer}" is deprecated; it is now "{new}"', file=sys.stderr)
            self.outer = new
        if self.outer not in OUTER:
            raise MrbenchError(f"{key('outer')}: must be {', '.join(OUTER)}, got {self.outer!r}")


OUTER = ("adam-inner", "adam-outer", "sgd")
#: the names before issue 32 (a document's name, not a behaviour's) → today's
OUTER_ALIASES = {"notes": "adam-inner", "adam": "adam-outer"}


class MetaDrop(Episodic):
    name = "metadrop"
    options = {"meta": (MetaOptions, MetaDropOptions)}

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        if self.opts.inner_lr == "learned" and self.opts.outer != "adam-inner":
            raise MrbenchError(
                'meta.inner_lr = "learned" applies to maml and kmmaml; metadrop\'s SGD inner step needs a number'
            )
        self.candidates, self.fallback = meta_candidates([t.context for t in self.tasks], self.opts.meta_context)
        self.models["net"] = make_backbone()
        params = [p for p in self.models["net"].parameters() if p.requires_grad]
        self.inner_adam = AdamInnerStep(params, self.plan.lr, self.plan.grad_clip)

    # the inner Adam's moments are training state: checkpointed and restored with the network
    def state_dict(self) -> dict:
        return {**super().state_dict(), "inner_adam": self.inner_adam.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "inner_adam" in state:
            self.inner_adam.opt.load_state_dict(state["inner_adam"])

    def episode_slices(self) -> int:
        """One step: the support batch of context A and the meta batch of context B."""
        return self.support_slices() + self.opts.query

    def step(self, source) -> StepResult:
        m = self.opts
        net = self.models["net"]
        a, b = draw_pair(self.candidates, weights=self.task_weights())
        n_a = self.support_slices()
        batch_a = source(n_a, task=a)
        batch_b = source(m.query, task=b)

        def loss(batch):
            return lambda: self.loss(lambda b: image(net, b), batch).mean()

        # adam-inner/sgd: in place, .grad left None, the engine's step changes nothing; adam-outer: the engine steps
        if m.outer == "adam-inner":
            self.inner_adam.set_lr(source.lr)
            inner = self.inner_adam
        else:
            inner = m.inner_lr
        eta = None if m.outer == "adam-outer" else m.eta_meta
        lt, lm = metadrop_update(net, loss(batch_a), loss(batch_b), inner, m.alpha, eta)
        n = self.episode_slices()
        # logged loss: the mean L1 over both batches' slices (A's at φ₀, B's at φ̃)
        return StepResult((lt * n_a + lm * m.query) / n, n, {a: lt, b: lm})
