"""What a new user trips over (issue 16): defaults that follow other keys, a deliberate stop
that says how to continue, clean messages where there were tracebacks or cut text."""

from __future__ import annotations

import pathlib
import pickle
import shlex
import warnings

import pytest
from click.testing import CliRunner
from conftest import set_args, tiny_run_settings, write_tiny_root

from mrbench.cli import main
from mrbench.config import load_config
from mrbench.errors import MrbenchError
from mrbench.store import RunStore


@pytest.fixture(scope="module")
def data_root(three_contrast_root):
    return three_contrast_root


def test_scarce_follows_tasks_and_the_builtin_data_has_an_unseen_context():
    cfg = load_config(None, ["data.tasks=AXT1"], method="stl")
    assert cfg.data.scarce == [] and any("data.scarce" in n for n in cfg.notes)
    assert cfg.data.unseen == []  # not the built-in default configuration any more
    default = load_config(None, [], method="stl")
    assert default.data.scarce == ["AXT2"] and default.data.unseen == [{"contrast": "AXFLAIR"}]
    explicit = load_config(None, ["data.tasks=AXT1,AXT2,AXPD", "data.scarce=AXT2"], method="stl")
    assert explicit.data.scarce == ["AXT2"]  # set explicitly: kept
    with pytest.raises(MrbenchError, match="'AXT2' is not one of data.tasks"):
        load_config(None, ["data.tasks=AXT1", "data.scarce=AXT2"], method="stl")  # explicit conflict


def test_set_accepts_toml_and_bracketed_bare_words():
    assert load_config(None, ["data.tasks=[AXT1,AXT2]"]).data.tasks == ["AXT1", "AXT2"]
    assert load_config(None, ['data.tasks=["AXT1", "AXPD"]']).data.tasks == ["AXT1", "AXPD"]
    with pytest.raises(MrbenchError, match="not a TOML inline value.*data.unseen="):
        load_config(None, ["data.unseen=[{contrast=AXFLAIR}]"])


def test_deliberate_stop_exits_0_and_its_hint_continues_the_same_run(data_root, tmp_path):
    r = CliRunner()
    sets = tiny_run_settings(data_root, tmp_path, "train.stop_after=16")
    res = r.invoke(main, ["run", "joint", "--quiet", "--seed", "3", *set_args(sets)])
    assert res.exit_code == 0, res.output
    hint = res.output.strip().splitlines()[-1]
    assert "stopped after 16 slices" in hint and "continue with: mrbench run joint" in hint
    cmd = shlex.split(hint.split("continue with: ", 1)[1])
    assert "--resume" in cmd and "train.seed=3" in cmd and not any("stop_after" in c for c in cmd)
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed3"
    assert not RunStore(run_dir).is_done()
    res = r.invoke(main, cmd[1:])  # the hint, literally
    assert res.exit_code == 0, res.output
    assert RunStore(run_dir).is_done() and str(run_dir) in res.output


def test_resume_of_another_finished_run_is_refused(data_root, tmp_path):
    r = CliRunner()
    base = tiny_run_settings(data_root, tmp_path, "train.budget=16")
    assert r.invoke(main, ["run", "stl", "--quiet", *set_args(base)]).exit_code == 0
    res = r.invoke(main, ["run", "stl", "--quiet", "--resume", *set_args(base + ["train.lr=1e-4"])])
    assert res.exit_code == 2 and "another configuration" in res.output


def test_ls_on_a_truncated_metrics_file_is_clean(data_root, tmp_path):
    r = CliRunner()
    assert (
        r.invoke(
            main, ["run", "stl", "--quiet", *set_args(tiny_run_settings(data_root, tmp_path, "train.budget=16"))]
        ).exit_code
        == 0
    )
    metrics = tmp_path / "default" / "stl-varnet-s0-seed0" / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    res = r.invoke(main, ["ls", str(tmp_path)])
    assert res.exit_code == 0 and "Traceback" not in res.output and "unreadable" in res.output


