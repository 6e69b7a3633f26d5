"""mtl: one multi-task VarNet (``mtl-varnet``) trained on all tasks with a loss weighting.

Liu et al. 2021 ("Multi-task accelerated MR reconstruction schemes for jointly
training multiple contrasts"). The network (:class:`~mrbench.models.mtl_varnet.MTLVarNet`)
has one block letter per cascade (``model.blocks``; default ``"II" + "V"·(cascades−2)``)
and shares η or not (``model.share_etas``); the loss weighting
(:mod:`mrbench.methods.weighting`, ``mtl.weighting``) is an independent
plug-in, kept in ``models["weighting"]`` so its learned weights are optimised
and its state (e.g. DWA's epoch means) checkpointed and restored with the
network.

One phase over all tasks with ``train.sampling``: ``stratified`` interleaves
the tasks (the scarce one up-sampled); ``uniform`` draws slices in proportion
to the tasks' sizes, and then ``naive`` uses inverse-frequency weights. A step
computes the per-sample L1 (:func:`~mrbench.losses.base.l1_per_sample`),
averages it per task and hands the per-task means and counts to the weighting,
which back-propagates (PCGrad and GradNorm do their own per-task backward
passes). ``StepResult.loss`` is the plain mean L1 of the batch (comparable
with the other methods); the weighted objective and the weights are in
:meth:`MTL.scalars`.

Sizes: ``model.size`` preset overridden by explicit ``model.*`` values;
``model.backbone`` must be ``varnet`` or ``mtl-varnet`` (mtl always builds an
``mtl-varnet``; the run directory is named ``mtl-<blocks>-<weighting>-s<N>-seed<S>``). With
``model.blocks`` set the number of cascades is ``len(blocks)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MrbenchError
from ..models import SIZES
from ..models.mtl_varnet import default_blocks
from ..models.outputs import image
from .base import Method, Phase, Reconstructor, StepResult, _per_task
from .weighting import WEIGHTINGS, make_weighting


@dataclass
class MtlOptions:
    """``[mtl]`` key of the mtl method (the weightings add their own, e.g. ``dwa_temperature``)."""

    weighting: str = "naive"  # naive | uncert | dwa | gradnorm | pcgrad (mrbench.methods.weighting.WEIGHTINGS)

    def check(self, key):
        WEIGHTINGS.lookup(self.weighting, key("weighting"))


def mtl_blocks(cfg) -> str:
    """The block letters of this configuration: ``model.blocks`` or the default for the cascades."""
    cascades = cfg.model.cascades or SIZES[cfg.model.size]["cascades"]
    return cfg.model.blocks or default_blocks(cascades)


def mtl_backbone_kwargs(cfg) -> dict:
    """MTLVarNet constructor arguments (without ``num_tasks``) from a run configuration."""
    kw = cfg.model.backbone_kwargs("mtl-varnet")  # size preset + explicit values
    blocks = cfg.model.blocks
    if blocks and cfg.model.cascades and cfg.model.cascades != len(blocks):
        raise MrbenchError(
            f"model.blocks {blocks!r} has {len(blocks)} cascades but model.cascades = {cfg.model.cascades}; "
            "set model.cascades = 0 (or the same number)"
        )
    cascades = kw.pop("cascades")
    kw.update(blocks=blocks or default_blocks(cascades), share_etas=cfg.model.share_etas)
    return kw


class MTL(Method):
    name = "mtl"
    backbones = ("mtl-varnet", "varnet")  # always builds an mtl-varnet; varnet accepted as its plain form
    options = {"mtl": MtlOptions}

    @classmethod
    def run_variant(cls, cfg) -> str:
        """Blocks and weighting instead of the backbone (``IIVV-dwa``, ``-etas`` with per-task η)."""
        return f"{mtl_blocks(cfg)}-{cfg.mtl.weighting}" + ("" if cfg.model.share_etas else "-etas")

    @classmethod
    def network(cls, cfg) -> tuple[str, dict]:
        """Always the multi-task VarNet (blocks, shared or per-task η); ``num_tasks`` given at build."""
        return "mtl-varnet", mtl_backbone_kwargs(cfg)

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        n = len(self.tasks)
        self.models["mtl"] = make_backbone(num_tasks=n)
        self.models["weighting"] = make_weighting(
            self.opts.weighting,
            n,
            self.opts,
            task_sizes=[t.num_slices for t in self.tasks],
            inverse_frequency=self.plan.sampling != "stratified",
            budget=self.plan.budget,
        )
        self._last: dict[str, float] = {}

    # -- training
    def phases(self) -> list[Phase]:
        return [
            Phase(
                name="mtl",
                budget=self.plan.budget,
                lr=self.plan.lr,
                modules=["mtl", "weighting"],
                tasks=list(range(len(self.tasks))),
                step=self.step,
                sampling=self.plan.sampling,
            )
        ]

    def task_losses(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample L1 (B,), per-task mean L1 (T,), per-task sample counts (T,))."""
        per_sample = self.loss(lambda b: image(self.models["mtl"], b), batch)
        task = batch.task.to(per_sample.device).long()
        n = len(self.tasks)
        counts = torch.bincount(task, minlength=n)
        sums = torch.zeros(n, dtype=per_sample.dtype, device=per_sample.device).index_add(0, task, per_sample)
        return per_sample, sums / counts.clamp_min(1).to(sums.dtype), counts

    def step(self, batch) -> StepResult:
        per_sample, means, counts = self.task_losses(batch)
        total = self.models["weighting"].backward(means, counts, self.models["mtl"])
        self._last = {"loss/weighted": float(total)}
        return StepResult(float(per_sample.detach().mean()), len(per_sample), _per_task(per_sample, batch.task))

    def scalars(self) -> dict[str, float]:
        """For TensorBoard (the engine does not log these yet): loss weights, the last
        weighted objective and η per cascade and task."""
        out = dict(self._last)
        out.update(self.models["weighting"].weights())
        for i, row in enumerate(self.models["mtl"].eta_table()):
            for t, eta in enumerate(row):
                out[f"eta/cascade{i}/{t}"] = eta
        return out

    # -- inference
    def model_key(self, task: int) -> str:
        return "mtl"

    def reconstructor(self, task: int) -> Reconstructor:
        model = self.models["mtl"]
        return lambda batch: self.loss.reconstruct(lambda b: image(model, b, task=torch.full_like(b.task, task)), batch)

    def adapt_forward(self, ctx):
        """Fine-tuning on an unseen context routes every slice through the nearest seen task's
        blocks (its own task index means nothing to the network)."""
        t = self.nearest_task(ctx)
        return lambda model, batch: image(model, batch, task=torch.full_like(batch.task, t))

    def num_parameters(self) -> int:
        """The network's parameters (the weighting's few learned weights are not counted)."""
        return sum(p.numel() for p in self.models["mtl"].parameters())
