"""mtl-varnet blocks (exact sharing, routing, per-task η), loss weightings (formulas) and mtl runs."""

import json
from pathlib import Path

import pytest
import torch
from conftest import masked_kspace_batch, tiny_run_settings, write_tiny_root
from torch import nn

from mrbench.config import load_config
from mrbench.errors import MrbenchError, RunStopped
from mrbench.methods.weighting import (
    DWA,
    WEIGHTINGS,
    DWAOptions,
    GradNorm,
    Naive,
    PCGrad,
    Uncertainty,
    UncertaintyOptions,
    make_weighting,
    pcgrad_project,
)
from mrbench.models import BACKBONES, build_backbone
from mrbench.models.mtl_varnet import MTLVarNet, SplitBlock, default_blocks
from mrbench.models.unet import NormUNet, UNet
from mrbench.runner import execute
from mrbench.store import RunStore

CH, PO = 4, 2
REPO = Path(__file__).resolve().parents[1]


def nparams(params) -> int:
    return sum(p.numel() for p in params)


def make_batch(b=4, coils=1, size=16, seed=0):
    return masked_kspace_batch(b, coils, size, seed)


def model(blocks, tasks=2, share_etas=True, seed=0):
    torch.manual_seed(seed)
    return MTLVarNet(tasks, blocks, chans=CH, pools=PO, sens_chans=2, sens_pools=1, share_etas=share_etas)


# ----------------------------------------------------------------------------- sharing


def test_registry_and_defaults():
    assert BACKBONES["mtl-varnet"] is MTLVarNet and MTLVarNet.task_aware
    assert default_blocks(4) == "IIVV" and len(model("IVYW").cascades) == 4
    with pytest.raises(MrbenchError, match="needs the number of tasks"):
        build_backbone("mtl-varnet")  # stl/joint cannot build it by accident
    with pytest.raises(MrbenchError, match="block letters"):
        MTLVarNet(2, "IX")


@pytest.mark.parametrize("tasks", [2, 3])
def test_parameter_counts_per_block(tasks):
    P = nparams(NormUNet(CH, PO).parameters())
    u = UNet(2, 2, CH, PO)
    D = nparams(u.up.parameters()) + nparams(u.up_conv.parameters()) + nparams(u.final.parameters())
    widths = [CH * 2**level for level in range(PO + 1)]
    A = sum(w * w + w for w in widths[:-1] * 2 + widths[-1:])  # one 1×1 conv per gated level
    reg = lambda letter: nparams(model(letter, tasks).cascades[0].regulariser.parameters())
    assert reg("I") == P
    assert reg("V") == tasks * P
    assert reg("Y") == P + (tasks - 1) * D  # only the decoders are per task
    assert reg("W") == P + tasks * A  # only the attention modules are per task
    for letter in "VYW":
        m = model(letter, tasks)
        blk = m.cascades[0].regulariser
        assert nparams(m.task_parameters(0)) == {"V": P, "Y": D, "W": A}[letter]
        assert nparams(m.shared_parameters()) == {"V": 0, "Y": P - D, "W": P}[letter]
        assert len(blk.state_dict()) == len({k: v.data_ptr() for k, v in blk.state_dict().items()})


def test_split_block_has_distinct_storage():
    blk = SplitBlock(3, CH, PO)
    assert len({id(n) for n in blk.nets}) == 3
    ptrs = [{p.data_ptr() for p in n.parameters()} for n in blk.nets]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ptrs[i] & ptrs[j]
    w0, w1 = blk.nets[0].unet.down[0][0].weight, blk.nets[1].unet.down[0][0].weight
    assert not torch.equal(w0, w1)  # separately initialised
    with torch.no_grad():
        w0.add_(1.0)
    assert not torch.equal(w0, w1)  # writing one task's weights leaves the other's alone


@pytest.mark.parametrize("letter", ["V", "Y", "W"])
def test_gradient_isolation(letter):
    m = model("I" + letter, tasks=3)
    k, mask, nlf = make_batch(3)
    m(k, mask, nlf, torch.tensor([1, 1, 1])).abs().sum().backward()

    def nonzero(params):
        return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]

    assert not any(nonzero(m.task_parameters(0))) and not any(nonzero(m.task_parameters(2)))
    assert all(nonzero(m.task_parameters(1)))
    assert any(nonzero(m.shared_parameters()))
    assert all(nonzero(m.cascades[0].regulariser.parameters()))  # the I block is shared
    # and every shared parameter of the split block gets a gradient from task 1 alone
    shared = m.cascades[1].regulariser.shared_parameters()
    assert all(nonzero(shared)) or letter == "V"


