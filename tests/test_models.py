"""Backbones (mrbench.models): interface, padding, physics, equivariance, gradients, registry.

Small models and images throughout, so the module runs in a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mrbench.errors import MrbenchError
from mrbench.fourier import fft2c, ifft2c, rss
from mrbench.models import BACKBONES, SIZES, NormUNet, UNet, UNetRecon, VarNet, VarNetCascade, build_backbone
from mrbench.models.unet import InstanceNorm
from mrbench.models.varnet import acs_band
from mrbench.physics import Domain, MRIOperator, _DataConsistency, _SensExpand, _SensReduce, choose_domain

TINY_VARNET = dict(cascades=2, chans=4, pools=3, sens_chans=2, sens_pools=2)
TINY_UNET = dict(chans=4, pools=3)


def make_batch(b=2, c=4, h=40, w=40, seed=0, two_d=False, acs=8):
    """Smooth complex anatomy × Gaussian coil profiles → (masked k-space, mask, nlf, full k-space)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = torch.zeros(b, h, w, dtype=torch.complex64)
    for i in range(b):
        for _ in range(4):
            cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
            r = 0.15 + 0.25 * float(torch.rand(1, generator=g))
            img[i] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = img * torch.exp(1j * 0.7 * xx + 0.3j * yy)
    if c > 1:
        ang = torch.arange(c) * (2 * math.pi / c)
        sens = torch.stack([torch.exp(-((yy - 0.7 * a.sin()) ** 2 + (xx - 0.7 * a.cos()) ** 2)) for a in ang])
        images = img[:, None] * sens[None].to(torch.complex64)
    else:
        images = img[:, None]
    full = fft2c(images)
    if two_d:
        mask = (torch.rand(b, 1, h, w, generator=g) < 0.3).float()
    else:
        mask = (torch.rand(b, 1, 1, w, generator=g) < 0.25).float().expand(b, 1, h, w).contiguous()
    start = (w - acs + 1) // 2
    mask[..., start : start + acs] = 1.0
    nlf = torch.full((b,), acs, dtype=torch.long)
    return full * mask, mask, nlf, full


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


def zero_regularisers(model: VarNet) -> VarNet:
    for cascade in model.cascades:
        cascade.regulariser = Zero()
    return model


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", ["unet", "varnet"])
@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("hw", [(40, 40), (36, 44), (37, 45)])
def test_shapes_and_dtypes(name, coils, hw):
    torch.manual_seed(0)
    model = build_backbone(name, **(TINY_VARNET if name == "varnet" else TINY_UNET))
    k, m, nlf, _ = make_batch(2, coils, *hw)
    raw = model(k, m, nlf)
    assert raw.dtype == torch.complex64  # the coil-combined image; its magnitude is what is scored
    if coils > 1 and name == "varnet":
        assert torch.equal(raw.imag, torch.zeros_like(raw.imag))  # RSS with zero phase
    out = raw.abs()
    assert out.shape == (2, *hw)
    assert torch.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("hw", [(40, 40), (36, 44), (37, 45), (9, 7)])
def test_unet_pads_to_multiple_and_crops_back(hw):
    torch.manual_seed(0)
    net = UNet(3, 5, chans=4, pools=3)
    x = torch.randn(2, 3, *hw)
    y = net(x)
    assert y.shape == (2, 5, *hw)
    # per-sample independence (instance norm, no batch statistics)
    assert torch.allclose(net(x[1:]), y[1:], atol=1e-5)


