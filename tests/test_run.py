"""`mrbench run` / `evaluate` / `ls`: determinism, resume, store layout, methods, errors."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_run_settings, write_tiny_root

from mrbench.cli import main
from mrbench.config import load_config
from mrbench.errors import RunStopped
from mrbench.runner import execute
from mrbench.store import RunStore


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs_data") / "d"
    write_tiny_root(
        root,
        contrasts=("AXT1", "AXT2", "AXFLAIR"),
        per_split={"train": 4, "val": 1, "test": 1},
        slices=4,
        size=32,
    )
    return root


def tiny(data_root, out, *extra):
    return tiny_run_settings(data_root, out, *extra)


def run_cfg(data_root, out, method="stl", *extra, scarcity=0):
    return load_config(None, tiny(data_root, out, *extra), method=method, scarcity=scarcity)


def test_store_layout_and_metrics(data_root, tmp_path):
    store = execute(run_cfg(data_root, tmp_path, "stl", scarcity=1), quiet=True)
    assert store.path == tmp_path / "default" / "stl-varnet-s1-seed0"
    for name in ("config.json", "manifest.json", "metrics.json", "DONE", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (store.path / name).exists(), name
    assert any(store.tb_dir.iterdir())
    cfg = store.read_json("config.json")
    assert cfg["train"]["schedule"] == "cosine" and cfg["scarcity"] == 1  # every default written out
    manifest = store.read_json("manifest.json")
    lists = manifest["training_slices"]
    assert lists["AXT1/equispaced/4x"]["volumes"] == 4 and lists["AXT2/equispaced/4x"]["volumes"] == 2
    assert len(manifest["files"]) == 6 + 4 + 5 and manifest["versions"]["torch"]
    metrics = store.read_json("metrics.json")
    ctx = metrics["contexts"]
    assert set(ctx) == {"AXT1/equispaced/4x", "AXT2/equispaced/4x", "AXFLAIR/equispaced/6x"}
    assert ctx["AXT2/equispaced/4x"]["scarce"] and ctx["AXT2/equispaced/4x"]["train_slices"] == 8
    assert set(ctx["AXFLAIR/equispaced/6x"]["steps"]) == {"0", "2"}
    vol = ctx["AXT1/equispaced/4x"]["steps"]["0"]
    assert len(vol["volumes"]) == 1 and 0 < vol["mean"]["ssim"] <= 1 and vol["mean"]["psnr"] > 0
    assert metrics["cost"]["trained_slices"] == 32 and metrics["cost"]["parameters"] > 0
    ckpt = torch.load(store.checkpoint_path("best"), weights_only=True)
    assert set(ckpt["models"]) == {"task0", "task1"}  # STL: one network per task


def test_same_config_same_metrics_and_resume_equivalence(data_root, tmp_path):
    a = execute(run_cfg(data_root, tmp_path / "a", "joint"), quiet=True)
    b = execute(run_cfg(data_root, tmp_path / "b", "joint"), quiet=True)
    assert a.metrics_path.read_bytes() == b.metrics_path.read_bytes()
    # interrupted after the first checkpoint (16 slices), then resumed
    cfg = run_cfg(data_root, tmp_path / "c", "joint", "train.stop_after=16")
    with pytest.raises(RunStopped, match="stopped after 16 slices"):
        execute(cfg, quiet=True)
    store = RunStore(cfg.run_dir)
    assert not store.is_done() and store.status() == "incomplete"
    execute(cfg, resume=True, quiet=True)
    assert store.is_done()
    ma, mc = json.loads(a.metrics_path.read_text()), json.loads(store.metrics_path.read_text())
    assert ma["contexts"] == mc["contexts"] and ma["history"] == mc["history"]


def test_config_json_holds_the_core_and_the_runs_own_plugins_and_old_files_still_resume(data_root, tmp_path):
    """Issue 32 item 2: config.json records the core sections plus the plug-ins the run uses
    (an STL VarNet: no [meta], [mtl], [condition] or transfer keys), and resume identity
    compares exactly that — a config.json written before (every plug-in's sections, with
    another value of a key the run does not use) still resumes, to the uninterrupted metrics."""
    ref = execute(run_cfg(data_root, tmp_path / "ref", "stl", "train.val_every=8"), quiet=True)
    cfg = run_cfg(data_root, tmp_path / "old", "stl", "train.val_every=8", "train.stop_after=8")
    with pytest.raises(RunStopped):
        execute(cfg, quiet=True)
    store = RunStore(cfg.run_dir)
    written = store.read_json("config.json")
    assert {"data", "train", "model", "eval", "run"} <= set(written)
    assert not {"meta", "mtl", "condition"} & set(written)
    assert "pretrain_fraction" not in written["train"] and "blocks" not in written["model"]
    # as an older version wrote it: every section of every plug-in, and a transfer key changed
    old = cfg.to_dict()
    old["train"]["pretrain_fraction"] = 0.9
    old["meta"]["inner_steps"] = 7
    store.write_json("config.json", old)
    cfg.train.stop_after = 0  # operational: not part of the identity
    execute(cfg, resume=True, quiet=True)
    assert store.is_done()
    a, b = json.loads(ref.metrics_path.read_text()), json.loads(store.metrics_path.read_text())
    assert a["contexts"] == b["contexts"]
    # a key the run does use still tells runs apart
    other = run_cfg(data_root, tmp_path / "old", "stl", "train.val_every=8", "train.lr=1e-4")
    with pytest.raises(Exception, match="started with another configuration"):
        execute(other, resume=True, quiet=True)


def test_transfer_resume_across_phase_boundary(data_root, tmp_path):
    full = execute(run_cfg(data_root, tmp_path / "f", "transfer"), quiet=True)
    cfg = run_cfg(data_root, tmp_path / "g", "transfer", "train.stop_after=8", "train.val_every=8")
    cfg_full = run_cfg(data_root, tmp_path / "h", "transfer", "train.val_every=8")
    ref = execute(cfg_full, quiet=True)
    with pytest.raises(RunStopped):
        execute(cfg, quiet=True)
    for _ in range(10):  # stop again at every checkpoint: pre-emption at any point must be harmless
        try:
            execute(cfg, resume=True, quiet=True)
            break
        except RunStopped:
            cfg.train.stop_after += 8
    store = RunStore(cfg.run_dir)
    a = json.loads(ref.metrics_path.read_text())
    b = json.loads(store.metrics_path.read_text())
    assert a["contexts"] == b["contexts"]
    assert json.loads(full.metrics_path.read_text())["cost"]["trained_slices"] == 32


def test_zero_filled_equals_reference(data_root, tmp_path):
    store = execute(run_cfg(data_root, tmp_path, "zero-filled"), quiet=True)
    assert store.path.name == "zero-filled-none-s0-seed0"
    m = store.read_json("metrics.json")
    for c in m["contexts"].values():
        for res in c["steps"].values():
            assert res["mean"] == pytest.approx(res["zero_filled"])
    assert m["cost"]["trained_slices"] == 0


def test_same_slices_and_support_for_every_method(data_root, tmp_path):
    manifests = []
    for method in ("stl", "joint", "transfer"):
        store = execute(run_cfg(data_root, tmp_path, method, "train.seed=3", scarcity=2), quiet=True)
        manifests.append(store.read_json("manifest.json"))
    assert all(m["training_slices"] == manifests[0]["training_slices"] for m in manifests)
    assert all(m["support_slices"] == manifests[0]["support_slices"] for m in manifests)
    assert manifests[0]["training_slices"]["AXT2/equispaced/4x"]["volumes"] == 1


def test_cli_run_evaluate_ls_and_errors(data_root, tmp_path):
    r = CliRunner()
    args = [
        "run",
        "joint",
        "--quiet",
        "--set",
        "train.budget=16",
        *sum((["--set", s] for s in tiny(data_root, tmp_path)), []),
    ]
    res = r.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "AXT1/equispaced/4x" in res.output and "zero-filled" in res.output
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed0"
    before = json.loads((run_dir / "metrics.json").read_text())
    res = r.invoke(main, ["evaluate", str(run_dir), "--contexts", "seen"])
    assert res.exit_code == 0, res.output
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["contexts"]["AXT1/equispaced/4x"] == before["contexts"]["AXT1/equispaced/4x"]
    res = r.invoke(main, ["ls", str(tmp_path)])
    assert res.exit_code == 0 and "joint-varnet-s0-seed0" in res.output and "done" in res.output
    # existing run without --resume/--overwrite
    res = r.invoke(main, args)
    assert res.exit_code == 2 and "--resume" in res.output
    # corrupt checkpoints on --resume: last.pt and the previous one it falls back to
    (run_dir / "DONE").unlink()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    (run_dir / "checkpoints" / "last.prev.pt").write_bytes(b"not one either")
    res = r.invoke(main, args + ["--resume"])
    assert res.exit_code == 2 and "corrupt" in res.output and len(res.output.strip().splitlines()) == 1
    assert "--overwrite" in res.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["run", "mamal"], "unknown method 'mamal'"),
        (["run", "stl", "--set", "data.root=/nonexistent/data"], "data directory /nonexistent/data does not exist"),
        (["run", "stl", "--set", "train.lr=-1"], "train.lr: must be > 0"),
        (["run", "stl", "--config", "/nonexistent.toml"], "does not exist"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["ls", "/nonexistent/runs"], "does not exist"),
    ],
)
def test_cli_errors(args, fragment, tmp_path):
    res = CliRunner().invoke(main, args + (["--set", f"run.out={tmp_path}"] if args[0] == "run" else []))
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_unknown_contrast_in_data(data_root, tmp_path):
    with pytest.raises(Exception, match="'AXPD' is not in"):
        execute(run_cfg(data_root, tmp_path, "stl", "data.tasks=AXT1,AXPD", "data.scarce=AXPD"), quiet=True)


def test_scarcity_level_leaving_no_volume_is_a_cli_error(data_root, tmp_path):
    res = CliRunner().invoke(
        main, ["run", "stl", "--scarcity", "3", *sum((["--set", s] for s in tiny(data_root, tmp_path)), [])]
    )
    assert res.exit_code == 2
    assert "scarcity level 3 leaves no training volume of AXT2 (4 volumes; the highest level is 2)" in res.output
    assert not (tmp_path / "default" / "stl-varnet-s3-seed0").exists()  # nothing written


def test_budget_per_network_gives_each_network_the_whole_budget(data_root, tmp_path):
    """Issue 30 item 4: ``train.budget_per`` chooses equal compute (the run's budget split
    between STL's task networks, transfer's two phases) or equal steps per network (Liu et
    al.'s protocol); it is in the run name, and it changes what the networks learn."""
    from mrbench.reports import results as R

    per_run = execute(run_cfg(data_root, tmp_path, "stl"), quiet=True)
    per_net = execute(run_cfg(data_root, tmp_path, "stl", "train.budget_per=network"), quiet=True)
    assert per_net.path.name == "stl-varnet-pernet-s0-seed0" and per_run.path.name == "stl-varnet-s0-seed0"
    run_slices = per_run.read_json("metrics.json")["cost"]["trained_slices"]
    net_slices = per_net.read_json("metrics.json")["cost"]["trained_slices"]
    assert run_slices == 32 and net_slices == 64  # two task networks × the whole budget
    a = per_run.read_json("metrics.json")["contexts"]["AXT1/equispaced/4x"]["steps"]["0"]["mean"]["psnr"]
    b = per_net.read_json("metrics.json")["contexts"]["AXT1/equispaced/4x"]["steps"]["0"]["mean"]["psnr"]
    assert a != b
    # the setting column and the records say which rule a row used
    runs = R.load_runs([tmp_path / "default"])
    settings = R.row_settings(runs)
    assert "budget 32/network" in settings["stl-varnet-pernet"] and "budget 32/run" in settings["stl-varnet"]
    assert set(R.records(runs)["budget_rule"]) == {"run", "network"}
    # transfer: both phases get the whole budget at a 0.5 pre-training fraction
    t = execute(run_cfg(data_root, tmp_path, "transfer", "train.budget_per=network"), quiet=True)
    assert t.path.name == "transfer-varnet-pernet-s0-seed0"
    assert t.read_json("metrics.json")["cost"]["trained_slices"] == 64
    # a one-network method has nothing to split: same name, same budget
    j = run_cfg(data_root, tmp_path, "joint", "train.budget_per=network")
    assert j.run_name == "joint-varnet-s0-seed0"
    with pytest.raises(Exception, match="train.budget_per: must be run or network"):
        run_cfg(data_root, tmp_path, "stl", "train.budget_per=task")


def test_unseen_contexts_are_scored_where_read_and_the_curve_is_opt_in(data_root, tmp_path):
    """Issue 31 item 3: by default the unseen test volumes are scored at 0 steps and at the
    count chosen on seen validation only; eval.curve adds every count, and the chosen count's
    scores are the same either way (one trajectory)."""
    args = ("eval.adapt_steps=0,1,3", "eval.adapt_lr=1e-2")
    lean = execute(run_cfg(data_root, tmp_path / "lean", "joint", *args), quiet=True).read_json("metrics.json")
    full = execute(run_cfg(data_root, tmp_path / "full", "joint", *args, "eval.curve=true"), quiet=True).read_json(
        "metrics.json"
    )
    chosen = lean["adaptation"]["steps"]
    assert chosen > 0  # the fixture adapts: the test compares a real adapted count
    assert full["adaptation"] == lean["adaptation"]
    unseen = "AXFLAIR/equispaced/6x"
    assert set(full["contexts"][unseen]["steps"]) == {"0", "1", "3"}
    assert set(lean["contexts"][unseen]["steps"]) == {"0", str(chosen)}
    for k in lean["contexts"][unseen]["steps"]:
        assert lean["contexts"][unseen]["steps"][k] == full["contexts"][unseen]["steps"][k]
