"""Meta-learning: the MAML inner loop (exact meta-gradients), parameter groups, Meta-Drop's
update and meta-context choice, and maml / metadrop runs end to end."""

import json
import math

import pytest
import torch
from conftest import tiny_run_settings, write_tiny_root
from torch import nn
from torch.func import functional_call

from mrbench.config import load_config
from mrbench.data.contexts import Context, context_grid
from mrbench.data.dataset import Sample, TaskData
from mrbench.errors import MrbenchError, RunStopped
from mrbench.methods import METHODS
from mrbench.methods.maml import MAML
from mrbench.methods.meta import adapt_names, detached_params, inner_loop, reconstruction_loss
from mrbench.methods.metadrop import MetaDrop, draw_pair, meta_candidates, metadrop_update
from mrbench.models import UNetRecon, VarNet
from mrbench.runner import execute
from mrbench.store import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- inner loop on a tiny MLP


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def mse(model, tensors, batch):
    x, y = batch
    return ((functional_call(model, tensors, (x,)) - y) ** 2).mean()


def data(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)


SUP, QRY = data(1), data(2)


def meta_grad(model, steps, order, lr=0.5, names=None):
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    fast = inner_loop(model, params, {}, SUP, steps, lr, order, names, loss=mse)
    return torch.autograd.grad(mse(model, fast, QRY), list(params.values()))


