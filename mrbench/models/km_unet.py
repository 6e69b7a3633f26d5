"""The ``km-unet`` backbone: KM-MAML's kernel-modulated U-Net (docs/design.md §4, §5.7).

Ramanarayanan et al. (2023), "Generalizing supervised deep learning MRI
reconstruction to multiple and unseen contrasts using meta-learning
hypernetworks". Three parameter groups, named by the submodules of
:class:`KMUNet` (the method addresses them by these prefixes):

* ``base`` — θ: a plain :class:`~mrbench.models.unet.UNetRecon` (zero-filled
  image → residual normalised U-Net → magnitude; single- and multi-coil alike).
  Its state dict *is* a ``unet`` backbone's state dict.
* ``hyper`` — ω: one :class:`KernelHyperNet` per 3×3 convolution of the base
  U-Net, in ``base.modules()`` order. It maps the context embedding z to
  ``a_j ∈ R^{C_in}``, ``b_j ∈ R^{C_out}`` (j ≤ r) through a small bottleneck
  (z → ``hidden`` → r·(C_in + C_out)); the conv's kernel
  ``W ∈ R^{C_out×C_in×3×3}`` is used as ``W' = W ⊙ M``,
  ``M = Σ_j b_j a_jᵀ`` broadcast over the 3×3 taps (rank ≤ r), with the output
  factor b applied after the conv's non-affine instance norm, which would
  otherwise cancel it (:func:`modulated_conv`). The transpose
  convolutions (2×2) and the final 1×1 convolution are not modulated.
* ``encoder`` — :class:`ContextEncoder`: a small CNN on the normalised
  zero-filled magnitude image → global average pool → linear to z
  (``embedding`` dims).

**Initialisation**: each hypernetwork's last layer has zero weights and a bias
giving ``a_j = 1`` for all j, ``b_1 = 1`` and ``b_{j>1} = 0``, so M = 1 exactly and
an untrained km-unet *is* its base U-Net (training starts from the plain
U-Net). With r > 1 the r terms start different (``b_1 = 1``, ``b_{j>1} = 0``),
so their gradients differ and they do not stay copies of one another.

**Which embedding** :meth:`KMUNet.forward` uses:

* ``embedding=None`` (the common backbone interface, e.g. when another method
  such as ``joint`` trains a km-unet, or for seen tasks at test time):
  *per sample*, from each sample's own zero-filled image (on-the-fly
  inference). The output of a sample does not depend on its batch-mates;
  every sample gets its own modulation (input and output channel scales
  around one plain convolution per layer).
* ``embedding`` of shape (E,) or (1, E): one context embedding for the whole
  batch (KM-MAML's episodes and test-time adaptation: the mean over a
  support set, see :meth:`KMUNet.context_embedding`);
* ``embedding`` of shape (B, E): per-sample embeddings given by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrbench.models.unet import _VAR_EPS, InstanceNorm, UNetRecon, data_consistency
from mrbench.physics import zero_filled

__all__ = ["ContextEncoder", "KernelHyperNet", "KMUNet", "modulated_conv", "kernel_modulation"]

Modulation = tuple[torch.Tensor, torch.Tensor]  # a (N, r, C_in), b (N, r, C_out)


def kernel_modulation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``M = Σ_j b_j a_jᵀ``: (N, r, C_in), (N, r, C_out) → (N, C_out, C_in)."""
    return torch.einsum("nro,nri->noi", b, a)


def modulated_conv(
    x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, norm: nn.Module | None = None
) -> torch.Tensor:
    """The kernel-modulated 3×3 convolution ``conv(x, W ⊙ M)``, ``M = Σ_j b_j a_jᵀ``, and the
    instance norm that follows it in the U-Net block.

    Written as ``Σ_j b_j ⊙ norm(conv(a_j ⊙ x, W))``: for rank 1, W ⊙ (b aᵀ) = diag(b)·W·diag(a),
    so the input factor a scales the input channels and the output factor b the output
    channels. Without a norm this *is* ``conv(x, W ⊙ M)`` for any rank. A non-affine instance
    norm directly after the conv would cancel every per-output-channel factor (b would get no
    gradient and change nothing), so b acts after the norm, as the scale of a conditional
    norm — the base network's norm stays non-affine and, at M = 1, the network is its base.

    ``x`` (B, C_in, H, W); ``weight`` (C_out, C_in, 3, 3); ``a`` (N, r, C_in), ``b`` (N, r, C_out)
    with N = 1 (one modulation for the batch) or N = B (per sample). One plain convolution
    over the B·r scaled inputs: no grouped or per-sample kernels are built.
    """
    bsz, cin, h, w = x.shape
    n, r = a.shape[:2]
    if n not in (1, bsz):
        raise ValueError(f"modulation for {n} samples, batch has {bsz}")
    xa = x.unsqueeze(1) * a[..., None, None].to(x.dtype)  # (B, r, C_in, H, W)
    y = F.conv2d(xa.reshape(bsz * r, cin, h, w), weight, padding=weight.shape[-1] // 2)
    if norm is not None:
        y = norm(y)
    y = y.view(bsz, r, y.shape[1], y.shape[2], y.shape[3]) * b[..., None, None].to(y.dtype)
    return y.sum(dim=1)


class KernelHyperNet(nn.Module):
    """z (N, E) → (a (N, r, C_in), b (N, r, C_out)) through a ``hidden``-wide bottleneck."""

    def __init__(self, embedding: int, cin: int, cout: int, rank: int = 1, hidden: int = 32):
        super().__init__()
        self.cin, self.cout, self.rank = cin, cout, rank
        self.fc1 = nn.Linear(embedding, hidden)
        self.fc2 = nn.Linear(hidden, rank * (cin + cout))
        with torch.no_grad():  # M = 1 at initialisation (module docstring)
            self.fc2.weight.zero_()
            bias = torch.zeros(rank, cin + cout)
            bias[:, :cin] = 1.0
            bias[0, cin:] = 1.0
            self.fc2.bias.copy_(bias.flatten())

    def forward(self, z: torch.Tensor) -> Modulation:
        out = self.fc2(F.leaky_relu(self.fc1(z), 0.2)).view(z.shape[0], self.rank, self.cin + self.cout)
        return out[..., : self.cin], out[..., self.cin :]


class ContextEncoder(nn.Module):
    """(B, H, W) magnitude image → (B, E) embedding.

    The image is standardised per sample (zero mean, unit std: the embedding
    is scale-free, like the reconstruction network), then three stride-2
    conv3×3 → LeakyReLU(0.2) stages (``chans``, 2·``chans``, 4·``chans``; no
    normalisation layers, which would remove the per-channel intensity levels
    that tell contrasts apart), a global average pool and a linear layer.
    """

    def __init__(self, embedding: int = 256, chans: int = 16):
        super().__init__()
        widths = [1, chans, 2 * chans, 4 * chans]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[-1], embedding)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.unsqueeze(1).float()
        var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True)
        x = (x - mean) / torch.sqrt(var + _VAR_EPS)
        return self.fc(self.features(x).mean(dim=(-2, -1)))


