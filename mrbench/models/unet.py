"""U-Net regulariser and the ``unet`` backbone.

* :class:`UNet` — a plain real-valued U-Net (docs/design.md §4): per level two
  (conv3×3 → instance norm → LeakyReLU(0.2)), 2×2 average pooling down,
  stride-2 transpose convolution (→ instance norm → LeakyReLU) up,
  concatenation with the skip, final 1×1 convolution. Channels double per
  level. Any H, W: the input is zero-padded (centred) to a multiple of
  ``2**pools`` and the output cropped back.
* :class:`NormUNet` — complex images in, complex images out, with per-sample
  normalisation around the U-Net. Used inside every VarNet cascade, by the
  VarNet sensitivity model and by :class:`UNetRecon`.
* :class:`UNetRecon` — the ``unet`` backbone (common backbone interface, see
  :mod:`mrbench.models`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mrbench.physics import MRIOperator, zero_filled

__all__ = ["Conv1x1", "InstanceNorm", "UNet", "NormUNet", "UNetRecon"]

# Added to the variance before the square root in NormUNet (a std floor of
# 1e-10). Keeps an all-zero input (a blank slice) finite in the forward *and*
# backward pass (with 1e-30 the backward overflows to NaN), while staying many
# orders of magnitude below the variance of any real image (fastMRI's raw
# k-space values are ~1e-5; the tests check equivariance at that scale), so
# scale equivariance is unaffected in practice.
_VAR_EPS = 1e-20


class InstanceNorm(nn.Module):
    """Instance normalisation without affine parameters (= ``nn.InstanceNorm2d(c)``).

    Computed as a group norm with one group per channel, which is the same
    function (per sample and channel: subtract the spatial mean, divide by the
    biased spatial std, eps 1e-5) but uses PyTorch's fused group-norm kernel;
    on CPU that is about twice as fast, forward and backward, as
    ``F.instance_norm`` (which goes through batch norm on a reshaped tensor).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.channels, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class Conv1x1(nn.Conv2d):
    """1×1 convolution with bias, computed as one batched matrix multiply.

    Same parameters (and state-dict keys) as ``nn.Conv2d(cin, cout, 1)``.
    For the U-Nets' final projection to 2 channels, measured in isolation on
    CPU (forward+backward), ``baddbmm`` was 1.1-7x faster than oneDNN's 1×1
    convolution, which is slow for so few channels (within a whole U-Net the
    gain is small).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        o = self.out_channels
        y = torch.baddbmm(
            self.bias.view(1, o, 1).expand(b, o, h * w),
            self.weight.view(1, o, c).expand(b, o, c),
            x.reshape(b, c, h * w),
        )
        return y.view(b, o, h, w)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Twice conv3×3 (no bias: the norm removes it) → instance norm → LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        InstanceNorm(cout),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        InstanceNorm(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up_block(cin: int, cout: int) -> nn.Sequential:
    """Stride-2 transpose conv (doubles H, W) → instance norm → LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
        InstanceNorm(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


Block = Callable[[nn.Sequential, torch.Tensor], torch.Tensor]  # runs one conv block on x
Gate = Callable[[int, torch.Tensor], torch.Tensor]  # (level, features) → features


def run_block(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The plain way to run a conv block (km-unet swaps in its modulated convolutions)."""
    return block(x)


def no_gate(level: int, x: torch.Tensor) -> torch.Tensor:
    """The plain U-Net's features are not gated (the W block gates them per task)."""
    return x


def pad_to_multiple(x: torch.Tensor, pools: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Centred zero padding of H, W to a multiple of ``2**pools``; the pad for :func:`crop_padding`."""
    h, w = x.shape[-2:]
    mult = 2**pools
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x, (ph, pw, h, w)


def crop_padding(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    ph, pw, h, w = pad
    if ph or pw:
        x = x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    return x


def encode(
    down: nn.ModuleList, bottleneck: nn.Sequential, x: torch.Tensor, block: Block = run_block, gate: Gate = no_gate
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The U-Net's down path and bottleneck: ``(bottleneck features, skips)``. Gated levels are
    each encoder level's block output (before it is kept as a skip and pooled), then the bottleneck."""
    skips = []
    for level, b in enumerate(down):
        x = gate(level, block(b, x))
        skips.append(x)
        x = F.avg_pool2d(x, 2)
    return gate(len(down), block(bottleneck, x)), skips


def decode(
    up: nn.ModuleList,
    up_conv: nn.ModuleList,
    final: nn.Module,
    x: torch.Tensor,
    skips: list[torch.Tensor],
    block: Block = run_block,
    gate: Gate = no_gate,
) -> torch.Tensor:
    """The up path (upsample, concatenate the skip, conv block; gated after the encoder's
    levels) and the final 1×1 convolution."""
    skips = list(skips)
    level = len(skips) + 1
    for u, conv in zip(up, up_conv):
        x = gate(level, block(conv, torch.cat([u(x), skips.pop()], dim=1)))
        level += 1
    return final(x)


class UNet(nn.Module):
    """Real-valued U-Net: (N, in_chans, H, W) → (N, out_chans, H, W), any H, W.

    Level ``l`` (0 = full resolution) has ``chans * 2**l`` channels; the
    bottleneck, after ``pools`` poolings, has ``chans * 2**pools``. The same
    architecture (and parameter count) as fastMRI's ``Unet`` without
    dropout. Instance norm needs more than one pixel per channel, so H or W
    must exceed ``2**pools`` (else the bottleneck is 1×1).

    The one U-Net forward pass of the package: ``block`` runs each conv block (km-unet's
    modulated convolutions, :mod:`mrbench.models.km_unet`) and ``gate`` gates the features of
    each level (the W block's task attention); :func:`encode` and :func:`decode` are its two
    halves (the Y block shares the first and routes the second per task).
    """

    def __init__(self, in_chans: int, out_chans: int, chans: int = 16, pools: int = 3):
        super().__init__()
        if pools < 0 or chans < 1:
            raise ValueError(f"UNet needs chans >= 1 and pools >= 0, got chans={chans}, pools={pools}")
        self.in_chans, self.out_chans, self.chans, self.pools = in_chans, out_chans, chans, pools
        widths = [chans * 2**level for level in range(pools + 1)]
        self.down = nn.ModuleList()
        cin = in_chans
        for w in widths[:-1]:
            self.down.append(_conv_block(cin, w))
            cin = w
        self.bottleneck = _conv_block(cin, widths[-1])
        # decoder, deepest first: upsample widths[i+1] → widths[i], concat skip, conv block
        self.up = nn.ModuleList(_up_block(widths[i + 1], widths[i]) for i in reversed(range(pools)))
        self.up_conv = nn.ModuleList(_conv_block(2 * widths[i], widths[i]) for i in reversed(range(pools)))
        self.final = Conv1x1(widths[0], out_chans)

    def forward(self, x: torch.Tensor, block: Block = run_block, gate: Gate = no_gate) -> torch.Tensor:
        x, pad = pad_to_multiple(x, self.pools)
        x, skips = encode(self.down, self.bottleneck, x, block, gate)
        return crop_padding(decode(self.up, self.up_conv, self.final, x, skips, block, gate), pad)


class NormUNet(nn.Module):
    """Complex (B, in_complex, H, W) → complex (B, in_complex, H, W) through a normalised U-Net.

    The ``in_complex`` complex channels become ``2 * in_complex`` real
    channels ordered ``[re_1 … re_n, im_1 … im_n]``. Normalisation is **per
    sample and per real/imaginary group**: the mean and (unbiased, as in
    fastMRI's NormUnet) std of all real parts of a sample (over its
    ``in_complex`` channels and H, W), and likewise of all imaginary parts.
    The U-Net sees zero-mean, unit-std input; its output is un-normalised
    with the same statistics, which makes the module scale-equivariant
    (``f(a·x) = a·f(x)`` for real ``a > 0``) — inputs may be ~1 (synthetic)
    or ~1e-5 (raw fastMRI k-space). For ``in_complex = 1`` this is exactly
    fastMRI's NormUnet (tests/test_models.py checks it with shared weights).

    ``correction=True`` makes the module predict a *correction* to its input
    instead: the output is ``U((x − μ)/σ)·σ`` (no mean added back) and the last
    layer starts 100× smaller than PyTorch's default, so an untrained VarNet or
    residual U-Net starts as the zero-filled reconstruction rather than a noisy
    image of the input's mean. With a CPU-sized budget (a few hundred steps) this
    is what lets learned methods beat zero-filled; fastMRI's form needs far
    longer training to unlearn its initial offset. Adam normalises gradient
    scales, so the small last layer does not slow learning.
    """

    def __init__(self, chans: int, pools: int, in_complex: int = 1, correction: bool = False):
        super().__init__()
        self.in_complex = in_complex
        self.correction = correction
        self.unet = UNet(2 * in_complex, 2 * in_complex, chans=chans, pools=pools)
        if correction:
            with torch.no_grad():
                self.unet.final.weight.mul_(0.01)
                self.unet.final.bias.zero_()

    def forward(self, z: torch.Tensor, **unet_args) -> torch.Tensor:
        """``unet_args`` go to the U-Net (``block``, ``gate``; a task-routed core's ``task``)."""
        b, n, h, w = z.shape
        x = torch.cat([z.real, z.imag], dim=1)  # (B, 2n, H, W) NCHW-contiguous: one copy
        var, mean = torch.var_mean(x.view(b, 2, n * h * w), dim=2, correction=1, keepdim=True)
        std = torch.sqrt(var + _VAR_EPS).unsqueeze(-1)  # (B, 2, 1, 1)
        mean = mean.unsqueeze(-1)
        if n > 1:
            std = std.repeat_interleave(n, dim=1)
            mean = mean.repeat_interleave(n, dim=1)
        inv = 1.0 / std
        x = self.unet(torch.addcmul(-mean * inv, x, inv), **unet_args)  # (x - mean) / std in one pass
        x = x * std if self.correction else torch.addcmul(mean, x, std)  # x * std (+ mean)
        return torch.complex(x[:, :n], x[:, n:])


class UNetRecon(nn.Module):
    """The ``unet`` backbone: zero-filled image + residual NormUNet, magnitude out.

    ``x0`` is the zero-filled coil-combined image. Single-coil: the complex
    image ``ifft2c(kspace)[:, 0]``, phase included. Multi-coil: the RSS
    magnitude over coils, as a complex tensor with zero phase — without coil
    sensitivities the coil phases cannot be combined coherently, and RSS is
    what the fastMRI multi-coil targets are, so the network only has to remove
    aliasing, not learn a coil combination. Output: ``|x0 + NormUNet(x0)|``,
    float32 (B, H, W); single-coil outputs first get the measured k-space back
    (:func:`data_consistency`).
    """

    preset_width = 2  # model.size presets give a lone U-Net twice the VarNet width (one net, not cascades)

    def __init__(self, chans: int = 16, pools: int = 3):
        super().__init__()
        self.chans, self.pools = chans, pools
        self.net = NormUNet(chans, pools, in_complex=1, correction=True)

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor) -> torch.Tensor:
        x0 = zero_filled(kspace)
        return data_consistency(x0 + self.net(x0), kspace, mask)[:, 0]


def zero_phase(magnitude: torch.Tensor) -> torch.Tensor:
    """A real (B, H, W) magnitude as a complex image with zero phase: a multi-coil backbone's
    output without a coil combination that keeps phase (RSS, as fastMRI's multi-coil targets)."""
    return torch.complex(magnitude, torch.zeros_like(magnitude))


def data_consistency(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Single-coil hard data consistency: ``F⁻¹(k₀ + (1 − M) ⊙ F x)`` — the sampled
    k-space lines of the network's image replaced by the measurement (as the DC
    layer of Schlemper et al. 2018 with λ → ∞). The U-Net backbones then only
    have to fill in the missing lines, as a VarNet's cascades do; without it a
    U-Net gained < 1 dB over zero-filled at the demo's 1200-slice budget against
    3–4 dB for the VarNet. ``kspace`` is the masked measurement (zero where
    M = 0), so an untrained (zero-correction) network stays exactly zero-filled.
    Multi-coil images here are zero-phase RSS (no sensitivities): returned unchanged.
    """
    if kspace.shape[1] != 1:
        return image
    return MRIOperator(mask).replace_measured(image, kspace)