def test_data_info_applies_the_checks_run_applies(data_root, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (data_root / "val").glob("*.h5"):
        (flat / f.name).write_bytes(f.read_bytes())
    r = CliRunner()
    res = r.invoke(main, ["data", "info", str(flat)])
    assert res.exit_code == 2 and "would refuse" in res.output and "no train, val, test split" in res.output
    res = r.invoke(main, ["run", "stl", "--quiet", *set_args(tiny_run_settings(flat, tmp_path))])
    assert res.exit_code == 2 and "no train, val, test split" in res.output
    ok = r.invoke(main, ["data", "info", str(data_root)])
    assert ok.exit_code == 0 and "usable by mrbench run" in ok.output


def test_adapt_steps_print_in_numeric_order_and_a_note_without_unseen(data_root, tmp_path):
    r = CliRunner()
    sets = tiny_run_settings(data_root, tmp_path, "train.budget=16", "eval.adapt_steps=[0,2,10]", "eval.curve=true")
    res = r.invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 0, res.output
    steps = [int(line.split("unseen, ")[1].split()[0]) for line in res.output.splitlines() if "unseen, " in line]
    assert steps == [0, 2, 10]
    no_unseen = tiny_run_settings(data_root, tmp_path / "b", "train.budget=16", "data.unseen=[]")
    assert r.invoke(main, ["run", "joint", "--quiet", *set_args(no_unseen)]).exit_code == 0
    res = r.invoke(
        main, ["evaluate", str(tmp_path / "b" / "default" / "joint-varnet-s0-seed0"), "--adapt-steps", "0,5"]
    )
    assert res.exit_code == 0 and "no unseen contexts configured" in res.output


def test_bad_checkpoint_message_is_whole_has_a_way_on_and_no_warning(tmp_path):
    store = RunStore(tmp_path / "run")
    p = store.checkpoint_path("last")
    p.parent.mkdir(parents=True)
    with open(p, "wb") as f:
        pickle.dump({"x": pathlib.PurePosixPath("a" * 300)}, f, protocol=2)  # a foreign pickle
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning leaking out fails the test
        with pytest.raises(MrbenchError) as info:
            store.load_checkpoint("last")
    msg = str(info.value)
    assert "--overwrite" in msg and "\n" not in msg
    assert not msg.split("(", 1)[1].split(")")[0].endswith(("-", "_"))  # no mid-word cut


def test_bad_data_key_reports_the_real_error_before_exists(data_root, tmp_path):
    r = CliRunner()
    sets = tiny_run_settings(data_root, tmp_path, "train.budget=16")
    assert r.invoke(main, ["run", "stl", "--quiet", *set_args(sets)]).exit_code == 0
    res = r.invoke(
        main, ["run", "stl", "--quiet", *set_args(sets + ["data.split_seed=0", 'data.unseen=[{contrast="AXPD"}]'])]
    )
    assert res.exit_code == 2 and "'AXPD' is not in" in res.output and "exists" not in res.output


def test_sweep_entry_error_names_the_entry(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('[sweep]\nmethods = [{ method = "mtl", name = "mtl-bad", set = ["mtl.weighting=nope"] }]\n')
    from mrbench.sweep import load_experiment

    with pytest.raises(MrbenchError, match=r"sweep.methods\[0\] \(mtl-bad\)"):
        load_experiment(exp)


def _mixed_root(tmp_path):
    root = tmp_path / "mixed"
    write_tiny_root(root, size=32, contrasts=("AXT1", "AXT2", "AXFLAIR"))
    write_tiny_root(root / "extra", size=40, seed=1, contrasts=("AXT1", "AXT2", "AXFLAIR"))
    for split in ("train", "val", "test"):
        for f in (root / "extra" / split).glob("*.h5"):
            f.rename(root / split / f.name.replace("tiny_", "big_"))
    return root


@pytest.mark.parametrize("method", ["joint", "stl", "maml", "mtl", "metadrop", "kmmaml", "transfer"])
def test_volumes_of_two_sizes_train_and_evaluate_in_one_size_batches(tmp_path, method):
    """Issue 14: a 32×32 / 40×40 mix (fastMRI brain has several widths per contrast) crashed
    with a raw torch.stack traceback. Batches now stack one size (the sampler, the meta-
    learners' episodes and the support sets pick alike), and data info lists the sizes."""
    root = _mixed_root(tmp_path)
    r = CliRunner()
    info = r.invoke(main, ["data", "info", str(root)])
    assert info.exit_code == 0 and "2 sizes, batched by size" in info.output
    extra = ["train.budget=24", "model.blocks=IV"] if method == "mtl" else ["train.budget=24"]
    res = r.invoke(main, ["run", method, "--quiet", *set_args(tiny_run_settings(root, tmp_path / "runs", *extra))])
    assert res.exit_code == 0, res.output
    import json

    run = next((tmp_path / "runs" / "default").glob(f"{method}-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    vols = metrics["contexts"]["AXT1/equispaced/4x"]["steps"]["0"]["volumes"]
    assert any(v.startswith("big_") for v in vols) and any(v.startswith("tiny_") for v in vols)


def test_one_size_batches_from_the_sampler():
    import numpy as np

    from mrbench.engine import TaskSampler

    class DS:
        item_shapes = np.array([0, 1, 0, 1, 0, 1, 1, 0])

        def task_items(self, t):
            return [0, 1, 2, 3] if t == 0 else [4, 5, 6, 7]

    for mode in ("stratified", "uniform"):
        s = TaskSampler(DS(), [0, 1], mode, seed=0)
        seen = []
        for _ in range(20):
            batch = s.next(3)
            assert batch and len({int(DS.item_shapes[i]) for i in batch}) == 1
            seen += batch
        assert set(seen) == set(range(8))
        if mode == "stratified":
            assert {0, 1} <= {0 if i < 4 else 1 for i in seen}
    u = TaskSampler(DS(), [0, 1], "uniform", seed=0)
    epoch = sum((u.next(4) for _ in range(20)), [])
    counts = np.bincount(epoch[: len(epoch)], minlength=8)
    assert counts.max() - counts.min() <= 3  # every item about equally often: epochs still cover the pool


def test_one_line_errors_are_cut_at_a_word_boundary():
    from mrbench.errors import first_line

    long = RuntimeError("first line " + "word " * 100 + "\nsecond line")
    line = first_line(long, limit=60)
    assert line.endswith(" …") and len(line) <= 62 and line[:-2].split()[-1] == "word"
    assert first_line(RuntimeError("short\nmore")) == "short" and first_line(KeyError()) == "KeyError"


def test_make_gpu_without_cuda_says_so_in_one_line_and_exits_0():
    """Issue 19: the GPU check's CPU-only path (this machine has no CUDA; where it has, the
    check is the real one and is not run by the tests)."""
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "make gpu: no CUDA device on this machine; nothing run"
    assert res.stderr == ""