class KMUNet(nn.Module):
    """The ``km-unet`` backbone (module docstring). Common interface plus an optional embedding::

        forward(kspace, mask, num_low_frequencies, embedding=None) -> (B, H, W)

    ``chans``, ``pools``: the base U-Net (as the ``unet`` backbone);
    ``embedding``: size of z; ``rank``: r; ``hyper_hidden``: the hypernetworks'
    bottleneck; ``encoder_chans``: the context encoder's first width.
    """

    preset_width = 2  # model.size presets give a lone U-Net twice the VarNet width

    def __init__(
        self,
        chans: int = 16,
        pools: int = 3,
        embedding: int = 256,
        rank: int = 1,
        hyper_hidden: int = 32,
        encoder_chans: int = 16,
    ):
        super().__init__()
        if rank < 1 or embedding < 1:
            raise ValueError(f"KMUNet needs rank >= 1 and embedding >= 1, got rank={rank}, embedding={embedding}")
        self.chans, self.pools, self.embedding, self.rank = chans, pools, embedding, rank
        self.base = UNetRecon(chans, pools)
        self.hyper = nn.ModuleList(
            KernelHyperNet(embedding, conv.in_channels, conv.out_channels, rank, hyper_hidden)
            for conv in modulated_convs(self.base)
        )
        self.encoder = ContextEncoder(embedding, encoder_chans)

    # -- context
    def embed(self, kspace: torch.Tensor) -> torch.Tensor:
        """Per-sample embeddings (B, E) of the zero-filled magnitude images of masked ``kspace``."""
        return self.encoder(zero_filled(kspace).abs()[:, 0])

    def context_embedding(self, kspace: torch.Tensor) -> torch.Tensor:
        """One embedding (1, E) for a set of slices of one context: the mean over the set."""
        return self.embed(kspace).mean(dim=0, keepdim=True)

    def modulations(self, z: torch.Tensor) -> list[Modulation]:
        """(a, b) for every modulated conv, in forward order; ``z`` (E,), (1, E) or (B, E)."""
        z = z.reshape(1, -1) if z.dim() == 1 else z
        return [h(z) for h in self.hyper]

    def kernel_modulations(self, z: torch.Tensor) -> list[torch.Tensor]:
        """M (N, C_out, C_in) for every modulated conv (for inspection and tests)."""
        return [kernel_modulation(a, b) for a, b in self.modulations(z)]

    # -- reconstruction
    def forward(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        num_low_frequencies: torch.Tensor,
        embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x0 = zero_filled(kspace)
        z = self.encoder(x0.abs()[:, 0]) if embedding is None else embedding
        return self.forward_modulated(kspace, mask, self.modulations(z), x0=x0)

    def forward_modulated(
        self, kspace: torch.Tensor, mask: torch.Tensor, mods: Sequence[Modulation], x0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The base network with the given (a, b) per modulated conv (N = 1 or B each),
        followed by the ``unet`` backbone's single-coil data consistency."""
        x0 = zero_filled(kspace) if x0 is None else x0
        it = iter(mods)
        modulated = self.base.net(x0, block=lambda seq, x: _block(seq, x, it))
        out = data_consistency(x0 + modulated, kspace, mask)[:, 0]
        if next(it, None) is not None:
            raise ValueError("more modulations than modulated convolutions")
        return out


def modulated_convs(module: nn.Module) -> list[nn.Conv2d]:
    """The 3×3 convolutions of a U-Net in ``modules()`` order (= forward order for :class:`UNet`)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def _block(seq: nn.Sequential, x: torch.Tensor, mods: Iterator[Modulation]) -> torch.Tensor:
    """A U-Net block with each 3×3 conv (and the instance norm after it) modulated."""
    layers = list(seq)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
            a, b = next(mods)
            norm = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], InstanceNorm) else None
            x = modulated_conv(x, layer.weight, a, b, norm)
            i += 2 if norm is not None else 1
        else:
            x = layer(x)
            i += 1
    return x