@pytest.mark.parametrize("coils", [1, 3])
def test_mixed_batch_equals_per_task_runs(coils):
    m = model("VYWI", tasks=3)
    k, mask, nlf = make_batch(5, coils)
    task = torch.tensor([2, 0, 1, 0, 2])
    with torch.no_grad():
        mixed = m(k, mask, nlf, task)
        for t in range(3):
            idx = (task == t).nonzero().flatten()
            alone = m(k[idx], mask[idx], nlf[idx], task[idx])
            torch.testing.assert_close(mixed[idx], alone, rtol=1e-5, atol=1e-6)
        # routing matters: the same sample through another task's parameters differs
        other = m(k, mask, nlf, (task + 1) % 3)
    assert not torch.allclose(mixed, other)


def test_untrained_network_is_zero_filled():
    from mrbench.fourier import ifft2c

    m = model("IVYW")
    k, mask, nlf = make_batch(4)
    with torch.no_grad():
        out = m(k, mask, nlf, torch.tensor([0, 1, 0, 1])).abs()
    zf = ifft2c(k)[:, 0].abs()
    assert (out - zf).abs().max() < 0.05 * zf.abs().max()


def test_per_task_etas():
    m = model("IV", share_etas=False)
    with torch.no_grad():
        m.cascades[0].eta.copy_(torch.tensor([0.5, 2.0]))
        m.cascades[1].eta.copy_(torch.tensor([1.5, 0.25]))
    assert m.cascades[0].eta.shape == (2,)
    assert m.etas() == pytest.approx([1.25, 0.875])
    assert m.eta_table() == [[0.5, 2.0], [1.5, 0.25]]
    k, mask, nlf = make_batch(4)
    task = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        out = m(k, mask, nlf, task)
        for t in range(2):
            shared = model("IV", share_etas=True)
            state = m.state_dict()
            for i in range(2):
                state[f"cascades.{i}.eta"] = state[f"cascades.{i}.eta"][t]
            shared.load_state_dict(state)
            idx = (task == t).nonzero().flatten()
            torch.testing.assert_close(out[idx], shared(k[idx], mask[idx], nlf[idx], task[idx]), rtol=1e-5, atol=1e-6)
    # η gets gradients per task
    m(k, mask, nlf, torch.tensor([0, 0, 0, 0])).abs().sum().backward()
    g = m.cascades[1].eta.grad  # (cascade 0 starts at k = k0: no data-consistency term yet)
    assert g[0] != 0 and g[1] == 0


# ----------------------------------------------------------------------------- weightings

L = torch.tensor([0.3, 0.1])
C = torch.tensor([3, 1])


def test_naive_sum_and_inverse_frequency():
    assert set(WEIGHTINGS) == {"naive", "uncert", "dwa", "gradnorm", "pcgrad"}
    assert float(Naive(2).combine(L, C)) == pytest.approx(0.4)
    assert float(Naive(2).combine(L, torch.tensor([4, 0]))) == pytest.approx(0.3)  # absent tasks count 0
    w = Naive(2, task_sizes=[30, 10], inverse_frequency=True)
    # c_t = (b_t/B)(N/n_t): (3/4)(40/30) = 1, (1/4)(40/10) = 1
    assert float(w.combine(L, C)) == pytest.approx(0.4)
    assert float(w.combine(L, torch.tensor([2, 2]))) == pytest.approx(0.5 * 40 / 30 * 0.3 + 0.5 * 4 * 0.1)
    assert w.weights() == pytest.approx({"weight/0": 40 / 60, "weight/1": 2.0})
    with pytest.raises(MrbenchError, match="valid: dwa, gradnorm, naive, pcgrad, uncert"):
        make_weighting("kendall", 2)


def test_uncertainty_value_and_gradient():
    w = Uncertainty(2, UncertaintyOptions(uncert_form="gaussian", uncert_init="zero"))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    total = w.combine(L, C)
    s = torch.tensor([0.5, -1.0])
    assert float(total.detach()) == pytest.approx(float((L / (2 * s.exp()) + s / 2).sum()), rel=1e-6)
    total.backward()
    # ∂/∂s_t = −L_t/(2 e^{s_t}) + 1/2
    torch.testing.assert_close(w.log_vars.grad, -L / (2 * s.exp()) + 0.5)
    w.log_vars.grad = None
    w.combine(L, torch.tensor([2, 0])).backward()
    assert w.log_vars.grad[1] == 0  # an absent task's s_t is untouched


