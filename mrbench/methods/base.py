"""The one small interface every training regime implements.

A :class:`Method` owns its networks (``self.models``, an ``nn.ModuleDict``) and
describes its training as a list of :class:`Phase` objects; the engine
(:mod:`mrbench.engine`) runs the phases within the budget, validates,
checkpoints and resumes, without knowing which method it runs. After
training, :meth:`Method.reconstructor` gives the network for a seen task and
:meth:`Method.adapt` adapts to an unseen context from a k-shot support batch —
plain fine-tuning unless a method (meta-learning) says otherwise, with the same
support set and step counts for every method (docs/design.md §5, fair comparison).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import nn

from ..data.contexts import Context
from ..data.dataset import Sample, TaskData, take
from ..losses import build_loss
from ..models import build_backbone
from ..models.outputs import image

Reconstructor = Callable[[Sample], torch.Tensor]


@dataclass(frozen=True)
class Plan:
    """What a method trains and adapts with, fixed for the run: ``[train]``'s budget and how a
    multi-network method spends it, lr, sampling, seed, batch and clipping, and ``[eval]``'s
    test-time support set (its size and unit, which the meta-learners' episodes match) and
    adaptation minibatch. The method reads these and its own section (``self.opts``), never the
    rest of the configuration. ``lr`` is the attempt's (a retry after divergence lowers it)."""

    budget: int
    budget_per: str
    lr: float
    sampling: str
    seed: int
    batch: int
    grad_clip: float
    support: int = 0
    support_unit: str = "volumes"
    adapt_batch: int = 0

    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ("support", "support_unit", "adapt_batch")  # the rest: [train]

    @classmethod
    def of(cls, cfg) -> Plan:
        return cls(
            **{f: getattr(cfg.eval if f in cls.EVAL_FIELDS else cfg.train, f) for f in (x.name for x in fields(cls))}
        )


@dataclass
class StepResult:
    loss: float
    slices: int  # slices through forward+backward in this step (support and query both count)
    task_losses: dict[int, float] = field(default_factory=dict)


@dataclass
class Phase:
    """A stretch of training with one optimiser over one set of modules.

    ``step(batch)`` computes the loss and calls ``backward`` (the engine zeroes
    gradients, clips, and steps the optimiser and scheduler). A method with an
    unusual step (MAML draws its own support/query batches) sets ``custom_step``
    instead, which receives the engine's batch source.
    """

    name: str
    budget: int
    lr: float
    modules: list[str]  # keys of Method.models trained here; their best-validation state is kept
    tasks: list[int]  # tasks sampled for training and used for checkpoint selection
    step: Callable[[Sample], StepResult] | None = None
    custom_step: Callable[..., StepResult] | None = None
    sampling: str = "uniform"
    on_start: Callable[[], None] | None = None  # runs when the phase starts afresh (not on resume)


class Method:
    """A training regime. Class attributes a method sets (docs/design.md §8):

    * ``backbones``: the backbones it can train, its default first (empty: any generic
      backbone, default ``varnet``); a conflicting explicit ``model.backbone`` is an error;
    * ``options``: config section → dataclass of its own keys, merged into
      :class:`~mrbench.config.Config` (e.g. ``{"meta": MetaOptions}``);
    * :meth:`run_variant`: the part of the run name after the method;
    * :meth:`network`: the backbone it builds and its arguments (``model.*``), the one place
      a method reads ``[model]``; :meth:`check_config`: refusals that need several sections;
    * ``several_networks``: it trains more than one network one after another (STL's one per
      task, transfer's pre-trained and fine-tuned), so ``train.budget_per`` decides whether
      ``train.budget`` is the run's (split between them: equal compute) or each network's
      (equal steps, Liu et al. 2021's protocol); :meth:`network_budgets` applies it;
    * ``shares_phases``: a phase's outcome depends only on the phases before it and their
      tasks' data, so cells of an experiment that repeat it load it (:mod:`mrbench.shared_phases`).
    """

    name: ClassVar[str] = "base"
    learned: ClassVar[bool] = True  # False: no training (zero-filled)
    several_networks: ClassVar[bool] = False
    shares_phases: ClassVar[bool] = False  # its phases may repeat across cells (mrbench.shared_phases)
    data_parallel: ClassVar[bool] = True  # trains under torchrun (mrbench.distributed): its phases use plain steps
    backbones: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, type]] = {}

    @classmethod
    def run_variant(cls, cfg) -> str:
        """What tells this run apart from the same method's other variants: the backbone."""
        return cfg.model.backbone

    @classmethod
    def check_data(cls, cfg, data) -> None:
        """Refuse, before anything is written, data this method cannot use (one line naming
        the file): e.g. metadata conditioning needs the acquisition numbers in every header."""

    @classmethod
    def network(cls, cfg) -> tuple[str, dict]:
        """The backbone ``make_backbone`` builds and its constructor arguments (from ``[model]``);
        a method whose network takes more (mtl's blocks, KM-MAML's embedding) overrides it."""
        return cfg.model.backbone, cfg.model.backbone_kwargs()

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse, when the configuration is checked, a combination of sections this method
        cannot run (one line naming the option)."""

    @classmethod
    def from_config(cls, cfg, tasks: Sequence[TaskData], scarce: Sequence[bool], make_backbone=None, loss=None):
        """The method with what it reads of ``cfg`` and nothing else: its :class:`Plan`, its own
        section (``options``), a factory of its backbone (:meth:`network`; ``make_backbone``
        replaces it) and ``train.loss`` built (``loss`` replaces it)."""
        if make_backbone is None:
            name, kwargs = cls.network(cfg)

            def make_backbone(**extra):
                return build_backbone(name, **kwargs, **extra)

        opts = getattr(cfg, next(iter(cls.options))) if len(cls.options) == 1 else None
        return cls(Plan.of(cfg), tasks, scarce, make_backbone, loss if loss is not None else build_loss(cfg), opts)

    def __init__(
        self,
        plan: Plan,
        tasks: Sequence[TaskData],
        scarce: Sequence[bool],
        make_backbone: Callable[..., nn.Module],
        loss,
        opts=None,
    ):
        self.plan = plan
        # the method's own options, typed: the section its ``options`` name ([meta], [mtl], [condition];
        # transfer's keys live in [train]); None for a method without options
        self.opts = opts
        self.tasks = list(tasks)
        self.scarce = list(scarce)
        self.make_backbone = make_backbone
        self.models = nn.ModuleDict()
        # train.loss (from_config builds it): every step and every fine-tuning step uses it
        self.loss = loss
        self.loss.contexts = [t.context for t in self.tasks]

    # -- training
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def network_budgets(self, shares: Sequence[float]) -> list[int] | None:
        """With ``train.budget_per = "network"``: slices for networks trained one after another
        in proportions ``shares`` — the largest share gets the whole budget, the others in
        proportion (equal steps per network). None with ``"run"``: the method splits the run's
        budget between them by its own rule (equal compute)."""
        if self.plan.budget_per != "network":
            return None
        return [max(1, round(self.plan.budget * s / max(shares))) for s in shares]

    def supervised_step(self, key: str) -> Callable[[Sample], StepResult]:
        """The standard step: the training loss of ``models[key]`` on a batch, per-task losses logged."""

        def step(batch: Sample) -> StepResult:
            per_sample = self.loss(lambda b: self.run_model(self.models[key], b), batch)
            per_sample.mean().backward()
            return StepResult(float(per_sample.detach().mean()), len(per_sample), _per_task(per_sample, batch.task))

        return step

    def run_model(self, model: nn.Module, batch: Sample, ctx: Context | None = None) -> torch.Tensor:
        """The complex image of a batch by one of this method's networks; ``ctx``: the context
        every sample belongs to (an unseen one at test time), else each sample's task's. Methods
        whose networks take more than the common arguments (the conditioned regime) override it."""
        return image(model, batch)

    def parameters(self, modules: Sequence[str]) -> list[nn.Parameter]:
        return [p for m in modules for p in self.models[m].parameters()]

    # -- inference
    def model_key(self, task: int) -> str:
        """Which of ``self.models`` reconstructs seen task ``task``."""
        return next(iter(self.models))

    def reconstructor(self, task: int) -> Reconstructor:
        model, ctx = self.models[self.model_key(task)], self.tasks[task].context
        return lambda batch: self.loss.reconstruct(lambda b: self.run_model(model, b, ctx), batch)

    def nearest_task(self, ctx: Context) -> int:
        """The seen task a method with per-task models starts from on an unseen context:
        same contrast, else same mask and acceleration, else the first (abundant) task."""
        for pred in (
            lambda c: c.contrast == ctx.contrast,
            lambda c: (c.mask, c.acceleration) == (ctx.mask, ctx.acceleration),
            lambda c: True,
        ):
            for i, t in enumerate(self.tasks):
                if pred(t.context) and not self.scarce[i]:
                    return i
            for i, t in enumerate(self.tasks):
                if pred(t.context):
                    return i
        return 0

    def adapt_rules(self) -> tuple[str, ...]:
        """The test-time adaptation rules this method offers; :func:`~mrbench.evaluation.
        adaptation.select_adaptation` chooses among them (and the learning rate and step count)
        on seen-context validation data. ``finetune``: Adam on every parameter at a chosen lr."""
        return ("finetune",)

    def adapt_path(
        self, ctx: Context, support: Sample, step_counts: Sequence[int], lr: float, rule: str = "finetune"
    ) -> Iterator[tuple[int, Reconstructor]]:
        """Adapt a copy of the starting network to ``support`` along one trajectory and yield
        ``(k, reconstructor)`` after k full-batch steps for each k in ``step_counts`` (sorted;
        0 = the network as trained). One pass serves every step count; a yielded reconstructor
        is valid until the generator resumes."""
        if rule != "finetune":
            raise ValueError(f"{self.name} has no adaptation rule {rule!r} (it has {', '.join(self.adapt_rules())})")
        model = copy.deepcopy(self.models[self.model_key(self.nearest_task(ctx))])
        with self.loss.adapting_to(ctx):
            yield from finetune_path(
                model, support, step_counts, lr, self.adapt_forward(ctx), self.loss, batch=self.plan.adapt_batch
            )

    def adapt_forward(self, ctx: Context) -> Callable[[nn.Module, Sample], torch.Tensor]:
        """The fine-tuned copy's complex image of a batch of the context ``ctx`` (task-aware
        backbones route it through the nearest seen task)."""
        return lambda model, batch: self.run_model(model, batch, ctx)

    def adapt(self, ctx: Context, support: Sample, steps: int, lr: float, rule: str | None = None) -> Reconstructor:
        """The reconstructor after ``steps`` steps of ``rule`` (default: the method's first)."""
        *_, (_, recon) = self.adapt_path(ctx, support, [steps], lr, rule or self.adapt_rules()[0])
        return recon

    # -- state
    def state_dict(self) -> dict:
        return {k: m.state_dict() for k, m in self.models.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.models.items():
            m.load_state_dict(state[k])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.models.parameters())


def support_minibatch(support: Sample, size: int, step: int) -> Sample:
    """The support slices adaptation step ``step`` uses (``eval.adapt_batch``): the whole set
    (``size`` 0 or ≥ the set), else the ``step``-th block of ``size`` slices of one fixed
    shuffled cyclic order, so every slice is used equally often and every method, rule and
    candidate sees the same minibatches at the same step."""
    n = support.kspace.shape[0]
    if size <= 0 or size >= n:
        return support
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return take(support, order[(torch.arange(size) + step * size) % n])


def finetune_path(
    model: nn.Module,
    support: Sample,
    step_counts: Sequence[int],
    lr: float,
    forward: Callable,
    loss: Callable,
    params=None,
    batch: int = 0,
) -> Iterator[tuple[int, Reconstructor]]:
    """Adam at ``lr`` on the mean training ``loss`` of ``forward(model, ·)`` (the complex image)
    on ``support`` (over ``params``, default all of ``model``'s; ``batch`` slices per step,
    :func:`support_minibatch`), yielding ``(k, reconstructor)`` after k steps for each k."""
    opt = (
        torch.optim.Adam(list(params if params is not None else model.parameters()), lr=lr)
        if max(step_counts)
        else None
    )
    done = 0
    for k in sorted(set(step_counts)):
        model.train()
        while done < k:
            opt.zero_grad(set_to_none=True)
            part = support_minibatch(support, batch, done)
            loss(lambda b: forward(model, b), part).mean().backward()
            opt.step()
            done += 1
        model.eval()
        yield k, (lambda batch: loss.reconstruct(lambda b: forward(model, b), batch))


def _per_task(per_sample: torch.Tensor, task: torch.Tensor) -> dict[int, float]:
    values = per_sample.detach()
    return {int(t): float(values[task == t].mean()) for t in task.unique()}
