"""One contract test per registry: every method, backbone and weighting, by name from its
registry (no hard-coded lists), so a new plug-in is tested the moment it is registered."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import masked_kspace_batch, tiny_run_settings, write_tiny_root

from mrbench.config import Config, load_config
from mrbench.methods import METHODS
from mrbench.methods.weighting import WEIGHTINGS, make_weighting
from mrbench.models import BACKBONES, build_backbone
from mrbench.runner import execute

TINY_BACKBONE = {"cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2, "sens_pools": 1, "iterations": 2}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("contracts") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"))
    return root


def _tiny_kwargs(name: str) -> dict:
    import inspect

    accepted = inspect.signature(BACKBONES[name]).parameters
    kw = {k: v for k, v in TINY_BACKBONE.items() if k in accepted}
    if "num_tasks" in accepted:
        kw["num_tasks"] = 2
    if "embedding" in accepted:
        kw["embedding"] = 8
    return kw


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_with_its_defaults_and_is_named_by_them(name, data_root, tmp_path):
    """Each method, with ``model.backbone`` left unset, trains the whole budget on a tiny
    run, stores finite metrics for seen and unseen contexts, and its config.json names the
    backbone it chose."""
    settings = [s for s in tiny_run_settings(data_root, tmp_path) if not s.startswith("model.cascades")]
    settings += ["meta.support=1", "meta.query=1", "meta.tasks_per_batch=1", "meta.embedding=8"]
    if name == "mtl":
        settings.append("model.blocks=IV")
    cfg = load_config(None, settings, method=name)
    cls = METHODS[name]
    assert cfg.model.backbone == (cls.backbones[0] if cls.backbones else "varnet")
    assert cfg.run_name.startswith(f"{name}-{cls.run_variant(cfg)}-s0-seed0")
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    assert store.read_json("config.json")["model"]["backbone"] == cfg.model.backbone
    assert {c["seen"] for c in m["contexts"].values()} == {True, False}
    for c in m["contexts"].values():
        for res in c["steps"].values():
            assert all(math.isfinite(res["mean"][k]) for k in ("psnr", "ssim", "nmse"))
    assert m["cost"]["trained_slices"] == (cfg.train.budget if cls.learned else 0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_its_options_in_the_config(name):
    """Each plug-in's option keys are fields of the assembled Config, and a default config
    of the method checks."""
    cfg = load_config(None, [], method=name)
    for section, options in METHODS[name].options.items():
        parts = options if isinstance(options, tuple) else (options,)
        for part in parts:
            for f in dataclasses.fields(part):
                assert hasattr(getattr(cfg, section), f.name), f"{section}.{f.name}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gets_its_own_typed_options_and_a_frozen_plan(name, data_root):
    """Issue 32 item 2: a method reads its own section as ``self.opts`` (None without options)
    and the training plan (budget, lr, sampling, seed, ...) as a frozen ``self.plan``."""
    from mrbench.data.assemble import assemble
    from mrbench.methods import build_method
    from mrbench.methods.base import Plan

    settings = [s for s in tiny_run_settings(data_root, "/tmp/unused") if not s.startswith("model.cascades")]
    settings += ["meta.embedding=8", "train.lr=2e-3"] + (["model.blocks=IV"] if name == "mtl" else [])
    cfg = load_config(None, settings, method=name)
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, torch.device("cpu"))
    sections = list(METHODS[name].options)
    assert method.opts is (getattr(cfg, sections[0]) if len(sections) == 1 else None)
    assert method.plan == Plan.of(cfg) and method.plan.lr == 2e-3 and method.plan.budget == cfg.train.budget
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.plan.budget = 1
    # not the whole configuration: neither the method nor its loss holds it
    assert not hasattr(method, "cfg") and not hasattr(method.loss, "cfg")
    assert method.loss.opts is cfg.loss


def test_plugin_keys_live_beside_their_code():
    """config.py holds no plug-in's keys: they come from the plug-ins' option classes."""
    from mrbench.config import CORE_SECTIONS

    core = {f"{s}.{f.name}" for s, cls in CORE_SECTIONS.items() for f in dataclasses.fields(cls)}
    assert not core & {"model.blocks", "meta.rank", "meta.alpha", "mtl.dwa_temperature", "train.pretrain_fraction"}
    cfg = Config()
    assert cfg.model.blocks == "" and cfg.meta.rank == 1 and cfg.mtl.dwa_temperature == 2.0


# ----------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("coils", [1, 3])
def test_every_backbone_forward_backward_and_shape(name, coils, one_thread):
    """(B, C, H, W) masked k-space in, a finite complex (B, H, W) image out; every parameter that
    takes part gets a finite gradient, and the output depends on the measured data."""
    torch.manual_seed(0)
    net = build_backbone(name, **_tiny_kwargs(name))
    k, mask, nlf = masked_kspace_batch(2, coils=coils, size=16)
    args = (k, mask, nlf) + ((torch.tensor([0, 1]),) if getattr(net, "task_aware", False) else ())
    raw = net(*args)
    assert raw.shape == (2, 16, 16) and raw.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(raw)).all()
    out = raw.abs()
    out.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) >= len(list(net.parameters())) // 2
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        other = net(k * 2, *args[1:]).abs()
    assert not torch.allclose(other, out.detach())


# ----------------------------------------------------------------------------- weightings


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_weighting_combines_backpropagates_and_checkpoints(name):
    """A finite total from per-task losses, gradients into the network, weights for every
    task, and a state dict that restores the weighting exactly."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    w = make_weighting(name, 2, None, task_sizes=[10, 5])
    for _ in range(3):
        net.zero_grad()
        out = net(torch.randn(4, 3))
        losses = out.abs().mean(0)
        total = w.backward(losses, torch.tensor([2, 2]), net)
        assert torch.isfinite(total)
        assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    assert w.task_weights().shape == (2,)
    clone = make_weighting(name, 2, None, task_sizes=[10, 5])
    clone.load_state_dict(w.state_dict())
    assert torch.equal(clone.task_weights(), w.task_weights())


@pytest.mark.parametrize("name", sorted(__import__("mrbench.data.importers", fromlist=["IMPORTERS"]).IMPORTERS))
def test_every_importer_is_named_declares_its_package_and_finds_nothing_in_foreign_files(name, tmp_path):
    """The importer contract: its registry name, the package its extra installs, the file
    endings that guess it, and discover() ignores files of another format (no crash, no source)."""
    from mrbench.data.importers import IMPORTERS, guess_format
    from mrbench.data.importers.base import ImportOptions
    from mrbench.data.importers.layout import Layout

    cls = IMPORTERS[name]
    assert cls.name == name and cls.package and cls.suffixes
    assert guess_format([tmp_path / f"x{cls.suffixes[0]}"]) == name
    (tmp_path / "notes.csv").write_text("a,b\n")
    importer = cls(ImportOptions())
    try:
        importer.require()
    except Exception:
        pytest.skip(f"{cls.package} not installed")
    assert importer.discover(tmp_path, [tmp_path / "notes.csv"], Layout()) == []
    with pytest.raises(Exception, match=r"unknown format 'x'; valid: dicom, ismrmrd, nifti, twix"):
        IMPORTERS.lookup("x")
