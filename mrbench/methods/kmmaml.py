"""kmmaml: KM-MAML, meta-learned kernel-modulating hypernetworks (docs/design.md §5.7).

Ramanarayanan, Palla, Ram & Sivaprakasam (2023), "Generalizing supervised deep
learning MRI reconstruction to multiple and unseen contrasts using
meta-learning hypernetworks" (arXiv 2307.06771).

**Network**: ``models["net"]`` is a :class:`~mrbench.models.km_unet.KMUNet`
whatever the backbone factory would build: its base U-Net has the size the
``unet`` backbone gets from the same configuration (``model.size`` preset with
twice its width, overridden by ``model.chans`` / ``model.pools``), so kmmaml is
compared with joint/stl/maml U-Nets of identical base width; ``meta.embedding``
is the context-embedding size, ``meta.rank`` the modulation rank.
``model.backbone`` must be ``unet`` or ``km-unet`` (anything else is a
:class:`~mrbench.errors.MrbenchError`, so a grid never mislabels a run).
Parameter groups (prefixes of the network's parameter names): ``base.`` (θ,
the U-Net), ``hyper.`` (ω, the hypernetworks), ``encoder.`` (the context
encoder). ``metrics.cost.parameters`` counts all three.

**Episode** (one engine step, :meth:`KMMAML.step`): draw ``meta.tasks_per_batch``
distinct seen tasks (contexts) uniformly with torch's global generator (which
the engine checkpoints: runs resume exactly); for each task a support batch
(``meta.support`` slices) and a query batch (``meta.query``) from its training
slices. The context embedding z is the mean of the encoder's embeddings of the
support images. Inner loop: ``meta.inner_steps`` SGD steps at
``meta.inner_lr`` on the support loss that move **only ω**
(:func:`~mrbench.methods.meta.inner_loop`), ``ω'_t = ω − α∇_ω L_sup(θ, ω; z)``.
Outer objective: the mean query loss ``(1/T) Σ_t L_query(θ, ω'_t; z_t)``,
back-propagated task by task into θ, ω and the encoder; the engine clips and
takes its Adam step at ``train.lr``. ``meta.order = 1`` (default, as the
authors' code) detaches the inner gradients; ``meta.order = 2`` differentiates
through them (then the meta-gradient also reaches θ and the encoder through
the inner steps). ``meta.adapt`` does not apply (KM-MAML always adapts ω).

**Budget**: an episode costs ``T · (meta.support · max(meta.inner_steps, 1) +
meta.query)`` slices: each support slice once per inner step it goes through
forward+backward (with 0 inner steps the support set still goes once through
the encoder, forward and backward, and counts once), each query slice once.
The engine stops at the first episode that reaches ``train.budget``: the last
one may overshoot by less than one episode (``metrics.cost.trained_slices`` is
the exact count).

**Seen tasks at test time** (:meth:`reconstructor`, also used for validation):
no support set is given, so every slice is reconstructed with the embedding of
its *own* zero-filled image (on-the-fly, per sample: the network's default
without an ``embedding``; a slice's output does not depend on its
batch-mates), with the meta-learned (un-adapted) ω.

**Unseen contexts** (:meth:`adapt_path`, the same support set and step counts as
every method): z is the mean embedding of the support images (encoder frozen);
then by ``meta.test_mode``:

* ``on-the-fly`` — no gradient step at all, whatever ``steps`` is: the
  kernels come from z alone (the metrics for every step count are then
  identical, which is what this mode is);
* ``hyper`` — steps on ω;
* ``all`` — steps on θ and ω.

Two rules take the steps (:meth:`adapt_rules`): ``inner``, KM-MAML's meta-learned
rule (SGD at ``meta.inner_lr``, or the learned per-tensor rates with
``meta.inner_lr = "learned"``), and ``finetune`` (Adam at a chosen lr). Which
rule, lr and step count is chosen on seen-context validation data, like every
method's (:mod:`mrbench.evaluation.adaptation`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..data.dataset import Sample
from ..errors import MrbenchError
from .base import StepResult, finetune_path
from .meta import (
    Episodic,
    MetaOptions,
    inner_loop,
    inner_path,
)

TEST_MODES = {"on-the-fly": (), "hyper": ("hyper",), "all": ("base", "hyper")}  # groups adapted at test time


@dataclasses.dataclass
class KMMAMLOptions:
    """``[meta]`` keys of kmmaml only."""

    embedding: int = 256  # context embedding size
    rank: int = 1  # rank of the kernel modulation
    test_mode: str = "hyper"  # at test time: on-the-fly | hyper | all

    def check(self, key):
        for name in ("embedding", "rank"):
            if not getattr(self, name) > 0:
                raise MrbenchError(f"{key(name)}: must be > 0")
        if self.test_mode not in TEST_MODES:
            raise MrbenchError(f"{key('test_mode')}: must be {', '.join(TEST_MODES)}, got {self.test_mode!r}")


def kmunet_kwargs(cfg) -> dict:
    """KMUNet constructor arguments: the ``unet`` backbone's size for this configuration
    (``model.size`` preset at the U-Net width, explicit ``model.*`` values), ``meta.embedding``
    and ``meta.rank``."""
    kw = cfg.model.backbone_kwargs("km-unet")  # chans, pools
    return dict(**kw, embedding=cfg.meta.embedding, rank=cfg.meta.rank)


def group_names(net: nn.Module, groups) -> list[str]:
    """Parameter names of ``net`` in the given groups (``base``, ``hyper``, ``encoder``)."""
    prefixes = tuple(f"{g}." for g in groups)
    return [n for n, _ in net.named_parameters() if n.startswith(prefixes)]


def embedded_image(net: nn.Module, tensors, batch: Sample, z: torch.Tensor) -> torch.Tensor:
    """The km-unet's complex image with ``tensors`` in place of its own, embedding ``z``."""
    return functional_call(net, dict(tensors), (batch.kspace, batch.mask, batch.num_low_frequencies), {"embedding": z})


