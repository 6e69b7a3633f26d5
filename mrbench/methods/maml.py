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

**Inner step size**: ``meta.inner_lr`` fixed, or ``"learned"``: Meta-SGD rates, one
per adapted tensor (:class:`~mrbench.methods.meta.InnerRates`), meta-learned in the
outer loop (first-order gradient for α with ``meta.order = 1``).

**Test time** (:meth:`MAML.adapt_path`): two rules on the same support set and step
counts as every method — ``inner``, MAML's own (SGD at the fixed or learned inner
rates on the ``meta.adapt`` group, from the meta-learned parameters; 0 steps is the
meta-learned network itself), and ``finetune`` (Adam on all parameters at a chosen
lr). The rule, lr and step count are chosen on seen-context validation data
(:mod:`mrbench.evaluation.adaptation`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MrbenchError
from .base import StepResult
from .meta import (
    Episodic,
    MetaOptions,
    adapt_names,
    functional_image,
    functional_loss,
    inner_loop,
    inner_path,
    vmap_query_losses,
)


@dataclass
class VmapOption:
    """``meta.vmap`` (maml only): one vectorised inner loop over the meta-batch's tasks
    (:func:`~mrbench.methods.meta.vmap_query_losses`, ``torch.func.vmap``) instead of the
    per-task Python loop — the same meta-gradient, T tasks' graphs held at once. Off by default:
    the loop keeps earlier runs bit-for-bit reproducible; the supervised loss only (the
    self-supervised ones draw random transforms and look up each sample's context)."""

    vmap: bool = False


class MAML(Episodic):
    name = "maml"
    vectorised = True  # meta.vmap
    options = {"meta": (MetaOptions, VmapOption)}

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.meta.vmap and (cfg.train.loss != "sup" or cfg.data.self_supervised):
            raise MrbenchError(
                'meta.vmap: needs the supervised loss on every task (train.loss = "sup", '
                "no data.self_supervised); set meta.vmap = false"
            )

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        self.models["net"] = make_backbone()
        self.adapt_names = adapt_names(self.models["net"], self.opts.adapt)  # MrbenchError if empty
        self.make_inner_rates(self.adapt_names)

    def step(self, source) -> StepResult:
        m = self.opts
        net = self.models["net"]
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())

        loss = functional_loss(self.loss)

        def query_loss(support, query):
            fast = inner_loop(
                net, params, buffers, support, m.inner_steps, self.inner_rates(), m.order, self.adapt_names, loss
            )
            return loss(net, {**fast, **buffers}, query)

        if m.vmap:

            def query_losses(supports, queries):
                return vmap_query_losses(
                    net,
                    params,
                    buffers,
                    supports,
                    queries,
                    m.inner_steps,
                    self.inner_rates(),
                    m.order,
                    self.adapt_names,
                    loss,
                )

            return self.vmap_episode_step(source, query_losses, query_loss)
        return self.episode_step(source, query_loss)

    def adapt_rules(self) -> tuple[str, ...]:
        """``inner``: MAML's own rule (SGD at the meta-learned or fixed inner rate on the
        ``meta.adapt`` group); ``finetune``: Adam on every parameter, as the other methods."""
        return ("inner", "finetune")

    def adapt_path(self, ctx, support, step_counts, lr: float, rule: str = "inner"):
        """``inner`` ignores ``lr`` (the inner loop's rate is MAML's own); 0 steps = the
        meta-learned network."""
        if rule == "finetune":
            yield from super().adapt_path(ctx, support, step_counts, lr, rule)
            return
        if rule != "inner":
            raise ValueError(f"maml has no adaptation rule {rule!r}")
        net = self.models["net"]
        with self.loss.adapting_to(ctx):
            for k, tensors in inner_path(
                net,
                self.adapt_names,
                support,
                step_counts,
                self.inner_rates(),
                functional_loss(self.loss),
                batch=self.plan.adapt_batch,
            ):
                yield k, (lambda batch, t=tensors: self.loss.reconstruct(lambda b: functional_image(net, t, b), batch))
