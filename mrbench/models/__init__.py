"""Reconstruction backbones and their registry.

Every backbone has the same forward signature, so methods are backbone-agnostic::

    forward(kspace, mask, num_low_frequencies) -> image

* ``kspace``: complex64 (B, C, H, W) under-sampled centred k-space, already
  masked (C = 1 single-coil, C > 1 multi-coil);
* ``mask``: float32 (B, 1, H, W), 1 where sampled (1-D column pattern
  repeated over rows, or a 2-D point pattern);
* ``num_low_frequencies``: int64 (B,) fully sampled centre columns (ACS);
* returns complex64 (B, H, W): the coil-combined image, full size. Single-coil
  it carries the phase, so the measurements can be recomputed from it
  (:class:`~mrbench.physics.MRIOperator`, the self-supervised losses); multi-coil
  backbones return the RSS magnitude with zero phase (fastMRI's multi-coil
  targets are RSS). The magnitude is taken, and centre-cropped to the target,
  in one place: :func:`mrbench.models.outputs.magnitude`.

Inputs may have any scale; backbones normalise internally per sample.
"""

from __future__ import annotations

import inspect

from torch import nn

from mrbench.errors import MrbenchError
from mrbench.models.km_unet import KMUNet
from mrbench.models.modl import MoDL
from mrbench.models.mtl_varnet import MTLVarNet
from mrbench.models.rim import RIM
from mrbench.models.unet import NormUNet, UNet, UNetRecon
from mrbench.models.varnet import SensitivityModel, VarNet, VarNetCascade
from mrbench.registry import Registry

__all__ = [
    "BACKBONES",
    "SIZES",
    "build_backbone",
    "KMUNet",
    "MoDL",
    "NormUNet",
    "RIM",
    "SensitivityModel",
    "UNet",
    "UNetRecon",
    "VarNet",
    "VarNetCascade",
]

BACKBONES: Registry[type[nn.Module]] = Registry(
    "backbone",
    {
        "unet": UNetRecon,
        "varnet": VarNet,
        "mtl-varnet": MTLVarNet,  # needs num_tasks (built by method mtl)
        "km-unet": KMUNet,  # KM-MAML's kernel-modulated U-Net; without an embedding it uses each sample's own
        "modl": MoDL,  # Aggarwal et al. 2019: shared CNN denoiser + CG data consistency, model.iterations
        "rim": RIM,  # Putzky & Welling 2017: recurrent inference machine, model.iterations time steps
    },
)

#: VarNet sizes: ``demo`` runs on a laptop CPU; ``paper`` is fastMRI's E2E-VarNet.
SIZES: dict[str, dict[str, int]] = {
    "demo": dict(cascades=4, chans=8, pools=3, sens_chans=4, sens_pools=2),
    "paper": dict(cascades=12, chans=18, pools=4, sens_chans=8, sens_pools=4),
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Instantiate backbone ``name`` with constructor keyword arguments ``kwargs``.

    Raises :class:`MrbenchError` for an unknown name (listing the valid ones)
    or for keyword arguments the constructor does not take (naming them and
    the accepted ones).
    """
    try:
        cls = BACKBONES[name]
    except (KeyError, TypeError):
        raise MrbenchError(f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}") from None
    params = inspect.signature(cls.__init__).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p for p in params if p != "self" and params[p].kind in named]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MrbenchError(
            f"backbone {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    return cls(**kwargs)
