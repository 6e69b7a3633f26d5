"""Multi-task loss weightings, one small class each, looked up by name in :data:`WEIGHTINGS`.

A weighting turns the per-task losses of one training step into what is
back-propagated. It is independent of the architecture (LibMTL's split:
weighting × architecture, one trainer), an ``nn.Module`` so that learned
weights (``uncert``'s s_t, ``gradnorm``'s w_t) are trained by the engine's
optimiser and, like running statistics (``dwa``'s epoch means, kept in
buffers), saved in checkpoints and restored on ``--resume``.

Interface (every weighting)::

    w = WEIGHTINGS[name](num_tasks, opts, task_sizes=[n_0, …], inverse_frequency=False)
    total = w.combine(losses, counts)        # scalar, differentiable; no state change
    value = w.backward(losses, counts, model)  # what a training step calls: backward + state
    w.weights()                              # {"weight/<t>": …} for TensorBoard
    w.end_epoch(mean_task_losses)            # DWA's epoch boundary (others: no-op)

* ``losses``: (T,) per-task mean losses of the batch (``l1_per_sample``
  averaged over the task's samples; any value where the task is absent);
* ``counts``: (T,) int, the task's samples in the batch; absent tasks
  (count 0) contribute nothing — not even ``uncert``'s s_t/2 term;
* ``model``: the network, for weightings that need per-task gradients
  (``pcgrad``: all parameters; ``gradnorm``: ``model.last_shared_layer()``).

Formulas (docs/design.md §5.5), with P the tasks present in the batch:

* ``naive``: L = Σ_{t∈P} c_t L_t with c_t = 1 (stratified sampling). With
  uniform sampling (``inverse_frequency``) c_t = (b_t / B)·(N / n_t): b_t of
  the batch's B samples are task t's, n_t of the N training slices. This is
  the per-slice inverse-frequency weight ω_t = N/(T n_t) applied to the
  batch mean (L = (T/B) Σ_i ω_{t(i)} ℓ_i), whose expectation over uniform
  batches is Σ_t E[L_t] — every task counts equally however scarce it is.
* ``uncert`` (Kendall, Gal & Cipolla, CVPR 2018, homoscedastic uncertainty):
  L = Σ_{t∈P} L_t / (2 e^{s_t}) + s_t / 2, s_t = log σ_t² learned (init 0).
* ``dwa`` (Liu, Johns & Davison, CVPR 2019, Dynamic Weight Average):
  λ_t = K exp(r_t / T) / Σ_i exp(r_i / T), r_t = L̄_t(e−1) / L̄_t(e−2) on the
  raw per-task epoch-mean losses, T = ``mtl.dwa_temperature``, K = number of
  tasks; λ_t = 1 during the first two epochs. L = Σ_{t∈P} λ_t L_t.
  An *epoch* is a fixed number of training slices: ``sum(task_sizes)``, the
  training slices of all tasks (whatever the sampling); it ends after the
  step that crosses the boundary. L̄_t(e) is the mean per-sample loss of
  task t's samples in epoch e (a task absent for a whole epoch gets r_t = 1).
* ``pcgrad`` (Yu et al., NeurIPS 2020, gradient surgery): per-task gradients
  g_t of the naive-weighted losses c_t L_t; on the parameters that at least
  two tasks' gradients reach (are non-zero on: the shared ones), each g_i is projected, against the other
  tasks' original gradients in a random order, g_i ← g_i − (g_i·g_j/|g_j|²) g_j
  whenever g_i·g_j < 0; the sum of the projected g_i is the gradient.
  Parameters only one task reaches (task-specific ones) get that task's
  gradient unchanged.
* ``gradnorm`` (Chen et al., ICML 2018): learned weights w_t (init 1,
  renormalised to Σ_t w_t = T at every step) and L = Σ_{t∈P} w_t L_t for the
  network. On W = the last shared layer, G_t = w_t ‖∇_W L_t‖, Ḡ = mean_P G_t,
  L̃_t = L_t / L_t(0) (L_t(0): the task's first loss), r_t = L̃_t / mean_P L̃;
  the weights get the gradient of L_grad = Σ_{t∈P} |G_t − Ḡ r_t^α| (target
  held constant), α = ``mtl.gradnorm_alpha``, and are stepped by the
  engine's optimiser with everything else.

``pcgrad`` and ``gradnorm`` do their own backward passes inside
:meth:`Weighting.backward`; the engine then clips and steps as usual.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import MrbenchError
from ..registry import Registry

__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "Naive",
    "Uncertainty",
    "DWA",
    "PCGrad",
    "GradNorm",
    "make_weighting",
    "pcgrad_project",
]


@dataclass
class UncertaintyOptions:
    """``[mtl]`` keys of ``uncert``."""

    uncert_form: str = "laplace"  # laplace (L1 losses: Σ L_t/e^{s_t} + s_t) | gaussian (Σ L_t/(2e^{s_t}) + s_t/2)
    uncert_init: str = "loss"  # loss: s_t starts at its optimum log L_t(first batch) | zero: s_t = 0

    def check(self, key):
        if self.uncert_form not in ("laplace", "gaussian"):
            raise MrbenchError(f"{key('uncert_form')}: must be laplace or gaussian, got {self.uncert_form!r}")
        if self.uncert_init not in ("loss", "zero"):
            raise MrbenchError(f"{key('uncert_init')}: must be loss or zero, got {self.uncert_init!r}")


@dataclass
class DWAOptions:
    """``[mtl]`` keys of ``dwa``."""

    dwa_temperature: float = 2.0
    dwa_period: float = 0.1  # a DWA "epoch" as a share of the budget (0 = one pass over the training slices)

    def check(self, key):
        if not self.dwa_temperature > 0:
            raise MrbenchError(f"{key('dwa_temperature')}: must be > 0")
        if not 0 <= self.dwa_period <= 0.5:
            raise MrbenchError(
                f"{key('dwa_period')}: must be in [0, 0.5] (DWA needs ≥ 2 periods), got {self.dwa_period}"
            )


@dataclass
class GradNormOptions:
    """``[mtl]`` keys of ``gradnorm``."""

    gradnorm_alpha: float = 1.5

    def check(self, key):
        if not self.gradnorm_alpha >= 0:
            raise MrbenchError(f"{key('gradnorm_alpha')}: must be ≥ 0")


class Weighting(nn.Module):
    """Base class: the naive coefficients c_t, the default backward and the logging hook."""

    name: ClassVar[str] = "base"
    options: ClassVar[dict[str, type]] = {}  # config section → dataclass of this weighting's keys

    def __init__(
        self,
        num_tasks: int,
        opts=None,
        task_sizes: Sequence[int] | None = None,
        inverse_frequency: bool = False,
    ):
        super().__init__()
        self.num_tasks = num_tasks
        self.opts = opts  # the [mtl] section (the weighting's own keys)
        self.task_sizes = [int(n) for n in task_sizes] if task_sizes is not None else None
        if inverse_frequency and self.task_sizes is None:
            raise ValueError("inverse-frequency weights need task_sizes")
        self.inverse_frequency = inverse_frequency
        if self.task_sizes is not None and len(self.task_sizes) != num_tasks:
            raise ValueError(f"task_sizes has {len(self.task_sizes)} entries for {num_tasks} tasks")

    # -- helpers
    def coefficients(self, counts: torch.Tensor) -> torch.Tensor:
        """Naive c_t: 1, or (b_t/B)(N/n_t) with inverse frequency (0 for absent tasks)."""
        counts = counts.to(torch.float32)
        present = (counts > 0).to(torch.float32)
        if not self.inverse_frequency:
            return present
        sizes = torch.tensor(self.task_sizes, dtype=torch.float32, device=counts.device).clamp_min(1)
        return counts / counts.sum().clamp_min(1) * (sizes.sum() / sizes)

    @staticmethod
    def _masked(losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Losses with absent tasks' entries replaced by 0 (no NaN leaks into the sum)."""
        return torch.where(counts > 0, losses, torch.zeros_like(losses))

    # -- interface
    def combine(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, losses: torch.Tensor, counts: torch.Tensor) -> None:
        """Update running statistics after a training step (DWA)."""

    def end_epoch(self, mean_task_losses: torch.Tensor) -> None:
        """Epoch boundary (DWA); a no-op for the others."""

    def backward(self, losses: torch.Tensor, counts: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Back-propagate this step's loss into ``.grad``; returns the (detached) total."""
        total = self.combine(losses, counts)
        total.backward()
        self.observe(losses.detach(), counts)
        return total.detach()

    def task_weights(self) -> torch.Tensor:
        """(T,) the current per-task weights (what :meth:`weights` logs)."""
        return torch.ones(self.num_tasks)

    def weights(self) -> dict[str, float]:
        return {f"weight/{t}": float(w) for t, w in enumerate(self.task_weights())}


class Naive(Weighting):
    """``naive``: L = Σ_t c_t L_t (c_t = 1, or inverse frequency under uniform sampling)."""

    name = "naive"

    def combine(self, losses, counts):
        return (self.coefficients(counts).to(losses.dtype) * self._masked(losses, counts)).sum()

    def task_weights(self):
        if not self.inverse_frequency:
            return torch.ones(self.num_tasks)
        sizes = torch.tensor(self.task_sizes, dtype=torch.float32).clamp_min(1)
        return sizes.sum() / (self.num_tasks * sizes)  # ω_t = N / (T n_t)


class Uncertainty(Weighting):
    """``uncert`` (Kendall et al. 2018), s_t learned:

    * ``gaussian``: L = Σ_t L_t / (2 e^{s_t}) + s_t / 2 (s_t = log σ_t², the paper's form for L2);
    * ``laplace`` (default; mrbench's losses are L1): L = Σ_t L_t / e^{s_t} + s_t (s_t = log b_t).

    Both have their optimum at s_t = log L_t. mrbench's normalised L1 losses are ~0.01–0.1,
    so that optimum is about −3 to −5: from s_t = 0, Adam at the network's learning rate moved
    s_t by ~0.45 in a demo run and the weights stayed near their start. With ``uncert_init =
    "loss"`` (default) each s_t starts at log L_t of the first batch that has the task, so the
    weighting acts from the first step and then tracks the losses as they fall.
    """

    name = "uncert"
    options = {"mtl": UncertaintyOptions}

    def __init__(self, num_tasks, opts=None, task_sizes=None, inverse_frequency=False):
        super().__init__(num_tasks, opts, task_sizes, inverse_frequency)
        opts = opts or UncertaintyOptions()
        self.laplace = opts.uncert_form == "laplace"
        self.init_from_loss = opts.uncert_init == "loss"
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))
        self.register_buffer("started", torch.zeros(num_tasks, dtype=torch.bool))

    def combine(self, losses, counts):
        present = counts > 0
        if self.init_from_loss and bool((present & ~self.started).any()):
            with torch.no_grad():
                fresh = present & ~self.started
                start = torch.log(losses.detach().to(self.log_vars).clamp_min(1e-8))
                self.log_vars.copy_(torch.where(fresh.to(self.log_vars.device), start, self.log_vars))
                self.started |= fresh.to(self.started.device)
        s = self.log_vars.to(losses.dtype)
        scale = 1.0 if self.laplace else 0.5
        return (present.to(losses.dtype) * scale * (self._masked(losses, counts) * torch.exp(-s) + s)).sum()

    def task_weights(self):
        return ((1.0 if self.laplace else 0.5) * torch.exp(-self.log_vars.detach())).cpu()

    def weights(self):
        out = super().weights()
        out.update({f"log_var/{t}": float(s) for t, s in enumerate(self.log_vars.detach())})
        return out


