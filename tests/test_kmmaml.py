"""km-unet (kernel modulation, grouped per-sample convs, context encoder) and the kmmaml method."""

from pathlib import Path

import pytest
import tomllib
import torch
import torch.nn.functional as F
from conftest import masked_kspace_batch, write_tiny_root

from mrbench.config import load_config
from mrbench.data.synth.physics import NAMED_CONTRASTS
from mrbench.data.synth.subject import simulate_subject
from mrbench.errors import MrbenchError, RunStopped
from mrbench.losses import LOSSES
from mrbench.methods import METHODS
from mrbench.methods.kmmaml import KMMAML, embedded_loss, group_names, kmunet_kwargs
from mrbench.methods.meta import inner_loop
from mrbench.models import BACKBONES, build_backbone
from mrbench.models.km_unet import KMUNet, kernel_modulation, modulated_conv, modulated_convs
from mrbench.models.unet import UNetRecon
from mrbench.runner import execute

SUP = LOSSES["sup"](None)  # the supervised L1, as a method builds it

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(b=3, coils=1, size=16, seed=0):
    return masked_kspace_batch(b, coils, size, seed)


def randomise_hyper(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.hyper.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------- network


def test_registry_and_parameter_groups():
    assert BACKBONES["km-unet"] is KMUNet
    net = build_backbone("km-unet", chans=4, pools=2)  # constructible without task information
    names = [n for n, _ in net.named_parameters()]
    assert all(n.split(".")[0] in ("base", "hyper", "encoder") for n in names)
    assert len(net.hyper) == len(modulated_convs(net.base)) == 2 * (2 * 2 + 1)  # two 3×3 convs per block


@pytest.mark.parametrize("rank", [1, 2])
def test_modulation_rank(rank):
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8, rank=rank).double()  # float64: exact numerical rank
    randomise_hyper(net)
    z = torch.randn(3, 8, dtype=torch.float64)
    ms = net.kernel_modulations(z)
    assert len(ms) == len(net.hyper)
    for m, conv in zip(ms, modulated_convs(net.base)):
        assert m.shape == (3, conv.out_channels, conv.in_channels)
        ranks = torch.linalg.matrix_rank(m)
        assert (ranks <= rank).all() and (ranks == min(rank, *m.shape[1:])).all()