def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def finite_difference(model, steps, lr=0.5, eps=1e-6):
    """Central differences of φ ↦ L_query(inner_loop(φ)) coordinate by coordinate."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = []
    for name, p in base.items():
        g = torch.zeros_like(p).reshape(-1)
        for i in range(p.numel()):
            vals = []
            for sign in (1, -1):
                shifted = {n: v.clone().requires_grad_() for n, v in base.items()}
                with torch.no_grad():
                    shifted[name].view(-1)[i] += sign * eps
                fast = inner_loop(model, shifted, {}, SUP, steps, lr, 1 if steps == 0 else 2, list(shifted), loss=mse)
                vals.append(float(mse(model, fast, QRY).detach()))
            g[i] = (vals[0] - vals[1]) / (2 * eps)
        out.append(g)
    return torch.cat(out)


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    model = mlp()
    g2 = flat(meta_grad(model, steps, order=2))
    fd = finite_difference(model, steps)
    assert float((g2 - fd).norm() / fd.norm()) <= 1e-3
    g1 = flat(meta_grad(model, steps, order=1))
    assert float((g1 - g2).norm() / g2.norm()) > 0.05  # first-order differs measurably
    # first order = the query gradient at the adapted parameters
    fast = inner_loop(
        model,
        dict(model.named_parameters()),
        {},
        SUP,
        steps,
        0.5,
        1,
        [n for n, _ in model.named_parameters()],
        loss=mse,
    )
    at = {n: v.detach().requires_grad_() for n, v in fast.items()}
    torch.testing.assert_close(g1, flat(torch.autograd.grad(mse(model, at, QRY), list(at.values()))))


def test_one_step_formula_and_zero_steps_is_plain_gradient():
    model = mlp()
    params = dict(model.named_parameters())
    fast = inner_loop(model, params, {}, SUP, 1, 0.5, 2, list(params), loss=mse)
    grads = torch.autograd.grad(mse(model, params, SUP), list(params.values()))
    for (n, p), g in zip(params.items(), grads):
        torch.testing.assert_close(fast[n], p - 0.5 * g)  # φ' = φ − α∇L_sup(φ)
    plain = flat(torch.autograd.grad(mse(model, params, QRY), list(params.values())))
    for order in (1, 2):
        torch.testing.assert_close(flat(meta_grad(model, 0, order)), plain, rtol=0, atol=0)
    assert inner_loop(model, params, {}, SUP, 0, 0.5, 2, list(params), loss=mse) == params


def test_adapt_subset_leaves_shared_parameters_alone():
    model = mlp()
    params = dict(model.named_parameters())
    fast = inner_loop(model, params, {}, SUP, 3, 0.5, 2, ["2.weight", "2.bias"], loss=mse)
    assert fast["0.weight"] is params["0.weight"] and fast["0.bias"] is params["0.bias"]
    assert not torch.equal(fast["2.weight"], params["2.weight"])
    # second order through a head-only loop still reaches the shared body
    g = torch.autograd.grad(mse(model, fast, QRY), [params["0.weight"]])[0]
    assert float(g.abs().sum()) > 0


# ----------------------------------------------------------------------------- real backbones


def kspace_batch(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, 1, size, size, generator=g, dtype=torch.complex64)
    mask = torch.zeros(b, 1, size, size)
    mask[..., ::2] = 1
    mask[..., size // 2 - 2 : size // 2 + 2] = 1
    target = torch.rand(b, size, size, generator=g)
    return Sample(
        k * mask,
        mask,
        target,
        target,
        torch.zeros(b, dtype=torch.long),
        ["x"] * b,
        torch.zeros(b),
        torch.ones(b),
        torch.full((b,), 4),
    )


def tiny_varnet():
    torch.manual_seed(0)
    return VarNet(cascades=2, chans=2, pools=1, sens_chans=2, sens_pools=1)


def test_varnet_first_and_second_order_differ():
    net = tiny_varnet()
    net.cascades[1].regulariser.unet.final.weight.data.mul_(100)  # leave the near-identity start
    params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
    sup, qry = kspace_batch(seed=1), kspace_batch(seed=2)
    grads = {}
    for order in (1, 2):
        fast = inner_loop(net, params, buffers, sup, 1, 0.1, order, list(params))
        assert fast.keys() == params.keys() and all(fast[n].shape == p.shape for n, p in params.items())
        loss = reconstruction_loss(net, {**fast, **buffers}, qry)
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads[order] = torch.cat([g.reshape(-1) for g in gs if g is not None])
    assert grads[1].shape == grads[2].shape and torch.isfinite(grads[2]).all()
    assert float((grads[1] - grads[2]).norm() / grads[2].norm()) > 1e-3


def test_adapt_groups():
    net = tiny_varnet()
    names = [n for n, _ in net.named_parameters()]
    assert adapt_names(net, "all") == names
    reg = adapt_names(net, "regulariser")
    assert reg and all(n.startswith("cascades.") and ".regulariser." in n for n in reg)
    assert adapt_names(net, "eta") == ["cascades.0.eta", "cascades.1.eta"]
    assert adapt_names(net, "last") == [n for n in names if ".unet.final." in n and not n.startswith("sens_net")]
    assert adapt_names(net, "cascades.1.") == [n for n in names if n.startswith("cascades.1.")]
    assert adapt_names(UNetRecon(4, 1), "regulariser") == [n for n, _ in UNetRecon(4, 1).named_parameters()]
    with pytest.raises(MrbenchError, match="meta.adapt: 'eta' selects no parameter of the UNetRecon"):
        adapt_names(UNetRecon(4, 1), "eta")
    # only the group moves; the rest are the very same tensors
    params = dict(net.named_parameters())
    fast = inner_loop(net, params, dict(net.named_buffers()), kspace_batch(), 2, 0.1, 1, reg)
    for n in names:
        if n in reg:
            assert not torch.equal(fast[n], params[n]), n
        else:
            assert fast[n] is params[n], n


def fake_tasks(contexts):
    return [TaskData(c.name, c, ()) for c in contexts]


def maml_method(*sets):
    cfg = load_config(None, ["model.cascades=2", "model.chans=2", "model.pools=1", *sets], method="maml")
    torch.manual_seed(0)
    tasks = fake_tasks(context_grid(["AXT1", "AXT2"], ["equispaced"], [4.0]))
    return MAML.from_config(cfg, tasks, [False, True], lambda: VarNet(**cfg.model.backbone_kwargs()))


def test_maml_test_time_adaptation():
    method = maml_method("meta.adapt=regulariser", "meta.inner_lr=0.05")
    net = method.models["net"]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    sup, x = kspace_batch(seed=3), kspace_batch(seed=4)
    ctx = Context("AXFLAIR")
    with torch.no_grad():
        ref = net(x.kspace, x.mask, x.num_low_frequencies).abs()
        torch.testing.assert_close(method.adapt(ctx, sup, 0, 1e-4)(x), ref, rtol=0, atol=0)
    recon = method.adapt(ctx, sup, 2, 1e-4)
    # MAML's rule: 2 SGD steps at meta.inner_lr on the regulariser group
    fast = inner_loop(net, detached_params(net, method.adapt_names), {}, sup, 2, 0.05, 1, method.adapt_names)
    with torch.no_grad():
        expected = functional_call(
            net, {n: v.detach() for n, v in fast.items()}, (x.kspace, x.mask, x.num_low_frequencies)
        ).abs()
        torch.testing.assert_close(recon(x), expected)
        assert not torch.allclose(recon(x), ref)
    for n, p in net.named_parameters():  # the meta-learned network is untouched
        assert torch.equal(p, before[n])
    assert method.episode_slices() == 2 * (1 * 1 + 2)  # meta.support = 0: matched to eval.support (no volumes here: 1)
    assert maml_method("meta.support=2").episode_slices() == 2 * (2 * 1 + 2)


# ----------------------------------------------------------------------------- Meta-Drop


def test_metadrop_update_on_a_linear_model_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    W0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    xa, ya = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, -1.0], dtype=torch.float64)
    xb, yb = torch.tensor([-0.5, 1.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.2], dtype=torch.float64)
    lr, alpha, eta = 0.1, 0.7, 0.05
    lt, lm = metadrop_update(
        lin,
        lambda: ((lin(xa) - ya) ** 2).sum(),
        lambda: ((lin(xb) - yb) ** 2).sum(),
        lr,
        alpha,
        eta,
    )
    # by hand: ∇_W Σ(Wx + b − y)² = 2 r xᵀ, ∇_b = 2 r
    ra = W0 @ xa + b0 - ya
    Wt, bt = W0 - lr * 2 * torch.outer(ra, xa), b0 - lr * 2 * ra
    rb = Wt @ xb + bt - yb
    W = W0 + alpha * (Wt - W0) - eta * 2 * torch.outer(rb, xb)
    b = b0 + alpha * (bt - b0) - eta * 2 * rb
    assert float((lin.weight.detach() - W).abs().max()) < 1e-6 and float((lin.bias.detach() - b).abs().max()) < 1e-6
    assert lt == pytest.approx(float((ra**2).sum())) and lm == pytest.approx(float((rb**2).sum()))
    assert lin.weight.grad is None and lin.bias.grad is None  # the engine's Adam step changes nothing

    # outer = "adam-outer": parameters stop at φ₀ + α(φ̃ − φ₀), the meta gradient waits in .grad
    lin2 = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin2.weight.copy_(W0)
        lin2.bias.copy_(b0)
    metadrop_update(lin2, lambda: ((lin2(xa) - ya) ** 2).sum(), lambda: ((lin2(xb) - yb) ** 2).sum(), lr, alpha, None)
    torch.testing.assert_close(lin2.weight.detach(), W0 + alpha * (Wt - W0))
    torch.testing.assert_close(lin2.weight.grad, 2 * torch.outer(rb, xb))
    torch.testing.assert_close(lin2.bias.grad, 2 * rb)


def test_metadrop_notes_variant_adam_inner_step_then_plain_sgd_meta_term():
    """Issue 12 defect 5: the notes' order — φ̃ by the training optimiser (Adam, moments carried
    across steps), then φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇L_meta(φ̃) with plain η_meta."""
    from mrbench.methods.metadrop import AdamInnerStep

    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    W0 = lin.weight.detach().clone()
    b0 = lin.bias.detach().clone()
    xa, ya = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, -1.0], dtype=torch.float64)
    xb, yb = torch.tensor([-0.5, 1.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.2], dtype=torch.float64)
    lr, alpha, eta = 0.01, 0.8, 0.05
    inner = AdamInnerStep(list(lin.parameters()), lr)
    metadrop_update(lin, lambda: ((lin(xa) - ya) ** 2).sum(), lambda: ((lin(xb) - yb) ** 2).sum(), inner, alpha, eta)
    ra = W0 @ xa + b0 - ya
    ga_W = 2 * torch.outer(ra, xa)
    Wt = W0 - lr * ga_W / (ga_W.abs() + 1e-8)  # Adam's first step: m̂ = g, v̂ = g²
    bt = b0 - lr * (2 * ra) / ((2 * ra).abs() + 1e-8)
    rb = Wt @ xb + bt - yb
    W = W0 + alpha * (Wt - W0) - eta * 2 * torch.outer(rb, xb)
    torch.testing.assert_close(lin.weight.detach(), W)
    assert lin.weight.grad is None  # nothing for the engine's optimiser
    metadrop_update(lin, lambda: ((lin(xa) - ya) ** 2).sum(), lambda: ((lin(xb) - yb) ** 2).sum(), inner, alpha, eta)
    assert int(inner.opt.state[lin.weight]["step"]) == 2  # moments carried across steps
    from mrbench.config import Config

    assert Config().meta.outer == "adam-inner"


def test_meta_outer_old_names_are_aliases_with_a_deprecation_line(capsys):
    from mrbench.config import load_config

    cfg = load_config(None, ["meta.outer=notes"], method="metadrop")
    assert cfg.meta.outer == "adam-inner"
    assert 'meta.outer = "notes" is deprecated; it is now "adam-inner"' in capsys.readouterr().err
    assert load_config(None, ["meta.outer=adam"], method="metadrop").meta.outer == "adam-outer"


GRID = context_grid(["AXT1", "AXT2"], ["equispaced", "random"], [4.0, 8.0])


@pytest.mark.parametrize(
    "rule,ok",
    [
        ("other-contrast", lambda a, b: a.contrast != b.contrast),
        ("other-mask", lambda a, b: a.contrast == b.contrast and a.mask != b.mask),
        (
            "other-acceleration",
            lambda a, b: (a.contrast, a.mask) == (b.contrast, b.mask) and a.acceleration != b.acceleration,
        ),
        ("any", lambda a, b: True),
    ],
)
def test_meta_context_choice(rule, ok):
    cands, fallback = meta_candidates(GRID, rule)
    assert fallback == []
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(2000):
        a, b = draw_pair(cands, g)
        assert a != b and ok(GRID[a], GRID[b])
        seen.add((a, b))
    allowed = {(a, b) for a in range(len(GRID)) for b in range(len(GRID)) if a != b and ok(GRID[a], GRID[b])}
    assert seen == allowed  # every admissible pair is drawn


def test_meta_context_fallback_and_single_task():
    ctxs = context_grid(["AXT1", "AXT2"], ["equispaced"], [4.0])
    cands, fallback = meta_candidates(ctxs, "other-mask")  # one mask: nobody has a partner
    assert fallback == [0, 1] and cands == [[1], [0]]
    cands, fallback = meta_candidates(
        context_grid(["AXT1"], ["equispaced", "random"], [4.0]) + ctxs[1:], "other-contrast"
    )
    assert fallback == [] and cands[0] == [2]
    cands, fallback = meta_candidates(context_grid(["AXT1"], ["equispaced", "random"], [4.0]), "other-contrast")
    assert fallback == [0, 1]
    cfg = load_config(None, [], method="metadrop")
    with pytest.raises(MrbenchError, match="at least two seen contexts"):
        MetaDrop.from_config(cfg, fake_tasks(ctxs[:1]), [False], tiny_varnet)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta_data") / "d"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4, size=32
    )
    return root


def tiny(data_root, out, *extra):
    overrides = [
        "data.mask=equispaced,random",
        "train.budget=48",
        "model.chans=2",
        "model.pools=1",
        "meta.support=2",
        "meta.query=2",
        "meta.tasks_per_batch=2",
    ]
    return tiny_run_settings(data_root, out, *overrides, *extra)


def check_run(store, trained):
    m = store.read_json("metrics.json")
    assert (store.path / "DONE").exists()
    ctx = m["contexts"]
    seen = [c.name for c in context_grid(["AXT1", "AXT2"], ["equispaced", "random"], [4.0])]
    assert set(ctx) == {*seen, "AXFLAIR/equispaced/6x"}
    assert set(ctx["AXFLAIR/equispaced/6x"]["steps"]) == {"0", "2"}
    for name in seen:
        assert 0 < ctx[name]["steps"]["0"]["mean"]["ssim"] <= 1
    assert m["cost"]["trained_slices"] == trained
    assert m["cost"]["parameters"] == sum(p.numel() for p in tiny_varnet().parameters())
    return m


def test_registry():
    assert METHODS["maml"] is MAML and METHODS["metadrop"] is MetaDrop


@pytest.mark.parametrize("order", [1, 2])
def test_maml_run(data_root, tmp_path, order):
    # an episode is 2 tasks × (2 support × 1 step + 2 query) = 8 slices; budget 44 → 6 episodes
    cfg = load_config(None, tiny(data_root, tmp_path, f"meta.order={order}", "train.budget=44"), method="maml")
    m = check_run(execute(cfg, quiet=True), trained=math.ceil(44 / 8) * 8)
    assert m["history"][-1]["slices"] == 48


def test_maml_two_inner_steps_budget_and_resume(data_root, tmp_path):
    extra = ["meta.inner_steps=2"]  # 2 × (2 × 2 + 2) = 12 slices per episode → 4 episodes
    full = execute(load_config(None, tiny(data_root, tmp_path / "a", *extra), method="maml"), quiet=True)
    ref = check_run(full, trained=48)
    cfg = load_config(None, tiny(data_root, tmp_path / "b", *extra, "train.stop_after=16"), method="maml")
    with pytest.raises(RunStopped, match="stopped after 24 slices"):
        execute(cfg, quiet=True)
    cfg.train.stop_after = 0
    execute(cfg, resume=True, quiet=True)
    again = json.loads(RunStore(cfg.run_dir).metrics_path.read_text())
    assert again["contexts"] == ref["contexts"] and again["history"] == ref["history"]


def test_metadrop_run(data_root, tmp_path):
    # a step is 2 (task A) + 2 (meta task) slices; budget 46 → 12 steps
    cfg = load_config(
        None, tiny(data_root, tmp_path, "train.budget=46", "meta.meta_context=other-mask"), method="metadrop"
    )
    store = execute(cfg, quiet=True)
    check_run(store, trained=48)
    best = torch.load(store.checkpoint_path("best"), weights_only=True)["models"]["net"]
    init = tiny_varnet().state_dict()
    assert any(not torch.equal(best[k], init[k]) for k in init)  # the in-place update trained the net
