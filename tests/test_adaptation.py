"""Test-time adaptation that works and is chosen fairly (issue 12, defect 2): support sets of
whole volumes, Meta-SGD's learned inner rates, and each method's rule, lr and step count
chosen on seen-context validation data, never on the test set."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_run_settings, write_tiny_root

from mrbench.config import load_config
from mrbench.data.assemble import assemble
from mrbench.data.dataset import VolumeStore
from mrbench.evaluation.adaptation import select_adaptation
from mrbench.runner import build_method, execute


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt") / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 4, "val": 2, "test": 2}, slices=4)
    return root


def settings(data_root, out, *extra):
    return tiny_run_settings(data_root, out, "eval.adapt_lr=[1e-4, 3e-3]", "eval.adapt_steps=[0, 3]", *extra)


def test_support_sets_are_whole_volumes_the_same_for_seen_and_unseen(data_root, tmp_path):
    cfg = load_config(None, settings(data_root, tmp_path, "eval.support=2"), method="joint")
    assert cfg.eval.support_unit == "volumes"
    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    for picks in [*data.support_slices.values(), *data.seen_support_slices.values()]:
        files = {f for f, _ in picks}
        assert len(files) == 2 and len(picks) == 2 * 4  # two whole volumes of 4 slices
    slices = assemble(cfg.data, 0, 3, "slices").support_slices["AXFLAIR/equispaced/6x"]
    assert len(slices) == 3


def test_choice_is_made_on_seen_validation_only_and_recorded(data_root, tmp_path):
    cfg = load_config(None, settings(data_root, tmp_path, "train.budget=48"), method="joint")
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    choice = m["adaptation"]
    assert choice["selected_on"] == "seen-validation"
    rows = choice["candidates"]
    assert {(r["rule"], r["lr"], r["steps"]) for r in rows} == {
        ("finetune", lr, k) for lr in (1e-4, 3e-3) for k in (0, 3)
    }
    best = max(rows, key=lambda r: (round(r["ssim"], 6), -r["steps"]))
    assert (choice["rule"], choice["lr"], choice["steps"]) == (best["rule"], best["lr"], best["steps"])
    unseen = m["contexts"]["AXFLAIR/equispaced/6x"]
    assert unseen["chosen_steps"] == choice["steps"]
    # the same choice without any test volume in sight
    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    blind = dataclasses.replace(data, test=[], unseen_test=[])
    method = build_method(cfg, data, torch.device("cpu"))
    method.load_state_dict(store.load_checkpoint("best")["models"])
    for net in method.models.values():
        net.eval()
    again = select_adaptation(method, cfg, blind, torch.device("cpu"), VolumeStore(), [0, 3])
    assert (again["rule"], again["lr"], again["steps"]) == (choice["rule"], choice["lr"], choice["steps"])
    assert [r["ssim"] for r in again["candidates"]] == pytest.approx([r["ssim"] for r in rows])


@pytest.mark.parametrize("method", ["joint", "maml"])
def test_adaptation_changes_unseen_reconstructions(method, data_root, tmp_path):
    """The effect, not the call: k > 0 steps on the support set move the unseen PSNR."""
    extra = ["train.budget=48", "meta.support=2", "meta.query=2", "meta.inner_lr=0.5"]
    store = execute(
        load_config(None, settings(data_root, tmp_path, *extra, "eval.select=fixed"), method=method), quiet=True
    )
    steps = store.read_json("metrics.json")["contexts"]["AXFLAIR/equispaced/6x"]["steps"]
    assert abs(steps["3"]["mean"]["psnr"] - steps["0"]["mean"]["psnr"]) > 1e-3


def test_meta_sgd_learns_its_inner_rates_and_adapts_with_them(data_root, tmp_path):
    cfg = load_config(
        None,
        settings(
            data_root,
            tmp_path,
            "train.budget=64",
            "meta.inner_lr=learned",
            "meta.inner_lr_init=0.01",
            "meta.support=2",
            "meta.query=2",
        ),
        method="maml",
    )
    store = execute(cfg, quiet=True)
    rates = store.load_checkpoint("last")["models"]["inner_lr"]["rates"]
    assert rates.shape[0] > 1 and not torch.allclose(rates, torch.full_like(rates, 0.01))  # meta-learned
    assert any(r["rule"] == "inner" for r in store.read_json("metrics.json")["adaptation"]["candidates"])
    with pytest.raises(Exception, match='must be > 0 or "learned"'):
        load_config(None, ["meta.inner_lr=fast"], method="maml")


def test_meta_support_matches_the_test_time_support_set(data_root, tmp_path):
    cfg = load_config(None, settings(data_root, tmp_path, "eval.support=2"), method="maml")
    assert cfg.meta.support == 0
    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, torch.device("cpu"))

    assert method.support_slices() == 2 * 4  # 2 volumes × 4 slices, as the support sets above


def _spy_batches(method, rule, support, ctx, lr=1e-3):
    """The support-slice counts every adaptation step of ``rule`` pushed through the backbone."""
    seen: list[int] = []
    nets = list(method.models.values())
    hooks = [n.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0])) for n in nets]
    try:
        for _ in method.adapt_path(ctx, support, [0, 3], lr, rule):
            pass
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("method_name, rule", [("joint", "finetune"), ("maml", "inner")])
def test_adapt_batch_steps_on_minibatches_covering_the_support_set(method_name, rule, data_root, tmp_path):
    """``eval.adapt_batch = 3`` on an 8-slice support set: each step sees 3 slices, and the
    fixed cyclic order visits every slice before repeating (speed, issue 15)."""
    from mrbench.methods.base import support_minibatch

    cfg = load_config(None, settings(data_root, tmp_path, "eval.support=2", "eval.adapt_batch=3"), method=method_name)
    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, torch.device("cpu"))
    from mrbench.data.dataset import SliceDataset
    from mrbench.evaluation.adaptation import support_batch

    ctx = data.unseen_test[0].context
    support = support_batch(
        SliceDataset(data.unseen_support, train=False, store=VolumeStore()),
        0,
        data.support_slices[ctx.name],
        torch.device("cpu"),
    )
    assert support.kspace.shape[0] == 8
    assert _spy_batches(method, rule, support, ctx) == [3, 3, 3]
    firsts = [tuple(support_minibatch(support, 3, s).slice_idx.tolist()) for s in range(3)]
    names = [support_minibatch(support, 3, s).fname for s in range(3)]
    visited = {(f, i) for n, s in zip(names, firsts) for f, i in zip(n, s)}
    assert len(visited) == 8  # 9 picks over 3 steps: all 8 slices, one repeated
    whole = load_config(None, settings(data_root, tmp_path, "eval.support=2"), method=method_name)
    assert _spy_batches(build_method(whole, data, torch.device("cpu")), rule, support, ctx) == [8, 8, 8]


def test_mtl_adapts_an_unseen_context_through_the_nearest_seen_task(data_root, tmp_path):
    """The unseen dataset's own task index means nothing to the multi-task network: fine-tuning
    routes through nearest_task (before, unseen context i went through seen task i's blocks)."""
    cfg = load_config(None, settings(data_root, tmp_path, "eval.support=1"), method="mtl")
    data = assemble(cfg.data, 0, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, torch.device("cpu"))
    ctx = data.unseen_test[0].context
    routed: list[set] = []
    net = method.models["mtl"]
    forward = method.adapt_forward(ctx)
    from mrbench.data.dataset import SliceDataset
    from mrbench.evaluation.adaptation import support_batch

    support = support_batch(
        SliceDataset(data.unseen_support, train=False, store=VolumeStore()),
        0,
        data.support_slices[ctx.name],
        torch.device("cpu"),
    )
    support = support._replace(task=torch.full_like(support.task, 5))  # an index no seen task has
    h = net.register_forward_pre_hook(lambda m, args: routed.append(set(args[3].tolist())))
    forward(net, support)
    h.remove()
    assert routed == [{method.nearest_task(ctx)}]


def test_support_curves_are_computed_stored_and_plotted(data_root, tmp_path):
    """Issue 19 item 5: unseen-context metrics against the support size, with the run's own
    chosen rule — bigger support sets change what fine-tuning does — in metrics.json and in
    the report."""
    from click.testing import CliRunner

    from mrbench.cli import main
    from mrbench.reports.compare import build_layout
    from mrbench.reports.results import load_runs, support_records

    cfg = load_config(None, settings(data_root, tmp_path, "train.budget=48", "eval.select=fixed"), method="joint")
    store = execute(cfg, quiet=True)
    res = CliRunner().invoke(main, ["evaluate", str(store.path.parent), "--support-sizes", "1,2"])
    assert res.exit_code == 0, res.output
    curve = store.read_json("metrics.json")["contexts"]["AXFLAIR/equispaced/6x"]["support_curve"]
    assert set(curve) == {"1", "2"} and set(curve["1"]) == {"0", "3"}
    assert curve["1"]["0"] == curve["2"]["0"]  # 0 steps: the support set is not used
    assert curve["1"]["3"]["psnr"] != curve["2"]["3"]["psnr"]  # 3 steps on 1 vs 2 volumes differ
    rec = support_records(load_runs([store.path]))
    assert len(rec) == 4 and set(rec["support"]) == {1, 2}
    layout = build_layout(load_runs([store.path]), reference="joint")
    assert layout.select_one({"name": "support:AXFLAIR/equispaced/6x"}) is not None
    bad = CliRunner().invoke(main, ["evaluate", str(store.path), "--support-sizes", "0"])
    assert bad.exit_code == 2 and "≥ 1" in bad.output