def test_uncertainty_laplace_form_and_start_at_the_optimum():
    w = Uncertainty(2)  # defaults: laplace, s_t from the first losses
    total = w.combine(L, C)
    torch.testing.assert_close(w.log_vars.detach(), L.log())  # s_t = log L_t: the optimum of L/e^s + s
    assert float(total.detach()) == pytest.approx(float((L / L + L.log()).sum()), rel=1e-6)
    total.backward()
    assert w.log_vars.grad.abs().max() < 1e-6  # ∂/∂s_t = −L_t e^{−s_t} + 1 = 0 there
    w.log_vars.grad = None
    w.combine(2 * L, C).backward()  # later losses: no re-initialisation, the gradient tracks them
    torch.testing.assert_close(w.log_vars.detach(), L.log())
    assert (w.log_vars.grad < 0).all()


def _weights_after_demo_sized_run(name, budget=1200, batch=4, lr=3e-3, **opts):
    """A weighting driven the way the mtl method drives it, for a demo-sized run: 300 Adam
    steps at the demo's lr over two tasks whose normalised L1 losses (~0.05 and ~0.02, like
    the demo's) fall at different rates."""
    from mrbench.methods.weighting import GradNormOptions

    torch.manual_seed(0)
    cfg = {"uncert": UncertaintyOptions, "dwa": DWAOptions, "gradnorm": GradNormOptions}.get(name, lambda: None)()
    for k, v in opts.items():
        setattr(cfg, k, v)
    shared = nn.Linear(8, 8)
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
    model = nn.Sequential(shared)
    model.last_shared_layer = lambda: [shared.weight]
    w = make_weighting(name, 2, cfg, task_sizes=[600, 150], budget=budget)
    start = w.task_weights().clone()
    opt = torch.optim.Adam([*shared.parameters(), *heads.parameters(), *w.parameters()], lr=lr)
    x = torch.randn(batch, 8)
    targets = [torch.full((batch, 1), 0.05), torch.full((batch, 1), 0.02)]
    for step in range(budget // batch):
        opt.zero_grad()
        decay = [1.0 / (1 + step / 50), 1.0 / (1 + step / 200)]  # task 0 learns faster
        losses = torch.stack(
            [((heads[t](shared(x)) * 0.01).abs().mean() + targets[t].mean()) * decay[t] for t in range(2)]
        )
        w.backward(losses, torch.tensor([batch // 2, batch // 2]), model)
        opt.step()
        if hasattr(w, "renormalise"):
            w.renormalise()
    return start, w.task_weights()


@pytest.mark.parametrize("name", ["uncert", "dwa", "gradnorm"])
def test_adaptive_weightings_move_within_a_demo_sized_run(name):
    """Issue 12 defect 6: each adaptive weighting's weights must move within the budget."""
    start, end = _weights_after_demo_sized_run(name)
    if name == "dwa":  # λ = K softmax(r/T) with loss ratios r near 1 moves by a few per cent, by design
        assert (end - start).abs().max() > 0.005 and end[0] < end[1], (
            start,
            end,
        )  # the faster-falling task weighs less
    else:
        assert (end - start).abs().max() > 0.05 * start.abs().max(), (start, end)
    if name == "uncert":  # at the optimum s_t ≈ log L_t: the weights ∝ 1/L_t, the smaller loss weighs more
        assert end[1] > end[0]


def test_dwa_period_is_relative_to_the_budget():
    assert DWA(2, task_sizes=[600, 600], budget=1200).epoch_slices == 120  # 10 periods in the run
    assert DWA(2, DWAOptions(dwa_period=0), task_sizes=[600, 600], budget=1200).epoch_slices == 1200


def test_dwa_weights_after_two_epochs():
    w = DWA(2, task_sizes=[4, 4])  # an epoch = 8 slices
    seq = [  # (losses, counts) per step; 2 steps of 4 slices per epoch
        (torch.tensor([1.0, 2.0]), torch.tensor([2, 2])),
        (torch.tensor([3.0, 2.0]), torch.tensor([2, 2])),  # epoch 1 means: 2.0, 2.0
        (torch.tensor([1.0, 1.0]), torch.tensor([3, 1])),
        (torch.tensor([1.0, 2.0]), torch.tensor([1, 3])),  # epoch 2 means: 1.0, (1 + 6)/4 = 1.75
    ]
    for loss, count in seq:
        assert torch.equal(w.lambdas, torch.ones(2))  # naive for the first two epochs
        w.backward(loss.clone().requires_grad_(), count)
    r = torch.tensor([1.0 / 2.0, 1.75 / 2.0])
    expected = 2 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    torch.testing.assert_close(w.lambdas, expected)
    assert float(w.lambdas.sum()) == pytest.approx(2.0)
    assert w.lambdas[1] > w.lambdas[0]  # the task whose loss fell less gets more weight
    assert float(w.combine(L, C)) == pytest.approx(float((expected * L).sum()))
    # the state lives in buffers: a state_dict round trip restores it
    w2 = DWA(2, task_sizes=[4, 4])
    w2.load_state_dict(w.state_dict())
    assert torch.equal(w2.lambdas, w.lambdas) and int(w2.epochs) == 2 and int(w2.seen) == 16


def test_pcgrad_projection():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = −1 < 0
    p1, p2 = pcgrad_project([g1, g2])
    torch.testing.assert_close(p1, g1 - (g1 @ g2) / (g2 @ g2) * g2)
    torch.testing.assert_close(p2, g2 - (g2 @ g1) / (g1 @ g1) * g1)
    assert abs(float(p1 @ g2)) < 1e-6 and abs(float(p2 @ g1)) < 1e-6
    h1, h2 = torch.tensor([1.0, 0.5]), torch.tensor([0.5, 1.0])  # no conflict: untouched
    q1, q2 = pcgrad_project([h1, h2])
    assert torch.equal(q1, h1) and torch.equal(q2, h2)


def test_pcgrad_backward_on_shared_and_private_parameters():
    shared = torch.nn.Parameter(torch.zeros(2))
    private = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1)) for _ in range(2)])
    net = torch.nn.Module()
    net.shared, net.private = shared, private
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    losses = torch.stack([shared @ a + 2 * private[0].sum(), shared @ b + 3 * private[1].sum()])
    PCGrad(2).backward(losses, torch.tensor([2, 2]), net)
    expected = (a - (a @ b) / (b @ b) * b) + (b - (a @ b) / (a @ a) * a)
    torch.testing.assert_close(shared.grad, expected)
    assert float(private[0].grad) == 2.0 and float(private[1].grad) == 3.0