def test_untrained_modulation_is_one_and_network_is_its_base():
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8, rank=2)
    for m in net.kernel_modulations(torch.randn(2, 8)):
        assert torch.equal(m, torch.ones_like(m))
    k, mask, nlf = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(net(k, mask, nlf), net.base(k, mask, nlf), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("coils", [1, 3])
def test_constant_ones_modulation_equals_plain_unet(coils):
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8, rank=1)
    randomise_hyper(net)  # so the network's own modulation is not 1
    plain = UNetRecon(chans=4, pools=2)
    plain.load_state_dict(net.base.state_dict())  # the same weights in a plain unet backbone
    k, mask, nlf = make_batch(coils=coils)
    convs = modulated_convs(net.base)
    with torch.no_grad():
        expected = plain(k, mask, nlf)
        for n in (1, k.shape[0]):  # one modulation for the batch, and per sample (grouped convs)
            ones = [(torch.ones(n, 1, c.in_channels), torch.ones(n, 1, c.out_channels)) for c in convs]
            torch.testing.assert_close(net.forward_modulated(k, mask, ones), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(net(k, mask, nlf), expected, atol=1e-3)  # a real modulation changes it


def test_modulated_conv_is_the_kernel_modulation_without_a_norm():
    g = torch.Generator().manual_seed(0)
    b, cin, cout, r = 3, 4, 5, 2
    x = torch.randn(b, cin, 9, 7, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64)
    a = torch.randn(b, r, cin, generator=g, dtype=torch.float64)
    bb = torch.randn(b, r, cout, generator=g, dtype=torch.float64)
    out = modulated_conv(x, w, a, bb)
    m = kernel_modulation(a, bb)
    loop = torch.cat([F.conv2d(x[i : i + 1], w * m[i][..., None, None], padding=1) for i in range(b)])
    assert (out - loop).abs().max() < 1e-10  # conv(x, W ⊙ M) per sample
    shared = modulated_conv(x, w, a[:1], bb[:1])  # N = 1: one modulation for the whole batch
    assert (shared - F.conv2d(x, w * m[0][..., None, None], padding=1)).abs().max() < 1e-10


def test_output_factor_b_is_not_cancelled_by_the_norm():
    """Issue 12, defect 1: with a non-affine instance norm after every modulated conv, a
    per-output-channel factor inside the kernel is cancelled exactly (b got ~1e-7 of a's
    gradient and changed nothing). b must change the output and get gradients like a's."""
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8, rank=1)
    k, mask, nlf = make_batch()
    z = torch.randn(1, 8)
    mods = [(a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()) for a, b in net.modulations(z)]
    out = net.forward_modulated(k, mask, mods)
    out.abs().mean().backward()
    ga = torch.stack([a.grad.norm() for a, _ in mods])
    gb = torch.stack([b.grad.norm() for _, b in mods])
    ratio = float(gb.sum() / ga.sum())
    assert 0.05 < ratio < 20, ratio  # the same order of magnitude
    assert (gb > 1e-6).all()  # every layer's b matters
    with torch.no_grad():
        base = net.forward_modulated(k, mask, mods)
        j = len(mods) // 2
        g = torch.Generator().manual_seed(1)
        # one layer's factor perturbed per channel (a uniform scale is removed by the next norm, for a as for b)
        factor_a = 1 + 0.5 * torch.rand(mods[j][0].shape, generator=g)
        factor_b = 1 + 0.5 * torch.rand(mods[j][1].shape, generator=g)
        with_a = [(a * factor_a, b) if i == j else (a, b) for i, (a, b) in enumerate(mods)]
        with_b = [(a, b * factor_b) if i == j else (a, b) for i, (a, b) in enumerate(mods)]
        delta_a = (net.forward_modulated(k, mask, with_a) - base).abs().max()
        delta_b = (net.forward_modulated(k, mask, with_b) - base).abs().max()
    assert delta_b > 1e-5 and delta_b > 0.1 * delta_a, (float(delta_a), float(delta_b))


def test_per_sample_output_independent_of_batch_mates():
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8)
    randomise_hyper(net)
    k, mask, nlf = make_batch(4)
    with torch.no_grad():
        full = net(k, mask, nlf)
        alone = torch.cat([net(k[i : i + 1], mask[i : i + 1], nlf[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-6)


def test_embedding_tells_contrasts_apart():
    vols = simulate_subject(
        {c: NAMED_CONTRASTS[c] for c in ("AXT1", "AXT2")}, seed=0, size=32, n_slices=4, source="phantom"
    )
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=16)  # freshly initialised encoder
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., ::4] = 1
    mask[..., 14:18] = 1

    def embed(contrast):
        k = torch.from_numpy(vols[contrast].kspace[2:3])[:, None] * mask
        with torch.no_grad():
            return net.context_embedding(k)[0]

    t1, t2 = embed("AXT1"), embed("AXT2")
    assert torch.equal(t1, embed("AXT1"))  # deterministic: the same contrast twice is identical
    assert float(F.cosine_similarity(t1, t2, dim=0)) < 0.9999
    assert float((t1 - t2).norm()) > 1e-2 * float(t1.norm())


# ----------------------------------------------------------------------------- method pieces


def test_inner_loop_moves_only_the_hypernetworks():
    torch.manual_seed(0)
    net = KMUNet(chans=4, pools=2, embedding=8)
    k, mask, nlf = make_batch(2)
    from mrbench.data.dataset import Sample

    target = torch.rand(2, 16, 16)
    batch = Sample(
        k, mask, target, target, torch.zeros(2, dtype=torch.long), ["a", "b"], torch.arange(2), torch.ones(2), nlf
    )
    params = dict(net.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    z = net.context_embedding(k)
    hyper = group_names(net, ("hyper",))
    fast = inner_loop(net, params, {}, batch, 2, 0.5, 1, hyper, loss=embedded_loss(z, SUP))
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n])  # the module's own parameters are never overwritten
        if n in hyper:
            assert fast[n] is not p
        else:
            assert fast[n] is p  # base and encoder pass through unchanged
    assert any(not torch.equal(fast[n], before[n]) for n in hyper)
    # second order: the query loss reaches the encoder through the inner steps as well
    fast2 = inner_loop(net, params, {}, batch, 1, 0.5, 2, hyper, loss=embedded_loss(z, SUP))
    embedded_loss(z, SUP)(net, fast2, batch).backward()
    assert all(p.grad is not None for p in net.encoder.parameters())


