"""``meta.vmap``: MAML's vectorised inner loop over tasks gives the per-task loop's
meta-gradient (first and second order, U-Net and VarNet), falls back to the loop on
batches of different sizes, refuses self-supervised losses, and runs end to end."""

import dataclasses

import pytest
import torch
from conftest import tiny_run_settings, write_tiny_root

from mrbench.config import load_config
from mrbench.data.contexts import context_grid
from mrbench.data.dataset import Sample, TaskData
from mrbench.errors import MrbenchError
from mrbench.methods.maml import MAML
from mrbench.methods.meta import stack_tasks
from mrbench.models import UNetRecon, VarNet
from mrbench.runner import execute

pytestmark = pytest.mark.usefixtures("one_thread")

T = 3


def batch(n: int, size: int, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    mask[..., ::2] = 1
    mask[..., size // 2 - 2 : size // 2 + 2] = 1
    k = torch.randn(n, 1, size, size, generator=g, dtype=torch.complex64) * mask
    target = torch.rand(n, size, size, generator=g)
    return Sample(
        k,
        mask,
        target,
        target,
        torch.zeros(n, dtype=torch.long),
        [f"f{seed}"] * n,
        torch.arange(n),
        torch.ones(n),
        torch.full((n,), 4),
    )


def maml(backbone: str, order: int, vmap: bool, steps: int = 1) -> MAML:
    cfg = load_config(
        None,
        [
            f"meta.order={order}",
            f"meta.inner_steps={steps}",
            "meta.inner_lr=0.5",
            "meta.support=2",
            "meta.query=2",
            f"meta.tasks_per_batch={T}",
            f"meta.vmap={str(vmap).lower()}",
        ],
        method="maml",
    )
    tasks = [TaskData(c.name, c, ()) for c in context_grid([f"C{i}" for i in range(T)], ["equispaced"], [4.0])]

    def make():
        torch.manual_seed(0)
        if backbone == "unet":
            return UNetRecon(4, 2)
        return VarNet(cascades=2, chans=4, pools=2, sens_chans=2, sens_pools=1)

    return MAML.from_config(cfg, tasks, [False] * T, make)


def meta_gradient(method: MAML, sizes=(16,) * T):
    """One meta-step's gradient, every task's support and query batch distinct (seeded by
    task and draw), the tasks drawn in the same order for both implementations."""
    drawn: dict = {}

    def source(n, task=None):
        k = drawn[task] = drawn.get(task, -1) + 1
        return batch(n, sizes[task], 10 * task + k)

    torch.manual_seed(1)
    result = method.step(source)
    grads = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in method.models["net"].parameters()]
    )
    return result, grads


@pytest.mark.parametrize("backbone", ["unet", "varnet"])
@pytest.mark.parametrize("order,steps", [(1, 1), (2, 1), (2, 2)])
def test_vmap_meta_gradient_equals_the_loop(backbone, order, steps):
    loop_result, loop = meta_gradient(maml(backbone, order, False, steps))
    vmap_result, vec = meta_gradient(maml(backbone, order, True, steps))
    assert loop.abs().max() > 0
    assert torch.allclose(vec, loop, rtol=1e-3, atol=1e-6 * float(loop.abs().max())), float((vec - loop).abs().max())
    assert vmap_result.task_losses.keys() == loop_result.task_losses.keys()
    for t, value in loop_result.task_losses.items():
        assert vmap_result.task_losses[t] == pytest.approx(value, rel=1e-5)
    assert vmap_result.slices == loop_result.slices


def test_second_order_term_is_present():
    """Order 2 differs from order 1 in both implementations (the inner gradient's graph is
    kept under vmap too), and by the same amount."""
    _, first = meta_gradient(maml("unet", 1, True))
    _, second = meta_gradient(maml("unet", 2, True))
    _, second_loop = meta_gradient(maml("unet", 2, False))
    _, first_loop = meta_gradient(maml("unet", 1, False))
    assert (second - first).abs().max() > 1e-3 * first.abs().max()
    assert torch.allclose(second - first, second_loop - first_loop, atol=1e-4 * float(first.abs().max()))


def test_mixed_sizes_fall_back_to_the_loop():
    sizes = (16, 24, 16)
    assert stack_tasks([batch(2, s, 0) for s in sizes]) is None
    _, loop = meta_gradient(maml("unet", 1, False), sizes)
    _, vec = meta_gradient(maml("unet", 1, True), sizes)
    assert torch.equal(vec, loop)  # the very same per-task computation


def test_vmap_refuses_self_supervised_losses():
    with pytest.raises(MrbenchError, match="meta.vmap"):  # refused when the configuration is checked
        load_config(None, ["meta.vmap=true", "train.loss=ei"], method="maml")


def test_maml_run_with_vmap(tmp_path):
    root = tmp_path / "d"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4, size=32
    )
    settings = tiny_run_settings(
        root,
        tmp_path / "runs",
        "train.budget=32",
        "model.chans=2",
        "model.pools=1",
        "meta.support=2",
        "meta.query=2",
        "meta.tasks_per_batch=2",
    )
    runs = {}
    for vmap in ("false", "true"):
        cfg = load_config(None, [*settings, f"meta.vmap={vmap}", f"run.name=v{vmap}"], method="maml")
        runs[vmap] = execute(cfg, quiet=True).read_json("metrics.json")
    assert runs["true"]["cost"] == runs["false"]["cost"]
    for name, ctx in runs["false"]["contexts"].items():
        assert runs["true"]["contexts"][name]["steps"]["0"]["mean"]["psnr"] == pytest.approx(
            ctx["steps"]["0"]["mean"]["psnr"], abs=0.05
        )


@pytest.mark.parametrize("method", ["kmmaml", "metadrop"])
def test_other_meta_learners_refuse_vmap(method):
    with pytest.raises(MrbenchError, match=f"meta.vmap: only maml.*{method}"):
        load_config(None, ["meta.vmap=true"], method=method)


def test_learned_inner_rates_get_the_loops_meta_gradient():
    """Meta-SGD (meta.inner_lr = "learned"): the rates' gradients match too."""
    grads = {}
    for vmap in (False, True):
        method = maml("unet", 1, vmap)
        opts = dataclasses.replace(method.opts, inner_lr="learned")
        method = MAML(
            method.plan,
            method.tasks,
            [False] * T,
            lambda: (torch.manual_seed(0), UNetRecon(4, 2))[1],
            method.loss,
            opts,
        )
        meta_gradient(method)
        grads[vmap] = method.models["inner_lr"].rates.grad.clone()
    assert grads[False].abs().max() > 0
    assert torch.allclose(grads[True], grads[False], rtol=1e-3, atol=1e-6 * float(grads[False].abs().max()))