class DWA(Weighting):
    """``dwa`` (Liu et al. 2019): λ_t = K softmax(r / T)_t, r_t = L̄_t(e−1)/L̄_t(e−2); 1 for two epochs.

    State (buffers, so checkpoints carry it): slices seen, the current epoch's
    per-task loss sums and sample counts, the two previous epochs' means,
    the number of finished epochs and the current λ.
    """

    name = "dwa"
    options = {"mtl": DWAOptions}

    def __init__(
        self,
        num_tasks,
        opts=None,
        task_sizes=None,
        inverse_frequency=False,
        epoch_slices: int | None = None,
        budget: int | None = None,
    ):
        super().__init__(num_tasks, opts, task_sizes, inverse_frequency)
        period = (opts or DWAOptions()).dwa_period
        if epoch_slices is None and budget and period > 0:
            epoch_slices = round(period * budget)  # a data epoch (1152 slices) outlasted a demo run
        if epoch_slices is None:
            if self.task_sizes is None:
                raise ValueError("dwa needs task_sizes (an epoch = the training slices of all tasks) or epoch_slices")
            epoch_slices = sum(self.task_sizes)
        self.epoch_slices = max(1, int(epoch_slices))
        self.temperature = float((opts or DWAOptions()).dwa_temperature)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("loss_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(num_tasks, dtype=torch.long))
        self.register_buffer("prev1", torch.full((num_tasks,), math.nan, dtype=torch.float64))  # L̄(e−1)
        self.register_buffer("prev2", torch.full((num_tasks,), math.nan, dtype=torch.float64))  # L̄(e−2)
        self.register_buffer("lambdas", torch.ones(num_tasks))

    def combine(self, losses, counts):
        lam = self.lambdas.to(device=losses.device, dtype=losses.dtype)
        return (lam * (counts > 0).to(losses.dtype) * self._masked(losses, counts)).sum()

    def observe(self, losses, counts):
        counts = counts.to(self.loss_count.device)
        self.loss_sum += self._masked(losses.detach().to(self.loss_sum), counts) * counts
        self.loss_count += counts
        self.seen += int(counts.sum())
        if int(self.seen) >= (int(self.epochs) + 1) * self.epoch_slices:
            means = torch.where(
                self.loss_count > 0,
                self.loss_sum / self.loss_count.clamp_min(1),
                torch.full_like(self.loss_sum, math.nan),
            )
            self.end_epoch(means)
            self.loss_sum.zero_()
            self.loss_count.zero_()

    def end_epoch(self, mean_task_losses):
        mean = torch.as_tensor(mean_task_losses, dtype=torch.float64, device=self.prev1.device)
        self.prev2.copy_(self.prev1)
        self.prev1.copy_(mean)
        self.epochs += 1
        if int(self.epochs) >= 2:
            r = self.prev1 / self.prev2
            r = torch.where(torch.isfinite(r), r, torch.ones_like(r))
            self.lambdas.copy_((self.num_tasks * torch.softmax(r / self.temperature, dim=0)).to(self.lambdas))

    def task_weights(self):
        return self.lambdas.detach().cpu()


def pcgrad_project(grads: Sequence[torch.Tensor], order: Sequence[Sequence[int]] | None = None) -> list[torch.Tensor]:
    """PCGrad's projections of flattened per-task gradients (Yu et al. 2020, Alg. 1).

    ``order[i]``: the order in which task i is projected against the others
    (default: increasing). g_i ← g_i − (g_i·g_j / |g_j|²) g_j when g_i·g_j < 0,
    with the *original* g_j. Returns the projected g_i (their sum is PCGrad's
    update).
    """
    n = len(grads)
    out = []
    for i in range(n):
        g = grads[i].clone()
        for j in order[i] if order is not None else range(n):
            if j == i:
                continue
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / grads[j].square().sum().clamp_min(1e-30) * grads[j]
        out.append(g)
    return out


class PCGrad(Weighting):
    """``pcgrad`` (Yu et al. 2020): project away conflicting task gradients on the shared parameters."""

    name = "pcgrad"

    def combine(self, losses, counts):
        return (self.coefficients(counts).to(losses.dtype) * self._masked(losses, counts)).sum()

    def backward(self, losses, counts, model=None):
        present = [t for t in range(self.num_tasks) if int(counts[t]) > 0]
        if model is None or len(present) < 2:
            return super().backward(losses, counts, model)
        coef = self.coefficients(counts).to(losses.dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        per_task = [
            torch.autograd.grad(coef[t] * losses[t], params, retain_graph=True, allow_unused=True) for t in present
        ]
        # a parameter is shared when at least two tasks' gradients reach it (are non-zero):
        # autograd returns zeros, not None, for another task's parameters when the
        # per-task losses come out of one graph, so "reached" means non-zero
        reached = [[g[i] is not None and bool(g[i].any()) for g in per_task] for i in range(len(params))]
        shared = [i for i in range(len(params)) if sum(reached[i]) >= 2]
        if shared:
            flat = [torch.cat([g[i].reshape(-1) for i in shared]) for g in per_task]
            order = [torch.randperm(len(present)).tolist() for _ in present]  # torch RNG: saved by the engine
            summed = torch.stack(pcgrad_project(flat, order)).sum(0)
            offset = 0
            for i in shared:
                n = params[i].numel()
                _accumulate(params[i], summed[offset : offset + n].view_as(params[i]))
                offset += n
        shared_set = set(shared)
        for i, p in enumerate(params):
            if i in shared_set:
                continue
            gs = [g[i] for g, r in zip(per_task, reached[i]) if r]
            if gs:
                _accumulate(p, torch.stack(gs).sum(0))
        return self.combine(losses.detach(), counts)

    def task_weights(self):
        return torch.ones(self.num_tasks)


def _accumulate(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g.detach())


class GradNorm(Weighting):
    """``gradnorm`` (Chen et al. 2018): weights w_t learned to balance ‖∇_W w_t L_t‖ on the last shared layer."""

    name = "gradnorm"
    options = {"mtl": GradNormOptions}

    def __init__(self, num_tasks, opts=None, task_sizes=None, inverse_frequency=False):
        super().__init__(num_tasks, opts, task_sizes, inverse_frequency)
        self.alpha = float((opts or GradNormOptions()).gradnorm_alpha)
        self.task_weight = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.full((num_tasks,), math.nan))

    def renormalise(self) -> None:
        """w ← T·w/Σw (weights kept positive)."""
        with torch.no_grad():
            w = self.task_weight.clamp_min(1e-6)
            self.task_weight.copy_(w * (self.num_tasks / w.sum()))

    def combine(self, losses, counts):
        w = self.task_weight.to(losses.dtype)
        return (w * (counts > 0).to(losses.dtype) * self._masked(losses, counts)).sum()

    def backward(self, losses, counts, model=None):
        self.renormalise()
        present = [t for t in range(self.num_tasks) if int(counts[t]) > 0]
        with torch.no_grad():
            for t in present:
                if torch.isnan(self.initial_losses[t]):
                    self.initial_losses[t] = losses[t].detach().to(self.initial_losses)
        layer = list(model.last_shared_layer()) if model is not None and hasattr(model, "last_shared_layer") else []
        w_grad = None
        if layer and len(present) >= 2:
            norms = []
            for t in present:
                gs = torch.autograd.grad(losses[t], layer, retain_graph=True, allow_unused=True)
                norms.append(
                    torch.sqrt(
                        sum((g.square().sum() for g in gs if g is not None), torch.zeros((), device=losses.device))
                    )
                )
            idx = torch.tensor(present, device=self.task_weight.device)
            G = self.task_weight.index_select(0, idx) * torch.stack(norms).detach().to(self.task_weight)
            with torch.no_grad():
                ratio = losses.detach()[present].to(self.task_weight) / self.initial_losses[idx].clamp_min(1e-12)
                r = ratio / ratio.mean()
                target = G.mean() * r.pow(self.alpha)
            l_grad = (G - target).abs().sum()
            (w_grad,) = torch.autograd.grad(l_grad, [self.task_weight])
        w = self.task_weight.detach().to(losses.dtype)
        total = (w * (counts > 0).to(losses.dtype) * self._masked(losses, counts)).sum()
        total.backward()
        if w_grad is not None:
            _accumulate(self.task_weight, w_grad)
        return total.detach()

    def task_weights(self):
        w = self.task_weight.detach().clamp_min(1e-6)
        return (w * (self.num_tasks / w.sum())).cpu()


#: Weighting name → class (constructor ``(num_tasks, opts, task_sizes, inverse_frequency)``).
WEIGHTINGS: Registry[type[Weighting]] = Registry(
    "weighting", {cls.name: cls for cls in (Naive, Uncertainty, DWA, GradNorm, PCGrad)}
)


def make_weighting(
    name: str, num_tasks: int, opts=None, task_sizes=None, inverse_frequency: bool = False, budget: int | None = None
) -> Weighting:
    """Build weighting ``name``; an unknown name lists the valid ones. ``budget`` (slices) lets a
    weighting size its periods to the run (DWA)."""
    cls = WEIGHTINGS.lookup(name)
    if budget is not None and "budget" in inspect.signature(cls).parameters:
        return cls(num_tasks, opts, task_sizes, inverse_frequency, budget=budget)
    return cls(num_tasks, opts, task_sizes, inverse_frequency)
