"""maml: model-agnostic meta-learning over contexts (docs/design.md §5.6; Finn et al., 2017).

One network ``models["net"] = make_backbone()`` (``unet`` or ``varnet``; the
complex data consistency is inside the backbone). A task is a seen context
(contrast × mask × acceleration: ``data.tasks`` × ``data.mask`` ×
``data.acceleration``).

**Episode** (one engine step, :meth:`MAML.step`): draw ``meta.tasks_per_batch``
distinct seen tasks uniformly (at most all of them; torch's global generator,
which the engine checkpoints); for each task ``t`` a support batch of
``meta.support`` slices and a query batch of ``meta.query`` slices from its
training slices (the engine's source respects the scarcity subset); the
inner loop (:func:`~mrbench.methods.meta.inner_loop`) takes
``meta.inner_steps`` SGD steps at ``meta.inner_lr`` on the support loss,
``φ'_t = φ − α ∇L_sup(φ)`` (only the ``meta.adapt`` group, see
:func:`~mrbench.methods.meta.adapt_names`); the outer objective is the mean
query loss ``(1/T) Σ_t L_query(φ'_t)``, back-propagated task by task into
the network's ``.grad`` (each task's graph freed before the next) — the
engine then clips and takes its Adam step at ``train.lr`` (the outer
optimiser). ``meta.order = 2`` differentiates through the inner loop,
``1`` is first-order.

**Budget**: an episode costs ``T · (meta.support · meta.inner_steps + meta.query)``
slices (each support slice once per inner step it goes through
forward+backward, each query slice once); the engine stops at the first
episode that reaches ``train.budget``, so the last one may overshoot by less
than one episode (``metrics.cost.trained_slices`` records the exact count).

**Test time** (:meth:`MAML.adapt`): MAML's own rule — ``steps`` SGD steps at
``meta.inner_lr`` (not Adam at ``eval.adapt_lr``; the number of steps and the
support set are the same as every other method's) on a copy of the
meta-learned parameters, the same parameter group as in the inner loop;
0 steps is the meta-learned network itself.
"""

from __future__ import annotations

import copy

import torch

from .base import Method, Phase, Reconstructor, StepResult, reconstruct
from .meta import MetaOptions, adapt_names, detached_params, episode_phase, episode_slices, episode_step, inner_loop, reconstruction_loss


class MAML(Method):
    name = "maml"
    options = {"meta": MetaOptions}

    def __init__(self, cfg, tasks, scarce, make_backbone):
        super().__init__(cfg, tasks, scarce, make_backbone)
        self.models["net"] = make_backbone()
        self.adapt_names = adapt_names(self.models["net"], cfg.meta.adapt)  # MrbenchError if empty

    def phases(self) -> list[Phase]:
        return episode_phase(self)

    def episode_slices(self) -> int:
        """Slices one episode pushes through forward+backward (the budget accounting rule)."""
        return episode_slices(self.cfg, len(self.tasks))

    def step(self, source) -> StepResult:
        m = self.cfg.meta
        net = self.models["net"]
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())

        def query_loss(support, query):
            fast = inner_loop(net, params, buffers, support, m.inner_steps, m.inner_lr, m.order, self.adapt_names)
            return reconstruction_loss(net, {**fast, **buffers}, query)

        return episode_step(self, source, query_loss)

    def adapt(self, ctx, support, steps: int, lr: float) -> Reconstructor:
        """``steps`` SGD steps at ``meta.inner_lr`` (``lr`` = ``eval.adapt_lr`` is not used:
        MAML adapts with its inner-loop rule) on a copy; 0 steps = the meta-learned network."""
        net = self.models["net"]
        model = copy.deepcopy(net)
        if steps:
            m = self.cfg.meta
            fast = inner_loop(
                model,
                detached_params(model, self.adapt_names),
                dict(model.named_buffers()),
                support,
                steps,
                m.inner_lr,
                1,  # nothing differentiates through test-time adaptation
                self.adapt_names,
            )
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(fast[n])
        model.eval()
        return lambda batch: reconstruct(model, batch)
