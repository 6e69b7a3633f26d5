"""Shared meta-learning machinery: the functional MAML inner loop, parameter groups, episodes.

Used by :mod:`~mrbench.methods.maml` (and KM-MAML, which adapts only its
hypernetwork). Everything is written with :func:`torch.func.functional_call`
(docs/design.md §5.6: no learn2learn/higher), so the network's own parameters are
never overwritten by the inner loop: adapted parameters are plain tensors in
a dict, and the meta-gradient reaches the network's ``nn.Parameter`` objects
through ordinary autograd.

The inner loop (:func:`inner_loop`)::

    φ_0 = φ,   φ_{s+1} = φ_s − α ∇_{φ_s} L_sup(φ_s)   (s < k; only the adapted names)

``order = 2`` keeps the graph of the inner gradients (``create_graph=True``),
so the meta-gradient of ``L_query(φ_k)`` is the exact one (second-order
MAML). ``order = 1`` detaches the inner gradients (first-order MAML, FOMAML):
``∂φ_k/∂φ`` is taken as the identity and the meta-gradient is
``∇L_query`` evaluated at ``φ_k``. With ``k = 0`` both are the plain
gradient of the query loss.

Parameter groups (``meta.adapt``, :func:`adapt_names`) name which parameters
move in the inner loop; the others are shared across tasks and change only in
the outer loop:

* ``all`` — every parameter;
* ``regulariser`` — the reconstruction U-Nets: each VarNet cascade's
  ``cascades.<i>.regulariser.*`` (not η, not the sensitivity network), the
  ``unet`` backbone's ``net.*`` (for it the same as ``all``);
* ``last`` — the final 1×1 convolution of each reconstruction U-Net
  (``…unet.final.*``, the sensitivity network's excluded): a cheap, head-only
  adaptation (as in ANIL);
* ``eta`` — the VarNet data-consistency weights η only (one scalar per cascade);
* anything else is a parameter-name prefix (e.g. ``cascades.0.``).

A group that selects no parameter of the backbone is a
:class:`~mrbench.errors.MrbenchError` naming the valid groups.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from ..data.dataset import Sample
from ..errors import MrbenchError
from ..losses.base import l1_per_sample
from ..models.outputs import backbone_args, magnitude
from .base import Method, Phase, StepResult, support_minibatch


@dataclass
class MetaOptions:
    """``[meta]`` keys every meta-learner (maml, metadrop, kmmaml) shares: episodes and the inner loop."""

    order: int = 1  # 1 = first-order, 2 = differentiate through the inner loop
    inner_steps: int = 1  # SGD steps on the support loss per task
    inner_lr: float | str = 1e-2  # SGD step size α, or "learned": Meta-SGD rates, one per adapted tensor
    inner_lr_init: float = 1e-2  # the learned rates' starting value
    support: int = 0  # support slices per task per episode; 0 = as many as the test-time support set (eval.support)
    query: int = 2  # query slices per task per episode
    tasks_per_batch: int = 2  # tasks (contexts) per meta-batch
    adapt: str = "all"  # parameter groups adapted in the inner loop (method-specific names, e.g. all | hyper)

    def check(self, key):
        def require(ok, k, what):
            if not ok:
                raise MrbenchError(f"{key(k)}: {what}")

        require(self.order in (1, 2), "order", f"must be 1 or 2, got {self.order}")
        require(self.inner_steps >= 0, "inner_steps", "must be ≥ 0")
        require(
            self.inner_lr == "learned" or (isinstance(self.inner_lr, float) and self.inner_lr > 0),
            "inner_lr",
            f'must be > 0 or "learned", got {self.inner_lr!r}',
        )
        require(self.inner_lr_init > 0, "inner_lr_init", "must be > 0")
        require(self.support >= 0, "support", "must be ≥ 0 (0 = match eval.support)")
        for name in ("query", "tasks_per_batch"):
            require(getattr(self, name) > 0, name, "must be > 0")


LossFn = Callable[[nn.Module, dict, object], torch.Tensor]

#: ``meta.adapt`` group → predicate on a parameter name (see the module docstring).
ADAPT_GROUPS: dict[str, Callable[[str], bool]] = {
    "all": lambda n: True,
    "regulariser": lambda n: bool(re.match(r"cascades\.\d+\.regulariser\.", n)) or n.startswith("net."),
    "last": lambda n: ".unet.final." in n and not n.startswith("sens_net."),
    "eta": lambda n: bool(re.fullmatch(r"cascades\.\d+\.eta", n)),
}


class InnerRates(nn.Module):
    """Meta-SGD's learned inner step sizes (Li et al. 2017, per layer): one α per adapted
    parameter tensor, φ'_n = φ_n − α_n ∇_n L_sup, meta-learned by the outer optimiser with the
    network. α is the parameter itself (not log α): Adam moves it by about the outer lr per
    step, so within a CPU budget it can grow from 1e-2 by orders of magnitude where the
    fixed rate moved a VarNet by ~2e-5 relative per step. First order, the outer gradient on
    α_n is −∇_n L_sup · ∇_n L_query (the inner gradient is detached, α is not)."""

    def __init__(self, names: Sequence[str], init: float):
        super().__init__()
        self.names = list(names)
        self.init = float(init)
        self.rates = nn.Parameter(torch.full((len(self.names),), float(init)))

    def as_dict(self) -> dict[str, torch.Tensor]:
        """name → α; a tensor adapted at test time but not in the inner loop (KM-MAML's
        ``test_mode = "all"`` adapts θ too) gets the starting rate."""
        out = defaultdict(lambda: self.init)
        out.update({n: self.rates[i] for i, n in enumerate(self.names)})
        return out


def adapt_names(model: nn.Module, group: str) -> list[str]:
    """Names (in ``model.named_parameters()`` order) of the parameters ``group`` adapts."""
    pred = ADAPT_GROUPS.get(group, lambda n: n.startswith(group))
    names = [n for n, _ in model.named_parameters() if pred(n)]
    if not names:
        raise MrbenchError(
            f"meta.adapt: {group!r} selects no parameter of the {type(model).__name__} backbone; "
            f"valid: {', '.join(ADAPT_GROUPS)} or a parameter-name prefix"
        )
    return names


def functional_image(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch: Sample) -> torch.Tensor:
    """The backbone's complex image with ``tensors`` (parameters and buffers) in place of its own."""
    return functional_call(model, dict(tensors), backbone_args(model, batch))


