"""The MoDL and RIM backbones (issue 13): their defining behaviour, not only their shapes (the
registry's contract test covers those) — MoDL's CG step keeps measured data when λ is small
and is the zero-filled image with a zero denoiser; the RIM with no learned update is the
zero-filled image, and its supervised loss averages over every time step."""

from __future__ import annotations

import pytest
import torch
from conftest import masked_kspace_batch, tiny_run_settings, write_tiny_root

from mrbench.config import load_config
from mrbench.fourier import fft2c, ifft2c
from mrbench.losses import LOSSES
from mrbench.models import build_backbone
from mrbench.runner import execute

pytestmark = pytest.mark.usefixtures("one_thread")


def test_modl_with_a_zero_denoiser_is_the_zero_filled_image():
    torch.manual_seed(0)
    net = build_backbone("modl", iterations=3, chans=4, pools=2)
    with torch.no_grad():
        net.denoiser.unet.final.weight.zero_()
    k, mask, nlf = masked_kspace_batch(2)
    torch.testing.assert_close(net(k, mask, nlf), ifft2c(k)[:, 0], rtol=1e-4, atol=1e-5)


def test_modl_keeps_the_measurements_when_lambda_is_small():
    torch.manual_seed(0)
    net = build_backbone("modl", iterations=2, chans=4, pools=2)
    with torch.no_grad():
        net.denoiser.unet.final.weight.normal_()  # a denoiser that changes the image
        net.log_lam.fill_(torch.tensor(1e-4).log())
    k, mask, nlf = masked_kspace_batch(2)
    out = net(k, mask, nlf)
    measured = mask * fft2c(out.unsqueeze(1))
    assert (measured - k).abs().max() < 1e-2 * k.abs().max()
    assert (out - ifft2c(k)[:, 0]).abs().max() > 1e-3  # and it did change the missing part
    with torch.no_grad():
        net.log_lam.fill_(torch.tensor(100.0).log())  # large λ: the denoiser's image dominates
    far = net(k, mask, nlf)
    assert (mask * fft2c(far.unsqueeze(1)) - k).abs().max() > (measured - k).abs().max()


def test_rim_without_a_learned_update_is_zero_filled_and_trains_on_every_step():
    torch.manual_seed(0)
    net = build_backbone("rim", iterations=4, chans=4)
    with torch.no_grad():
        net.step.weight.zero_()
    k, mask, nlf = masked_kspace_batch(2)
    net.eval()
    torch.testing.assert_close(net(k, mask, nlf), ifft2c(k)[:, 0], rtol=1e-4, atol=1e-5)
    net.train()
    with torch.no_grad():
        net.step.weight.normal_(std=0.1)
    out = net(k, mask, nlf)
    assert len(out.estimates) == 4 and out is out.estimates[-1]
    assert not torch.allclose(out.estimates[0], out.estimates[-1])  # each step moves the estimate
    from mrbench.data.dataset import Sample

    target = ifft2c(k / mask.clamp_min(1))[:, 0].abs()
    batch = Sample(
        k, mask, target, target, torch.zeros(2, dtype=torch.long), ["f", "f"], torch.arange(2), torch.ones(2), nlf
    )
    loss = LOSSES["sup"](None)(lambda b: net(b.kspace, b.mask, b.num_low_frequencies), batch)
    per_step = [(x.abs() - target).abs().mean(dim=(-2, -1)) for x in out.estimates]
    torch.testing.assert_close(loss, sum(per_step) / 4, rtol=1e-5, atol=1e-6)


def test_iterations_reach_the_backbone():
    cfg = load_config(None, ["model.backbone=modl", "model.iterations=5"], method="stl")
    assert cfg.model.backbone_kwargs()["iterations"] == 5
    assert (
        build_backbone(
            "rim", **load_config(None, ["model.backbone=rim"], method="stl").model.backbone_kwargs()
        ).iterations
        == 8
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("unrolled") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4)
    return root


@pytest.mark.parametrize("backbone, loss", [("modl", "ei"), ("rim", "sup"), ("modl", "sup")])
def test_unrolled_backbones_train_and_evaluate(backbone, loss, data_root, tmp_path):
    cfg = load_config(
        None,
        tiny_run_settings(
            data_root,
            tmp_path,
            "train.budget=16",
            f"model.backbone={backbone}",
            "model.iterations=2",
            f"train.loss={loss}",
            "eval.adapt_steps=[0, 1]",
        ),
        method="stl",
    )
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    assert store.path.name == f"stl-{backbone}{'' if loss == 'sup' else '-' + loss}-s0-seed0"
    assert all(c["steps"]["0"]["mean"]["psnr"] > 0 for c in m["contexts"].values())


def test_modl_passes_gradients_when_its_warm_start_already_solves_the_system():
    """A zero denoiser makes the zero-filled warm start solve every CG system exactly; the
    output must still depend on the parameters (MC-loss training of MoDL stopped on a graph
    without them before)."""
    torch.manual_seed(0)
    net = build_backbone("modl", iterations=2, chans=4, pools=2)
    with torch.no_grad():
        net.denoiser.unet.final.weight.zero_()
        net.denoiser.unet.final.bias.zero_()
    k, mask, nlf = masked_kspace_batch(2)
    out = net(k, mask, nlf)
    assert out.requires_grad
    out.abs().sum().backward()
    assert net.log_lam.grad is not None and net.denoiser.unet.final.weight.grad is not None
