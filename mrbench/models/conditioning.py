"""Conditioning a backbone on the acquisition: FiLM from learned prompts and/or header metadata.

The regime of the 2024–2025 "universal" reconstruction challenges (CMRxRecon 2024's winner
PromptMR+; SDUM, arXiv 2512.17137): one network for every contrast and sampling, modulated by a
context embedding, instead of one network per task (STL), per-task blocks (MTL) or per-task
weights found by adaptation (meta-learning). Two sources of the embedding
(``condition.on``):

* ``metadata`` — a small MLP over the acquisition numbers of the file's ISMRMRD header
  (:data:`~mrbench.data.fastmri_format.ACQUISITION_FIELDS`: TR, TE, TI, flip angle, field
  strength) and the sampling (mask kind, acceleration, centre fraction) —
  :func:`metadata_features`. Numbers, not contrast IDs, so an unseen contrast with known
  parameters lands at a meaningful place in the embedding space;
* ``prompt`` — input-adaptive prompts (PromptMR's idea): each cascade has a bank of learned
  prompt vectors, mixed by softmax weights predicted from that cascade's current image
  (:class:`PromptBank`); needs nothing from the file. PromptMR's prompts are spatial maps
  concatenated to decoder features; here they are vectors turned into FiLM parameters, the
  same per-channel modulation the metadata path uses, so the two compare like with like;
* ``both`` — the two embeddings concatenated.

The modulation is FiLM (Perez et al. 2018) placed as conditional instance normalisation
(Dumoulin et al. 2017): after *every* instance norm of the regulariser's U-Net,
``x ← (1 + γ_c) x + β_c`` per sample and channel. After the norm — not before it — because a
norm right after a per-channel scale and shift would cancel them (KM-MAML's output modulation
failed that way). Each cascade has its own linear head from the embedding to its (γ, β),
initialised to zero, so the untrained conditioned network is the plain one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrbench.data.masks import MASKS
from mrbench.models.unet import InstanceNorm, NormUNet, UNetRecon, data_consistency
from mrbench.models.varnet import VarNet, VarNetCascade
from mrbench.physics import MRIOperator, zero_filled

__all__ = [
    "CONDITION_SOURCES",
    "ConditionedNormUNet",
    "ConditionedUNet",
    "ConditionedVarNet",
    "FiLMInstanceNorm",
    "PromptBank",
    "condition_backbone",
    "metadata_features",
    "num_metadata_features",
]

CONDITION_SOURCES = ("prompt", "metadata", "both")
_MASK_KINDS = tuple(sorted(MASKS))


def num_metadata_features() -> int:
    return 11 + len(_MASK_KINDS) + 2


def metadata_features(acquisition: torch.Tensor, contexts: Sequence) -> torch.Tensor:
    """(B, F) numbers for the metadata MLP from the header values (B, 5 or 6) — TR, TE, TI (ms),
    flip (°), field strength (T) and the :data:`~mrbench.data.fastmri_format.FAMILIES` index of
    the sequence type, NaN where absent — and each sample's sampling context.

    Features: log TR/1 s, log TE/100 ms, TI present, log TI/1 s (0 if absent), sin and cos of
    the flip angle, field strength present and B0/3 T, the sequence family one-hot — the
    header's sequence type where it names one, else the numbers' (inversion recovery: TI
    present; gradient echo: no TI and flip < 80°; spin echo: the rest) — the mask kind
    one-hot, log₂ acceleration / 2 and 10 × centre fraction.
    """
    acq = acquisition.to(torch.float32)
    tr, te, ti, flip, b0 = acq[..., :5].unbind(-1)
    has_ti, has_b0 = ~torch.isnan(ti), ~torch.isnan(b0)
    zero = torch.zeros_like(tr)
    rad = torch.deg2rad(flip)
    guess = torch.where(has_ti, 1.0, torch.where(flip < 80, 2.0, 0.0))  # ir / gre / se from the numbers
    named = acq[..., 5] if acq.shape[-1] > 5 else torch.full_like(tr, math.nan)
    family = torch.where(torch.isnan(named), guess, named).long()
    onehot = torch.nn.functional.one_hot(family, 3).float()  # se, ir, gre
    cols = [
        torch.log(tr / 1000.0),
        torch.log(te / 100.0),
        has_ti.float(),
        torch.where(has_ti, torch.log(ti / 1000.0), zero),
        torch.sin(rad),
        torch.cos(rad),
        has_b0.float(),
        torch.where(has_b0, b0 / 3.0, zero),
        onehot[:, 1],
        onehot[:, 2],
        onehot[:, 0],
    ]
    sampling = torch.tensor([_sampling_features(c) for c in contexts], dtype=torch.float32, device=acq.device)
    return torch.cat([torch.stack(cols, dim=-1), sampling], dim=-1)


@functools.cache
def _sampling_features(ctx) -> tuple[float, ...]:
    """A context's mask kind one-hot, log₂ acceleration / 2 and 10 × centre fraction (computed
    once per context, not at every training step)."""
    return (*(float(ctx.mask == k) for k in _MASK_KINDS), math.log2(ctx.acceleration) / 2, 10 * ctx.center_fraction)


class FiLMInstanceNorm(InstanceNorm):
    """Instance norm followed by ``(1 + γ) x + β`` per sample and channel when ``film`` holds
    ``(γ, β)`` (B, C) — set by :class:`ConditionedNormUNet` for the length of one forward pass."""

    film: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.film is None:
            return out
        gamma, beta = self.film
        return torch.addcmul(beta[..., None, None], out, 1.0 + gamma[..., None, None])


class ConditionedNormUNet(nn.Module):
    """A :class:`NormUNet` whose every instance norm is FiLM-modulated by an embedding.

    ``forward(z, cond)``: complex (B, n, H, W) and (B, E) → complex (B, n, H, W). The norms are
    swapped in place (same positions, so the U-Net's state-dict keys do not change)."""

    def __init__(self, net: NormUNet, embedding: int):
        super().__init__()
        self.net = net
        self.norms: list[FiLMInstanceNorm] = []
        for module in list(net.unet.modules()):
            for name, child in list(module.named_children()):
                if type(child) is InstanceNorm:
                    film = FiLMInstanceNorm(child.channels, child.eps)
                    setattr(module, name, film)
                    self.norms.append(film)
        self.sizes = [n.channels for n in self.norms]
        self.head = nn.Linear(embedding, 2 * sum(self.sizes))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        params = self.head(cond)
        gammas = params[:, : sum(self.sizes)].split(self.sizes, dim=1)
        betas = params[:, sum(self.sizes) :].split(self.sizes, dim=1)
        for norm, g, b in zip(self.norms, gammas, betas):
            norm.film = (g, b)
        try:
            return self.net(z)
        finally:
            for norm in self.norms:
                norm.film = None


class PromptBank(nn.Module):
    """``prompts`` learned vectors of size ``embedding``, mixed per sample by softmax weights
    predicted from the current complex image (B, 1, H, W): per-sample normalised real and
    imaginary parts → conv 3×3 → LeakyReLU → spatial mean → linear → softmax."""

    def __init__(self, prompts: int, embedding: int, width: int = 8):
        super().__init__()
        self.bank = nn.Parameter(torch.randn(prompts, embedding) / math.sqrt(embedding))
        self.conv = nn.Conv2d(2, width, 3, padding=1)
        self.select = nn.Linear(width, prompts)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, prompts) mixing weights."""
        parts = torch.cat([x.real, x.imag], dim=1)
        parts = parts / parts.flatten(1).std(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return F.softmax(self.select(F.leaky_relu(self.conv(parts), 0.2).mean(dim=(-2, -1))), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x) @ self.bank


def _metadata_encoder(embedding: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_metadata_features(), embedding), nn.LeakyReLU(0.2), nn.Linear(embedding, embedding)
    )


class _Conditioning(nn.Module):
    """The parts every conditioned backbone shares: the source, the metadata MLP, sizes."""

    condition_aware = True  # forward takes metadata features after the common arguments

    def _setup(self, on: str, embedding: int, prompts: int) -> int:
        if on not in CONDITION_SOURCES:
            raise ValueError(f"condition.on must be one of {', '.join(CONDITION_SOURCES)}, got {on!r}")
        self.on, self.embedding, self.prompts = on, embedding, prompts
        self.metadata = _metadata_encoder(embedding) if on in ("metadata", "both") else None
        return embedding * (2 if on == "both" else 1)

    def embed(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """The metadata embedding (B, E), or None when conditioning on prompts only."""
        if self.metadata is None:
            return None
        if features is None:
            raise ValueError("metadata conditioning needs the acquisition features")
        return self.metadata(features)


def _condition(meta: torch.Tensor | None, bank: PromptBank | None, image: torch.Tensor) -> torch.Tensor:
    parts = ([meta] if meta is not None else []) + ([bank(image)] if bank is not None else [])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class ConditionedCascade(VarNetCascade):
    """A VarNet cascade whose regulariser is FiLM-modulated by the metadata embedding and/or
    this cascade's own prompt mixture."""

    def __init__(self, cascade: VarNetCascade, cond_dim: int, bank: PromptBank | None):
        nn.Module.__init__(self)
        self.regulariser = ConditionedNormUNet(cascade.regulariser, cond_dim)
        self.eta = cascade.eta
        self.prompt = bank

    def forward(self, k: torch.Tensor, k0: torch.Tensor, op: MRIOperator, meta: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        image = op.to_image(k)
        reg = op.to_kspace(self.regulariser(image, _condition(meta, self.prompt, image)))
        return op.gradient_step(k, k0, reg, self.eta)


class ConditionedVarNet(_Conditioning):
    """A :class:`VarNet` with conditioned cascades; ``forward(kspace, mask, nlf, features)``."""

    def __init__(self, net: VarNet, on: str = "metadata", embedding: int = 32, prompts: int = 4):
        super().__init__()
        cond_dim = self._setup(on, embedding, prompts)
        use_prompt = on in ("prompt", "both")
        net.cascades = nn.ModuleList(
            ConditionedCascade(c, cond_dim, PromptBank(prompts, embedding) if use_prompt else None)
            for c in net.cascades
        )
        self.net = net

    def forward(self, kspace, mask, num_low_frequencies, features=None):
        return self.net.unroll(kspace, mask, num_low_frequencies, self.embed(features))


class ConditionedUNet(_Conditioning):
    """The ``unet`` backbone with its NormUNet conditioned (one prompt bank on the zero-filled
    image); the KM-MAML grid's comparison at equal backbone."""

    def __init__(self, net: UNetRecon, on: str = "metadata", embedding: int = 32, prompts: int = 4):
        super().__init__()
        cond_dim = self._setup(on, embedding, prompts)
        self.unet = ConditionedNormUNet(net.net, cond_dim)
        self.prompt = PromptBank(prompts, embedding) if on in ("prompt", "both") else None

    def forward(self, kspace, mask, num_low_frequencies, features=None):
        x0 = zero_filled(kspace)
        cond = _condition(self.embed(features), self.prompt, x0)
        return data_consistency(x0 + self.unet(x0, cond), kspace, mask)[:, 0]


def condition_backbone(net: nn.Module, on: str, embedding: int, prompts: int) -> nn.Module:
    """The conditioned form of a built ``varnet`` or ``unet`` backbone (its weights kept)."""
    if isinstance(net, VarNet):
        return ConditionedVarNet(net, on, embedding, prompts)
    if isinstance(net, UNetRecon):
        return ConditionedUNet(net, on, embedding, prompts)
    raise ValueError(f"no conditioned form of {type(net).__name__}; use model.backbone = varnet or unet")
