"""``ssdu``: self-supervision via data undersampling (Yaman et al. 2020; deepinv's
SplittingLoss with ``eval_split_input=False``).

The measured set Ω is split at random into Θ (what the network sees) and Λ = Ω ∖ Θ (what the
loss checks)::

    L = ‖ M_Λ (F f(y_Θ, Θ)) − y_Λ ‖₁   (mean over Λ, over the volume maximum)

At inference the network sees all of Ω. Λ takes a fraction ``loss.split_ratio`` (default 0.4,
Yaman et al.'s ρ) of the measured points outside the fully-sampled centre, which stays in Θ so
the network always has the low frequencies; with a 1-D (column) mask whole columns are split,
so Θ is a mask of the same kind. The draw uses torch's global generator, which checkpoints
store, so a resumed run draws the same splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MrbenchError
from .base import Loss, kspace_l1, operator, with_measurements


@dataclass
class SplitOptions:
    split_ratio: float = 0.4  # ssdu: fraction of the measured points (outside the ACS) held out for the loss

    def check(self, key):
        if not (0.0 < self.split_ratio < 1.0):
            raise MrbenchError(f"{key('split_ratio')}: " + f"must be in (0, 1), got {self.split_ratio}")


def acs_columns(mask: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, W) bool: the centred fully-sampled columns of each sample."""
    b, w = mask.shape[0], mask.shape[-1]
    cols = torch.arange(w, device=mask.device).view(1, w)
    n = num_low_frequencies.view(b, 1).to(mask.device)
    start = (w - n + 1) // 2
    return ((cols >= start) & (cols < start + n)).view(b, 1, 1, w)


def split_mask(
    mask: torch.Tensor, num_low_frequencies: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Θ, Λ): disjoint 0/1 masks with Θ + Λ = the measured mask, the ACS columns in Θ."""
    measured = mask > 0
    one_d = bool((mask == mask[..., :1, :]).all())  # constant along rows: a column mask
    shape = (*mask.shape[:-2], 1, mask.shape[-1]) if one_d else mask.shape
    draw = torch.rand(shape, generator=generator, device=mask.device) < ratio
    held = draw.expand_as(mask) & measured & ~acs_columns(mask, num_low_frequencies).expand_as(mask)
    lam = held.to(mask.dtype)
    return mask * (1 - lam), lam


class SSDU(Loss):
    name = "ssdu"
    options = {"loss": SplitOptions}

    def __call__(self, run, batch):
        theta, lam = split_mask(batch.mask, batch.num_low_frequencies, self.opts.split_ratio)
        x = run(with_measurements(batch, batch.kspace * theta, theta))
        return kspace_l1(operator(batch).A(x) - batch.kspace, lam, batch)


@dataclass
class Noise2InverseOptions:
    eval_splits: int = 4  # noise2inverse: splits averaged at inference

    def check(self, key):
        if self.eval_splits < 1:
            raise MrbenchError(f"{key('eval_splits')}: must be ≥ 1, got {self.eval_splits}")


class Noise2Inverse(SSDU):
    """``noise2inverse``: SSDU's training loss, and at inference the mean of the network over
    ``loss.eval_splits`` random splits, each seeing only its Θ (Hendriksen et al. 2020 for CT;
    deepinv's SplittingLoss with ``eval_split_input=True``). The inference splits come from a
    generator of their own (seed 0), so evaluation is deterministic and leaves the training
    random stream alone."""

    name = "noise2inverse"
    options = {"loss": (SplitOptions, Noise2InverseOptions)}

    def infer(self, run, batch):
        g = torch.Generator(device=batch.mask.device).manual_seed(0)
        out = 0
        n = self.opts.eval_splits
        for _ in range(n):
            theta, _ = split_mask(batch.mask, batch.num_low_frequencies, self.opts.split_ratio, g)
            out = out + run(with_measurements(batch, batch.kspace * theta, theta))
        return out / n


_DENSITY: dict[tuple, torch.Tensor] = {}


def sampling_density(ctx, shape: tuple[int, int], draws: int = 256) -> torch.Tensor:
    """P: the probability that each k-space point of an (H, W) slice is measured under the
    context's mask kind and acceleration, the mean of ``draws`` masks of fixed seeds (cached:
    a deterministic function of kind, acceleration, centre fraction and shape)."""
    key = (ctx.mask, float(ctx.acceleration), float(ctx.center_fraction), tuple(shape), draws)
    if key not in _DENSITY:
        func = ctx.mask_func()
        total = sum(func(shape, seed).mask for seed in range(draws))
        _DENSITY[key] = torch.from_numpy(total / draws).float()
    return _DENSITY[key]


class WeightedSSDU(SSDU):
    """``weighted-ssdu`` (Millard & Chiew 2023): SSDU seen as a Bernoulli special case of
    variable-density Noisier2Noise, with the loss on Λ weighted by (1 − K)^(−1/2),
    K = (1 − P)/(1 − P̃ P): P the sampling density of the acquisition's mask (per point,
    :func:`sampling_density`), P̃ = 1 − ``loss.split_ratio`` the probability that a measured
    point stays in the network's input. Sparsely sampled k-space, under-represented in Λ, weighs
    more: w = √((1 − P̃P) / (P(1 − P̃))). Each sample's density comes from its own context (the
    seen task it belongs to, or the context being adapted to)."""

    name = "weighted-ssdu"

    def weights(self, batch) -> torch.Tensor:
        keep = 1.0 - self.opts.split_ratio
        h, w = batch.mask.shape[-2:]
        out = []
        for ctx in self.sample_contexts(batch):
            if ctx is None:
                out.append(torch.ones(1, h, w))
                continue
            p = sampling_density(ctx, (h, w)).clamp(1e-3, 1.0)
            out.append((((1 - keep * p) / (p * (1 - keep))).sqrt()).unsqueeze(0))
        return torch.stack(out).to(batch.mask.device)

    def __call__(self, run, batch):
        theta, lam = split_mask(batch.mask, batch.num_low_frequencies, self.opts.split_ratio)
        x = run(with_measurements(batch, batch.kspace * theta, theta))
        return kspace_l1(operator(batch).A(x) - batch.kspace, lam * self.weights(batch), batch)