def test_unet_structure():
    net = UNet(2, 2, chans=4, pools=3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # two 3×3 convs per encoder level, bottleneck and decoder level
    assert len(convs) == 2 * (3 + 1 + 3)
    widths = [[m.out_channels for m in block if isinstance(m, nn.Conv2d)] for block in net.down]
    assert widths == [[4, 4], [8, 8], [16, 16]]  # channels double per level
    assert net.bottleneck[0].out_channels == 4 * 2**3
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [u.stride for u in ups] == [(2, 2)] * 3
    assert net.final.kernel_size == (1, 1) and net.final.out_channels == 2


def test_instance_norm_equals_torch_instance_norm():
    x = torch.randn(3, 5, 9, 7) * 3 + 1
    torch.testing.assert_close(InstanceNorm(5)(x), nn.InstanceNorm2d(5)(x), rtol=1e-5, atol=1e-5)


def test_normunet_is_scale_equivariant_and_complex():
    torch.manual_seed(0)
    net = NormUNet(4, 2, in_complex=3)
    z = torch.randn(2, 3, 20, 22, dtype=torch.complex64)
    out = net(z)
    assert out.shape == z.shape and out.dtype == torch.complex64
    torch.testing.assert_close(net(1000 * z), 1000 * out, rtol=1e-3, atol=1e-3 * out.abs().max().item())
    # per-sample normalisation: a sample's output does not depend on the other samples
    torch.testing.assert_close(net(z[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_unetrecon_zero_network_gives_zero_filled():
    k1, m1, n1, _ = make_batch(2, 1, 36, 44)
    k4, m4, n4, _ = make_batch(2, 4, 36, 44)
    model = UNetRecon(**TINY_UNET)
    model.net = Zero()
    torch.testing.assert_close(model(k1, m1, n1).abs(), ifft2c(k1)[:, 0].abs())
    torch.testing.assert_close(model(k4, m4, n4).abs(), rss(ifft2c(k4), dim=1))


# --------------------------------------------------------------------------- physics


@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("two_d", [False, True])
def test_data_consistency_step(coils, two_d):
    """Zero regulariser, η = 1: k − M ⊙ (k − k0) is k0 on sampled points and k elsewhere."""
    k0, m, _, _ = make_batch(2, coils, 36, 44, two_d=two_d)
    k = torch.randn_like(k0)
    cascade = VarNetCascade(Zero())
    sens = None if coils == 1 else torch.randn_like(k0)
    with torch.no_grad():
        out = cascade(k, k0, MRIOperator(m, sens))
    sampled = m.expand_as(k0).bool()
    torch.testing.assert_close(out[sampled], k0[sampled])
    torch.testing.assert_close(out[~sampled], k[~sampled])


@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("hw,two_d", [((36, 44), False), ((36, 44), True), ((37, 45), False), ((37, 44), False)])
def test_varnet_zero_regulariser_outputs_zero_filled(coils, hw, two_d):
    torch.manual_seed(0)
    model = zero_regularisers(VarNet(**TINY_VARNET))
    with torch.no_grad():
        for c in model.cascades:
            c.eta.fill_(1.0)
    k, m, nlf, _ = make_batch(2, coils, *hw, two_d=two_d)
    with torch.no_grad():
        out = model(k, m, nlf).abs()
    zero_filled = ifft2c(k)[:, 0].abs() if coils == 1 else rss(ifft2c(k), dim=1)
    torch.testing.assert_close(out, zero_filled, rtol=1e-5, atol=1e-5 * zero_filled.max().item())


@pytest.mark.parametrize("coils", [1, 4])
def test_varnet_fully_sampled_matches_inverse_fft(coils):
    torch.manual_seed(0)
    model = zero_regularisers(VarNet(**TINY_VARNET))
    _, _, nlf, full = make_batch(2, coils, 36, 44)
    mask = torch.ones(2, 1, 36, 44)
    with torch.no_grad():
        out = model(full, mask, nlf).abs()
    expected = rss(ifft2c(full), dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.max().item())


def test_cascade_expand_reduce_is_projection():
    """With U = identity and η = 0, a cascade maps k = F(S·x), Σ|S|² = 1, to 2k (R = F S Sᴴ F⁻¹)."""
    torch.manual_seed(0)
    k0, m, nlf, _ = make_batch(1, 4, 36, 44)
    sens = VarNet(**TINY_VARNET).sensitivities(k0, nlf).detach()
    x = torch.randn(1, 1, 36, 44, dtype=torch.complex64)
    k = fft2c(sens * x)
    cascade = VarNetCascade(Identity())
    with torch.no_grad():
        cascade.eta.zero_()
        for kind in ("centred", "shifted", "columns"):
            d = Domain(kind)
            out = cascade(d.kspace(k), d.kspace(k0), MRIOperator(d.mask(m), sens, d))
            torch.testing.assert_close(out, 2 * d.kspace(k), rtol=1e-4, atol=1e-4 * k.abs().max().item())


@pytest.mark.parametrize("hw", [(36, 44), (37, 44)])
@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize("coils", [1, 4])
def test_fast_domains_match_centred_transforms(hw, two_d, coils):
    torch.manual_seed(0)
    model = VarNet(**TINY_VARNET)
    k, m, nlf, _ = make_batch(2, coils, *hw, two_d=two_d)
    expected_kind = "columns" if not two_d else ("shifted" if hw[0] % 2 == 0 else "centred")
    assert choose_domain(m).kind == expected_kind
    with torch.no_grad():
        fast = model(k, m, nlf).abs()
        model.fast_fourier = False
        slow = model(k, m, nlf).abs()
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5 * slow.max().item())


def test_domain_transforms_are_exact():
    x = torch.randn(2, 3, 36, 44, dtype=torch.complex64)
    k = fft2c(x)
    for kind in ("centred", "shifted", "columns"):
        d = Domain(kind)
        torch.testing.assert_close(d.inverse(d.kspace(k)), x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d.forward(x), d.kspace(k), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- sensitivities


def test_acs_band():
    band = acs_band(torch.tensor([8, 7, 0]), 44)
    assert band.shape == (3, 1, 1, 44)
    cols = band[:, 0, 0]
    assert cols[0].sum() == 8 and cols[0, 18:26].all()  # (44 - 8 + 1) // 2 = 18
    assert cols[1].sum() == 7 and cols[1, 19:26].all()
    assert cols[2].all()  # no ACS information: keep everything


@pytest.mark.parametrize("two_d", [False, True])
def test_sensitivities_have_unit_rss(two_d):
    torch.manual_seed(0)
    model = VarNet(**TINY_VARNET)
    k, m, nlf, _ = make_batch(2, 4, 36, 44, two_d=two_d)
    nlf = torch.tensor([8, 6])
    with torch.no_grad():
        sens = model.sensitivities(k, nlf)
        # the same maps from a working domain
        d = choose_domain(m)
        sens_fast = model.sens_net(d.kspace(k), nlf, d)
    assert sens.shape == k.shape and sens.dtype == torch.complex64
    power = (sens.abs() ** 2).sum(1)
    torch.testing.assert_close(power, torch.ones_like(power), rtol=0, atol=1e-5)
    torch.testing.assert_close(sens_fast, sens, rtol=1e-4, atol=1e-5)


def test_sensitivities_zero_where_rss_zero():
    model = VarNet(**TINY_VARNET)
    model.sens_net.net = Zero()
    k, m, nlf, _ = make_batch(1, 4, 36, 44)
    sens = model.sensitivities(k, nlf)
    assert (sens == 0).all()


def test_single_coil_skips_sensitivity_model():
    model = VarNet(**TINY_VARNET)
    calls = []
    model.sens_net.register_forward_hook(lambda *a: calls.append(1))
    k, m, nlf, _ = make_batch(2, 1, 36, 44)
    model(k, m, nlf)
    assert calls == []
    k, m, nlf, _ = make_batch(2, 4, 36, 44)
    model(k, m, nlf)
    assert calls == [1]


# --------------------------------------------------------------------------- scale equivariance


@pytest.mark.parametrize("name", ["unet", "varnet"])
@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("scale", [1000.0, 1e-5])
def test_scale_equivariance(name, coils, scale):
    torch.manual_seed(0)
    model = build_backbone(name, **(TINY_VARNET if name == "varnet" else TINY_UNET))
    k, m, nlf, _ = make_batch(2, coils, 36, 44)
    with torch.no_grad():
        out = model(k, m, nlf).abs()
        scaled = model(k * scale, m, nlf).abs()
    torch.testing.assert_close(scaled / scale, out, rtol=1e-3, atol=1e-4 * out.max().item())


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["unet", "varnet"])
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_backbone(name, **(TINY_VARNET if name == "varnet" else TINY_UNET))
    k, m, nlf, full = make_batch(2, 4, 36, 44)
    target = rss(ifft2c(full), dim=1)
    loss = torch.nn.functional.l1_loss(model(k, m, nlf).abs(), target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if pname == "cascades.0.eta":
            # the first cascade starts from k = k0, so M ⊙ (k − k0) = 0: η_0 gets exactly 0
            assert p.grad == 0
        else:
            assert p.grad.abs().sum() > 0, pname
    if name == "varnet":
        assert all(c.eta.grad.shape == () for c in model.cascades)


def test_gradients_finite_on_blank_input():
    """An all-zero k-space (blank slice) must not produce NaN gradients."""
    torch.manual_seed(0)
    model = VarNet(**TINY_VARNET)
    k, m, nlf, _ = make_batch(1, 4, 36, 44)
    out = model(torch.zeros_like(k), m, nlf).abs()
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_custom_autograd_functions_gradcheck():
    torch.manual_seed(0)
    c128 = dict(dtype=torch.complex128)
    x = torch.randn(2, 3, 5, 6, **c128, requires_grad=True)
    s = torch.randn(2, 3, 5, 6, **c128, requires_grad=True)
    u = torch.randn(2, 1, 5, 6, **c128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: _SensReduce.apply(x, s, s.detach().conj()), (x, s))
    assert torch.autograd.gradcheck(lambda s, u: _SensExpand.apply(s, u, s.detach().conj()), (s, u))
    k, k0, r = (torch.randn(2, 3, 5, 6, **c128, requires_grad=True) for _ in range(3))
    eta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for mask in ((torch.rand(2, 1, 5, 6) < 0.5).double(), (torch.rand(2, 1, 1, 6) < 0.5).double()):
        assert torch.autograd.gradcheck(
            lambda k, k0, r, eta, mask=mask: _DataConsistency.apply(k, k0, r, eta, mask),
            (k, k0, r, eta),
        )


# --------------------------------------------------------------------------- reference


def _copy_unet(ours: UNet, theirs: nn.Module) -> None:
    """Load our U-Net's weights into fastMRI's Unet (same architecture, other names)."""

    def convs(block):
        return [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    pairs = []
    for a, b in zip(ours.down, theirs.down_sample_layers):
        pairs += zip(convs(a), convs(b))
    pairs += zip(convs(ours.bottleneck), convs(theirs.conv))
    for a, b in zip(ours.up, theirs.up_transpose_conv):
        pairs += zip(convs(a), convs(b))
    for a, b in zip(ours.up_conv, theirs.up_conv):
        pairs += zip(convs(a), convs(b)[:2])
    pairs.append((ours.final, convs(theirs.up_conv[-1])[2]))
    with torch.no_grad():
        for a, b in pairs:
            assert a.weight.shape == b.weight.shape
            b.weight.copy_(a.weight)
            if a.bias is not None:
                b.bias.copy_(a.bias)


class _Negated(nn.Module):
    """fastMRI subtracts the regulariser term (k − dc − R); mrbench adds it (k − dc + R)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return -self.inner(x)


def test_matches_fastmri_varnet_with_same_weights():
    fm = pytest.importorskip("fastmri.models")
    torch.manual_seed(0)
    cfg = dict(cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=2)
    ours = VarNet(**cfg, residual_init=False)
    with torch.no_grad():
        for i, c in enumerate(ours.cascades):
            c.eta.fill_(0.5 + 0.3 * i)
    ref = fm.VarNet(num_cascades=2, sens_chans=2, sens_pools=2, chans=4, pools=2)
    _copy_unet(ours.sens_net.net.unet, ref.sens_net.norm_unet.unet)
    for a, b in zip(ours.cascades, ref.cascades):
        _copy_unet(a.regulariser.unet, b.model.unet)
        b.model = _Negated(b.model)
        with torch.no_grad():
            b.dc_weight.fill_(float(a.eta))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    k, m, nlf, _ = make_batch(1, 4, 32, 32, acs=6)
    with torch.no_grad():
        out = ours(k, m, nlf).abs()
        expected = ref(torch.view_as_real(k), m[:, :, :1, :, None].bool(), 6)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.max().item())


# --------------------------------------------------------------------------- registry


def test_registry_and_sizes():
    assert set(BACKBONES) == {"unet", "varnet", "mtl-varnet", "km-unet", "modl", "rim"}
    model = build_backbone("varnet", **SIZES["demo"])
    assert isinstance(model, VarNet) and len(model.cascades) == 4
    assert model.etas() == [1.0] * 4
    assert all(isinstance(c, VarNetCascade) and isinstance(c.regulariser, NormUNet) for c in model.cascades)
    assert set(SIZES["paper"]) == set(SIZES["demo"])
    assert isinstance(build_backbone("unet"), UNetRecon)


def test_demo_size_has_fastmri_parameter_count():
    fm = pytest.importorskip("fastmri.models")
    s = SIZES["demo"]
    ours = build_backbone("varnet", **s)
    ref = fm.VarNet(
        num_cascades=s["cascades"],
        sens_chans=s["sens_chans"],
        sens_pools=s["sens_pools"],
        chans=s["chans"],
        pools=s["pools"],
    )
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_build_backbone_errors():
    with pytest.raises(MrbenchError, match="unet, varnet"):
        build_backbone("nope")
    with pytest.raises(MrbenchError, match="bogus") as info:
        build_backbone("varnet", cascades=2, bogus=1)
    assert "sens_chans" in str(info.value)  # lists what is accepted
    with pytest.raises(MrbenchError, match="cascades"):
        build_backbone("unet", cascades=2)


@pytest.mark.parametrize("name", ["unet", "varnet"])
def test_untrained_backbone_starts_near_zero_filled(name):
    """Correction-style regularisers: an untrained network is (almost) the zero-filled image."""
    torch.manual_seed(0)
    model = build_backbone(name, **(TINY_VARNET if name == "varnet" else TINY_UNET))
    k, m, nlf, _ = make_batch(2, 1, 32, 32)
    zero_filled = ifft2c(k)[:, 0].abs()
    with torch.no_grad():
        out = model(k, m, nlf).abs()
    rel = (out - zero_filled).norm() / zero_filled.norm()
    assert rel < 0.05


def test_data_consistency_is_twice_differentiable():
    """Second-order MAML differentiates through the backward pass of the DC step."""
    g = torch.Generator().manual_seed(0)
    shape = (1, 2, 4, 5)
    k = torch.randn(shape, dtype=torch.complex128, generator=g, requires_grad=True)
    k0 = torch.randn(shape, dtype=torch.complex128, generator=g, requires_grad=True)
    r = torch.randn(shape, dtype=torch.complex128, generator=g, requires_grad=True)
    eta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand((1, 1, 1, 5), generator=g) > 0.5).double()
    assert torch.autograd.gradgradcheck(lambda *a: _DataConsistency.apply(*a, mask), (k, k0, r, eta))


def test_unet_data_consistency_restores_measured_lines():
    """Single-coil unet output keeps the measured k-space lines exactly; untrained = zero-filled."""
    from mrbench.fourier import fft2c
    from mrbench.models.unet import data_consistency

    torch.manual_seed(0)
    k = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    mask = torch.zeros(2, 1, 1, 16)
    mask[..., ::3] = 1
    km = k * mask
    image = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    out = fft2c(data_consistency(image, km, mask))
    torch.testing.assert_close(out * mask, km, rtol=1e-5, atol=1e-5)  # measured lines restored
    torch.testing.assert_close(out * (1 - mask), fft2c(image) * (1 - mask), rtol=1e-5, atol=1e-5)  # others kept
    net = UNetRecon(chans=4, pools=2)
    with torch.no_grad():
        net.net.unet.final.weight.zero_()  # zero correction: output is the zero-filled magnitude
        torch.testing.assert_close(
            net(km, mask, torch.tensor([4, 4])).abs(), ifft2c(km).abs()[:, 0], rtol=1e-5, atol=1e-6
        )