def functional_reconstruct(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch: Sample) -> torch.Tensor:
    """:func:`~mrbench.models.outputs.reconstruct` with ``tensors`` in place of the module's own."""
    return magnitude(functional_image(model, tensors, batch), batch)


def functional_loss(loss: Callable) -> LossFn:
    """A method's training loss (:mod:`mrbench.losses`) as an inner/outer-loop loss evaluated
    at ``tensors``: ``(model, tensors, batch) -> scalar``."""

    def fn(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch: Sample) -> torch.Tensor:
        return loss(lambda b: functional_image(model, tensors, b), batch).mean()

    return fn


def reconstruction_loss(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch: Sample) -> torch.Tensor:
    """The training loss every method uses (mean normalised L1), evaluated at ``tensors``."""
    return l1_per_sample(functional_reconstruct(model, tensors, batch), batch).mean()


def inner_loop(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    batch,
    steps: int,
    lr: float,
    order: int,
    adapt_names: Iterable[str],
    loss: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """The MAML inner loop: ``steps`` SGD steps at ``lr`` on the support ``batch`` (``lr`` a
    number, or name → rate tensor for learned per-tensor rates, :class:`InnerRates`).

    ``params``: name → tensor for every parameter of ``model`` (its own
    ``nn.Parameter`` objects for meta-training, so the meta-gradient reaches
    them; detached copies with ``requires_grad`` for test-time adaptation).
    ``adapt_names``: the names that take the SGD steps (they must require
    grad); the others are passed through unchanged (shared). ``order``: 2 =
    differentiable steps (``create_graph=True``), 1 = first-order (inner
    gradients detached). ``loss(model, tensors, batch) -> scalar``, default
    :func:`reconstruction_loss`. Returns a new dict with every name of
    ``params``: the adapted tensors ``φ_k`` and the untouched others (the
    same objects). ``steps = 0`` returns ``dict(params)``.

    Every step pushes the whole support batch through forward+backward once
    (the budget counts it once per step).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    loss = loss or reconstruction_loss
    names = list(adapt_names)
    fast = dict(params)
    missing = [n for n in names if n not in fast]
    if missing:
        raise KeyError(f"adapt_names not in params: {missing[:5]}")
    with torch.enable_grad():
        for _ in range(steps):
            value = loss(model, {**fast, **buffers}, batch)
            grads = torch.autograd.grad(value, [fast[n] for n in names], create_graph=order == 2, allow_unused=True)
            sgd_step(fast, dict(zip(names, grads)), lr, order)
    return fast


def sgd_step(fast: dict, grads: Mapping[str, torch.Tensor | None], lr, order: int) -> None:
    """One inner SGD step in place on the dict ``fast``: φ_n ← φ_n − α_n g_n (the gradient
    detached for first order; a ``None`` gradient — a parameter that does not touch the loss —
    leaves φ_n as it is)."""
    for n, g in grads.items():
        if g is None:
            continue
        rate = lr[n] if isinstance(lr, Mapping) else lr
        fast[n] = fast[n] - rate * (g if order == 2 else g.detach())


def stack_tasks(batches: Sequence[Sample]) -> tuple[dict[str, torch.Tensor], Sample] | None:
    """The tensor fields of per-task batches stacked along a new leading task axis, and the
    first batch (whose non-tensor fields — file names — stand in for all). ``None`` when the
    batches differ in shape (mixed image sizes): they cannot be vectorised."""
    first = batches[0]
    fields = [f for f in Sample._fields if isinstance(getattr(first, f), torch.Tensor)]
    for b in batches[1:]:
        for f in fields:
            x = getattr(b, f)
            if not isinstance(x, torch.Tensor) or x.shape != getattr(first, f).shape:
                return None
    return {f: torch.stack([getattr(b, f) for b in batches]) for f in fields}, first


def vmap_query_losses(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    supports: Sequence[Sample] | None,
    queries: Sequence[Sample],
    steps: int,
    lr,
    order: int,
    adapt_names: Iterable[str],
    loss: LossFn | None = None,
) -> torch.Tensor | None:
    """The (T,) query losses ``L_query(φ_k^t)`` of T tasks with one vectorised inner loop:
    :func:`inner_loop` for every task at once under :func:`torch.func.vmap` (the tasks' support
    and query batches stacked along a task axis), the inner gradients from
    :func:`torch.func.grad` instead of ``autograd.grad``.

    The same meta-gradient as the per-task loop (tests/test_meta_vmap.py): the T tasks'
    convolutions run as one batched (grouped) call instead of T Python passes, which is
    where the time goes when the per-task batches are small. The cost: every task's graph is
    held until the one backward (the loop frees each task's after its own). ``None`` when
    the batches cannot be stacked (different image sizes); the caller loops instead."""
    names = list(adapt_names)
    loss = loss or reconstruction_loss
    stacked_q = stack_tasks(queries)
    stacked_s = stack_tasks(supports) if steps else None
    if stacked_q is None or (steps and stacked_s is None):
        return None
    (q_fields, q_first) = stacked_q
    s_fields, s_first = stacked_s if stacked_s else ({}, None)

    def per_task(s_fields, q_fields):
        fast = dict(params)
        for _ in range(steps):
            support = s_first._replace(**s_fields)

            def support_loss(adapted):
                return loss(model, {**fast, **adapted, **buffers}, support)  # noqa: B023 (called at once, inside this iteration)

            grads = torch.func.grad(support_loss)({n: fast[n] for n in names})
            sgd_step(fast, grads, lr, order)
        return loss(model, {**fast, **buffers}, q_first._replace(**q_fields))

    return torch.func.vmap(per_task)(s_fields, q_fields)


def inner_path(
    model: nn.Module,
    names: Sequence[str],
    support,
    step_counts: Sequence[int],
    lr,
    loss: LossFn | None = None,
    batch: int = 0,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """The test-time inner-loop trajectory: ``(k, tensors)`` (parameters and buffers) after k
    first-order SGD steps on ``support`` (``batch`` slices per step, :func:`~mrbench.methods.
    base.support_minibatch`) for each k in ``step_counts`` — one pass for all."""
    buffers = dict(model.named_buffers())
    wanted = set(names)
    fast = detached_params(model, names)
    done = 0
    for k in sorted(set(step_counts)):
        while done < k and wanted:
            fast = inner_loop(model, fast, buffers, support_minibatch(support, batch, done), 1, lr, 1, names, loss)
            fast = {n: t.detach().requires_grad_(n in wanted) for n, t in fast.items()}
            done += 1
        done = k
        yield k, {**fast, **buffers}


def detached_params(model: nn.Module, names: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Copies of ``model``'s parameters cut from its graph; those in ``names`` require grad
    (the starting point of a test-time inner loop)."""
    wanted = set(names)
    return {n: p.detach().clone().requires_grad_(n in wanted) for n, p in model.named_parameters()}


def sample_tasks(
    num_tasks: int, per_batch: int, generator: torch.Generator | None = None, weights: torch.Tensor | None = None
) -> list[int]:
    """``min(per_batch, num_tasks)`` distinct task indices: uniformly (``weights=None``, the
    stratified rule) or drawn without replacement in proportion to ``weights``."""
    k = min(per_batch, num_tasks)
    if weights is None:
        perm = torch.randperm(num_tasks, generator=generator)
        return [int(i) for i in perm[:k]]
    return [int(i) for i in torch.multinomial(weights, k, replacement=False, generator=generator)]


class Episodic(Method):
    """A meta-learner (MAML, Meta-Drop, KM-MAML): one phase over every seen task in which the
    method draws its own episodes from the engine's batch source (``custom_step``), support
    sets of the size it is tested with, tasks drawn by ``train.sampling``, optionally Meta-SGD's
    learned inner rates. Subclasses build ``models["net"]`` and write :meth:`step`.

    ``vectorised``: the method has a ``meta.vmap`` step (MAML); any other refuses the option
    (the ``[meta]`` section is shared) rather than ignore it. ``support_always``: the support
    set is read even without an inner step (KM-MAML's context embedding), so it counts in the
    budget once at least.
    """

    data_parallel = False  # draws its own episodes; autograd.grad per task (mrbench.distributed)
    vectorised: ClassVar[bool] = False
    support_always: ClassVar[bool] = False

    @classmethod
    def check_config(cls, cfg) -> None:
        if getattr(cfg.meta, "vmap", False) and not cls.vectorised:
            raise MrbenchError(
                f"meta.vmap: only maml vectorises its inner loop over tasks; {cls.name} has no "
                "vectorised step (set meta.vmap = false)"
            )

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        self._support_slices: int | None = None

    def step(self, source) -> StepResult:
        raise NotImplementedError

    # -- the one phase
    def phases(self) -> list[Phase]:
        return [
            Phase(
                name=self.name,
                budget=self.plan.budget,
                lr=self.plan.lr,
                modules=["net", *(["inner_lr"] if "inner_lr" in self.models else [])],
                tasks=list(range(len(self.tasks))),
                custom_step=self.step,
            )
        ]

    # -- inner step sizes
    def make_inner_rates(self, names: Sequence[str]) -> None:
        """With ``meta.inner_lr = "learned"``, the :class:`InnerRates` of ``names`` (trained and
        checkpointed with the network as ``models["inner_lr"]``)."""
        if self.opts.inner_lr == "learned":
            self.models["inner_lr"] = InnerRates(names, self.opts.inner_lr_init)

    def inner_rates(self) -> float | dict[str, torch.Tensor]:
        """The inner step size(s): the fixed ``meta.inner_lr`` or the learned ones."""
        if "inner_lr" in self.models:
            return self.models["inner_lr"].as_dict()
        return float(self.opts.inner_lr)

    # -- episodes
    def support_slices(self) -> int:
        """Support slices per task per episode: ``meta.support``, or with 0 (the default) as many
        as the test-time support set has — ``eval.support`` slices, or ``eval.support`` volumes
        times the mean slices per training volume — so meta-training adapts on support sets of the
        size it will be tested with (a 4-slice set made Adam overfit, 32 slices helped)."""
        if self._support_slices is None:  # fixed for the run: computed once, not at every episode
            m, e = self.opts, self.plan
            if m.support:
                self._support_slices = m.support
            elif e.support_unit == "slices":
                self._support_slices = e.support
            else:
                vols = [v for t in self.tasks for v in t.volumes]
                per_volume = sum(v.num_slices for v in vols) / max(1, len(vols))
                self._support_slices = max(1, round(e.support * per_volume))
        return self._support_slices

    def task_weights(self) -> torch.Tensor | None:
        """How episodes draw their tasks under ``train.sampling``, the rule every method shares:
        ``stratified`` — every task equally often (``None``: the scarce task up-sampled, as
        joint's stratified sampler does); ``uniform`` — in proportion to the tasks' training
        slices (as joint's uniform sampler does)."""
        if self.plan.sampling == "stratified":
            return None
        return torch.tensor([float(t.num_slices) for t in self.tasks])

    def episode_slices(self) -> int:
        """Slices one episode pushes through forward+backward (the budget accounting rule):
        per task ``support × inner steps + query`` (the support at least once with
        ``support_always``)."""
        m = self.opts
        passes = max(m.inner_steps, 1) if self.support_always else m.inner_steps
        return min(m.tasks_per_batch, len(self.tasks)) * (self.support_slices() * passes + m.query)

    def episode_step(self, source, query_loss: Callable) -> StepResult:
        """One meta-batch: ``meta.tasks_per_batch`` tasks, each with a support batch (drawn when
        an inner step or ``support_always`` needs it) and a query batch; ``query_loss(support,
        query)`` runs the inner loop and returns the query loss, whose meta-gradient is
        accumulated into the parameters' ``.grad`` (mean over the tasks)."""
        m = self.opts
        tasks = sample_tasks(len(self.tasks), m.tasks_per_batch, weights=self.task_weights())
        losses: dict[int, float] = {}
        for t in tasks:
            support = source(self.support_slices(), task=t) if (m.inner_steps or self.support_always) else None
            query = source(m.query, task=t)
            q_loss = query_loss(support, query)
            (q_loss / len(tasks)).backward()
            losses[t] = float(q_loss.detach())
        return StepResult(sum(losses.values()) / len(losses), self.episode_slices(), losses)

    def vmap_episode_step(self, source, query_losses: Callable, query_loss: Callable) -> StepResult:
        """:meth:`episode_step` with every task of the meta-batch at once: the support and query
        batches drawn in the loop's order, then ``query_losses(supports, queries)`` → (T,) losses
        (:func:`vmap_query_losses`), whose mean is back-propagated once. Where the tasks' batches
        cannot be stacked (``None``: image sizes differ), the same batches go through the loop's
        ``query_loss(support, query)`` task by task."""
        m = self.opts
        tasks = sample_tasks(len(self.tasks), m.tasks_per_batch, weights=self.task_weights())
        supports, queries = [], []
        for t in tasks:
            if m.inner_steps:
                supports.append(source(self.support_slices(), task=t))
            queries.append(source(m.query, task=t))
        losses = query_losses(supports if m.inner_steps else None, queries)
        if losses is None:
            values = []
            for i, query in enumerate(queries):
                value = query_loss(supports[i] if m.inner_steps else None, query)
                (value / len(tasks)).backward()
                values.append(value.detach())
            losses = torch.stack(values)
        else:
            losses.mean().backward()
        per_task = {t: float(v) for t, v in zip(tasks, losses.detach())}
        return StepResult(sum(per_task.values()) / len(per_task), self.episode_slices(), per_task)