def embedded_loss(z: torch.Tensor, loss: Callable) -> Callable:
    """The method's training loss as an inner/outer-loop loss, the context embedding fixed to ``z``."""

    def fn(net, tensors, batch):
        return loss(lambda b: embedded_image(net, tensors, b, z), batch).mean()

    return fn


class KMMAML(Episodic):
    name = "kmmaml"
    support_always = True  # the context embedding reads the support set even without an inner step
    backbones = ("km-unet", "unet")  # unet: the same base network, modulated
    options = {"meta": (MetaOptions, KMMAMLOptions)}

    @classmethod
    def network(cls, cfg) -> tuple[str, dict]:
        """Always the kernel-modulated U-Net (:func:`kmunet_kwargs`)."""
        return "km-unet", kmunet_kwargs(cfg)

    def __init__(self, plan, tasks, scarce, make_backbone, loss, opts=None):
        super().__init__(plan, tasks, scarce, make_backbone, loss, opts)
        self.models["net"] = make_backbone()
        self.hyper_names = group_names(self.models["net"], ("hyper",))
        self.make_inner_rates(self.hyper_names)

    def step(self, source) -> StepResult:
        m = self.opts
        net = self.models["net"]
        params = dict(net.named_parameters())
        buffers = dict(net.named_buffers())

        def query_loss(support, query):
            z = net.context_embedding(support.kspace)
            loss = embedded_loss(z, self.loss)
            fast = inner_loop(
                net, params, buffers, support, m.inner_steps, self.inner_rates(), m.order, self.hyper_names, loss=loss
            )
            return loss(net, {**fast, **buffers}, query)  # grads into θ, ω, encoder

        return self.episode_step(source, query_loss)

    # -- inference
    def model_key(self, task: int) -> str:
        return "net"

    # reconstructor(t): the base class's — the km-unet without an embedding (per-sample, on-the-fly)

    def adapt_rules(self) -> tuple[str, ...]:
        """``inner``: KM-MAML's own rule (SGD at the meta-learned or fixed inner rate on the
        ``meta.test_mode`` groups, embedding z of the support set); ``finetune``: Adam at a
        chosen lr on the same groups with the same z."""
        return ("inner", "finetune")

    def adapt_path(self, ctx, support, step_counts, lr: float, rule: str = "inner"):
        """z is the mean embedding of the support images (encoder frozen); ``on-the-fly``
        adapts nothing (every step count gives the 0-step network)."""
        if rule not in self.adapt_rules():
            raise ValueError(f"kmmaml has no adaptation rule {rule!r}")
        m = self.opts
        net = copy.deepcopy(self.models["net"])
        net.eval()
        with torch.no_grad():
            z = net.context_embedding(support.kspace)
        names = group_names(net, TEST_MODES[m.test_mode])

        def forward(model, batch, tensors=None):
            if tensors is not None:
                return embedded_image(model, tensors, batch, z)
            return model(batch.kspace, batch.mask, batch.num_low_frequencies, embedding=z)

        with self.loss.adapting_to(ctx):
            yield from self._adapt_path(net, names, z, forward, support, step_counts, lr, rule)

    def _adapt_path(self, net, names, z, forward, support, step_counts, lr, rule):
        if not names:  # on-the-fly
            for k in sorted(set(step_counts)):
                yield k, (lambda batch: self.loss.reconstruct(lambda b: forward(net, b), batch))
        elif rule == "inner":
            for k, tensors in inner_path(
                net,
                names,
                support,
                step_counts,
                self.inner_rates(),
                loss=embedded_loss(z, self.loss),
                batch=self.plan.adapt_batch,
            ):
                yield k, (lambda batch, t=tensors: self.loss.reconstruct(lambda b: forward(net, b, t), batch))
        else:
            wanted = set(names)
            params = [p for n, p in net.named_parameters() if n in wanted]
            yield from finetune_path(
                net, support, step_counts, lr, forward, self.loss, params, batch=self.plan.adapt_batch
            )