def test_gradnorm_renormalises_and_balances():
    w = GradNorm(2)
    layer = torch.nn.Parameter(torch.ones(3))
    net = torch.nn.Module()
    net.layer = layer
    net.last_shared_layer = lambda: [layer]
    opt = torch.optim.SGD([w.task_weight], lr=0.05)
    for _ in range(3):
        # task 0's gradient on the shared layer is 4× task 1's; equal loss ratios (r_t = 1)
        losses = torch.stack([4 * layer.sum(), layer.sum()])
        opt.zero_grad()
        layer.grad = None
        w.backward(losses, torch.tensor([2, 2]), net)
        opt.step()
        w.renormalise()
        assert float(w.task_weight.detach().sum()) == pytest.approx(2.0)
    assert w.task_weight[0] < 1 < w.task_weight[1]  # the task with the larger gradient is down-weighted
    assert sum(w.weights().values()) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl_data") / "d"
    # one training subject: an epoch (all tasks' training slices) is 8 slices, so DWA
    # leaves its naive start within a budget of 32
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 1, "val": 1, "test": 1}, slices=4, size=32
    )
    return root


def tiny(data_root, out, *extra):
    # the mtl network's depth comes from model.blocks; no unseen context by default
    overrides = ["model.backbone=mtl-varnet", "model.cascades=0", "data.unseen=[]", "eval.adapt_steps=0"]
    return tiny_run_settings(data_root, out, *overrides, *extra)


@pytest.mark.parametrize("blocks", ["IV", "IY", "IW"])
def test_mtl_run_end_to_end(data_root, tmp_path, blocks):
    extra = [f"model.blocks={blocks}", "mtl.weighting=uncert"]
    if blocks == "IV":
        extra += [
            'data.unseen=[{contrast="AXFLAIR", acceleration=6}]',
            "eval.adapt_steps=0,1",
            "model.share_etas=false",
        ]
    cfg = load_config(None, tiny(data_root, tmp_path, *extra), method="mtl")
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    assert (store.path / "DONE").exists() and m["cost"]["trained_slices"] == 32
    for name in ("AXT1/equispaced/4x", "AXT2/equispaced/4x"):
        assert 0 < m["contexts"][name]["steps"]["0"]["mean"]["ssim"] <= 1
    ckpt = torch.load(store.checkpoint_path("best"), weights_only=True)
    assert set(ckpt["models"]) == {"mtl", "weighting"}
    assert not torch.equal(ckpt["models"]["weighting"]["log_vars"], torch.zeros(2))  # s_t was trained
    expected = MTLVarNet(2, blocks, chans=4, pools=2, sens_chans=2, sens_pools=1, share_etas=blocks != "IV")
    assert m["cost"]["parameters"] == nparams(expected.parameters())
    if blocks == "IV":
        assert set(m["contexts"]["AXFLAIR/equispaced/6x"]["steps"]) == {"0", "1"}