def tiny_cfg(data_root, out, *extra, method="kmmaml"):
    return load_config(
        None,
        [
            f"data.root={data_root}",
            f"run.out={out}",
            "data.tasks=AXT1,AXT2",
            "data.mask=equispaced,random",
            'data.unseen=[{contrast="AXFLAIR", acceleration=6}]',
            "data.val_volumes=1",
            "train.budget=48",
            "train.batch=4",
            "train.val_every=24",
            "train.threads=1",
            "model.backbone=km-unet",
            "model.chans=4",
            "model.pools=2",
            "meta.embedding=16",
            "meta.support=2",
            "meta.query=2",
            "meta.tasks_per_batch=2",
            "meta.inner_steps=1",
            "meta.inner_lr=0.5",
            "eval.adapt_steps=0,2",
            "eval.support=2",
            *extra,
        ],
        method=method,
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kmmaml_data") / "d"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4, size=32
    )
    return root


def test_adaptation_modes_touch_the_right_groups(data_root, tmp_path):
    from mrbench.data.assemble import assemble
    from mrbench.data.dataset import SliceDataset
    from mrbench.evaluation.evaluate import to_device

    cfg = tiny_cfg(data_root, tmp_path)
    data = assemble(cfg.data, 0, 2)
    method = KMMAML.from_config(cfg, data.train, data.scarce)
    randomise_hyper(method.models["net"])
    pool = SliceDataset(data.unseen_support, train=False)
    support = to_device(
        torch.utils.data.default_collate([pool[i] for i in pool.task_items(0)[:2]]), torch.device("cpu")
    )
    orig = {n: p.detach().clone() for n, p in method.models["net"].named_parameters()}

    x = next(iter(torch.utils.data.DataLoader([pool[i] for i in pool.task_items(0)[2:4]], batch_size=2)))
    for mode, adapts in (("on-the-fly", False), ("hyper", True), ("all", True)):
        cfg.meta.test_mode = mode
        for rule in method.adapt_rules():
            outs = {k: recon(x).detach().clone() for k, recon in method.adapt_path(None, support, [0, 2], 1e-3, rule)}
            assert (not torch.allclose(outs[0], outs[2], atol=1e-7)) == adapts, (mode, rule)
    assert all(torch.equal(p, orig[n]) for n, p in method.models["net"].named_parameters())  # copies adapted
    with pytest.raises(ValueError, match="no adaptation rule"):
        next(method.adapt_path(None, support, [0], 1e-3, "sgd"))


def test_kmmaml_picks_its_backbone_unless_a_conflicting_one_is_set(data_root, tmp_path):
    cfg = load_config(None, [], method="kmmaml")  # model.backbone not set: the method's own
    assert cfg.model.backbone == "km-unet" and cfg.run_name.startswith("kmmaml-km-unet-")
    assert any("km-unet" in n for n in cfg.to_dict()["notes"])  # config.json says so
    with pytest.raises(MrbenchError, match="method kmmaml trains km-unet or unet, got 'varnet'"):
        tiny_cfg(data_root, tmp_path, "model.backbone=varnet")
    kw = kmunet_kwargs(load_config(None, ["model.backbone=unet"], method="kmmaml"))
    unet = build_backbone("unet", **load_config(None, ["model.backbone=unet"]).model.backbone_kwargs())
    assert kw == {"chans": unet.chans, "pools": unet.pools, "embedding": 256, "rank": 1}  # the unet backbone's size


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("mode", ["hyper", "on-the-fly"])
def test_kmmaml_run_end_to_end(data_root, tmp_path, mode):
    store = execute(tiny_cfg(data_root, tmp_path, f"meta.test_mode={mode}", "eval.curve=true"), quiet=True)
    m = store.read_json("metrics.json")
    assert (store.path / "DONE").exists() and store.path.name == "kmmaml-km-unet-s0-seed0"
    assert m["cost"]["trained_slices"] == 48  # 6 episodes × 2 tasks × (2 support + 2 query)
    assert m["cost"]["parameters"] == sum(p.numel() for p in KMUNet(chans=4, pools=2, embedding=16).parameters())
    seen = {f"{c}/{k}/4x" for c in ("AXT1", "AXT2") for k in ("equispaced", "random")}
    assert seen <= set(m["contexts"])
    for name in seen:
        assert 0 < m["contexts"][name]["steps"]["0"]["mean"]["ssim"] <= 1
    unseen = m["contexts"]["AXFLAIR/equispaced/6x"]["steps"]
    assert set(unseen) == {"0", "2"}
    if mode == "on-the-fly":  # no gradient step: every step count is the same reconstruction
        assert unseen["0"]["mean"] == unseen["2"]["mean"]
    else:
        assert unseen["0"]["mean"] != unseen["2"]["mean"]
    ckpt = torch.load(store.checkpoint_path("best"), weights_only=True)
    assert set(ckpt["models"]) == {"net"}
    trained = ckpt["models"]["net"]
    assert not torch.equal(trained["hyper.0.fc2.weight"], torch.zeros_like(trained["hyper.0.fc2.weight"]))


def test_experiment_file_parses():
    path = REPO / "evaluate" / "kmmaml2023.toml"
    cfg = load_config(path, method="kmmaml")
    assert cfg.data.tasks == ["AXT1", "AXT2", "AXPD", "AXFLAIR"] and cfg.data.scarce == []
    assert cfg.data.mask == ["random", "gaussian2d"] and cfg.data.acceleration == [4.0, 5.0, 8.0]
    unseen = {(u["contrast"], u.get("mask"), float(u["acceleration"])) for u in cfg.data.unseen}
    assert {u[0] for u in unseen} == {"AXT1", "AXT2", "AXPD", "AXFLAIR", "T1GRE", "STIR"}
    assert {u[2] for u in unseen if u[0] in cfg.data.tasks} == {6.0, 7.0, 9.0, 10.0}
    assert kmunet_kwargs(cfg)["embedding"] == 256
    sweep = tomllib.loads(path.read_text())["sweep"]
    names = {e["name"] for e in sweep["methods"]}
    assert {"joint", "stl", "maml", "metadrop"} <= names and any(n.startswith("kmmaml") for n in names)
    for entry in sweep["methods"]:
        assert entry["method"] in METHODS
        c = load_config(path, entry.get("set", []), method=entry["method"])
        assert c.method == entry["method"]


def test_kmmaml_resume_equivalence(data_root, tmp_path):
    import json

    from mrbench.store import RunStore

    full = execute(tiny_cfg(data_root, tmp_path / "a", "meta.order=2"), quiet=True)
    cfg = tiny_cfg(data_root, tmp_path / "b", "meta.order=2", "train.stop_after=24")
    with pytest.raises(RunStopped, match="stopped after 24 slices"):
        execute(cfg, quiet=True)
    cfg.train.stop_after = 0
    execute(cfg, resume=True, quiet=True)
    a = json.loads(full.metrics_path.read_text())
    b = json.loads(RunStore(cfg.run_dir).metrics_path.read_text())
    assert a["contexts"] == b["contexts"] and a["history"] == b["history"]