def test_mtl_dwa_resume_equivalence(data_root, tmp_path):
    base = ["model.blocks=IV", "mtl.weighting=dwa", "train.val_every=8", "train.sampling=stratified"]
    full = execute(load_config(None, tiny(data_root, tmp_path / "a", *base), method="mtl"), quiet=True)
    cfg = load_config(None, tiny(data_root, tmp_path / "b", *base, "train.stop_after=16"), method="mtl")
    with pytest.raises(RunStopped, match="stopped after 16 slices"):
        execute(cfg, quiet=True)
    last = RunStore(cfg.run_dir).load_checkpoint("last")["models"]["weighting"]
    assert int(last["epochs"]) >= 2 and not torch.equal(last["lambdas"], torch.ones(2))  # DWA state is checkpointed
    cfg.train.stop_after = 0  # an operational key: may change on resume
    execute(cfg, resume=True, quiet=True)
    a = json.loads(full.metrics_path.read_text())
    b = json.loads(RunStore(cfg.run_dir).metrics_path.read_text())
    assert a["contexts"] == b["contexts"] and a["history"] == b["history"]


def test_experiment_file_parses():
    path = REPO / "evaluate" / "liu2021_mtl.toml"
    cfg = load_config(path, ["model.blocks=IIYYYYYYYYYY", "mtl.weighting=dwa"], method="mtl", scarcity=3)
    assert cfg.data.tasks == ["AXT1", "AXT2"] and cfg.data.scarce == ["AXT2"]
    assert cfg.model.blocks == "IIYYYYYYYYYY" and cfg.mtl.weighting == "dwa" and cfg.scarcity == 3
    from mrbench.methods.mtl import mtl_backbone_kwargs

    assert mtl_backbone_kwargs(cfg)["blocks"] == "IIYYYYYYYYYY"
    import tomllib

    sweep = tomllib.loads(path.read_text())["sweep"]
    assert sweep["scarcity"] == [0, 1, 2, 3]
    names = {
        e["name"] + ("-pernet" if "train.budget_per=network" in e.get("set", []) else "") for e in sweep["methods"]
    }
    assert {"stl", "stl-pernet", "joint", "transfer"} <= names and len(names) == len(sweep["methods"]) == 10
    for entry in sweep["methods"]:
        c = load_config(path, entry.get("set", []), method=entry["method"])
        assert c.method == entry["method"]
    with pytest.raises(MrbenchError, match="mtl.weighting"):
        load_config(path, ["mtl.weighting=kendall"], method="mtl")
    with pytest.raises(MrbenchError, match="model.blocks"):
        load_config(path, ["model.blocks=IIX"], method="mtl")


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_per_task_gradient_weightings_on_mtl_varnet(name):
    m = model("IV")
    k, mask, nlf = make_batch(4)
    task = torch.tensor([0, 1, 0, 1])
    target = torch.rand(4, 16, 16)
    per_sample = (m(k, mask, nlf, task).abs() - target).abs().mean(dim=(-2, -1))
    counts = torch.bincount(task, minlength=2)
    losses = torch.zeros(2).index_add(0, task, per_sample) / counts
    w = make_weighting(name, 2)
    total = w.backward(losses, counts, m)
    assert torch.isfinite(total)
    assert m.last_shared_layer() == list(m.cascades[0].regulariser.net.unet.final.parameters())
    for t in range(2):  # each split U-Net gets its own task's gradient only, unprojected
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.task_parameters(t))
    if name == "gradnorm":
        assert w.task_weight.grad is not None and float(w.task_weight.grad.abs().sum()) > 0


def test_mtl_rejects_other_backbones(data_root, tmp_path):
    with pytest.raises(MrbenchError, match="method mtl trains mtl-varnet or varnet, got 'unet'"):
        load_config(None, tiny(data_root, tmp_path, "model.backbone=unet"), method="mtl")  # refused before any run dir
