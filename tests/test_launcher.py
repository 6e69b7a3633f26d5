"""The sweep's run launcher: a run forked from the preloaded forkserver is the same run as a
fresh ``python -m mrbench`` subprocess (same metrics, log, exit status)."""

import json
import os
import sys

import pytest
from conftest import set_args, tiny_run_settings, write_tiny_root

from mrbench import launcher
from mrbench.launcher import launch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch") / "d"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=4, size=32
    )
    return root


def command(root, out, *extra):
    return [
        sys.executable,
        "-m",
        "mrbench",
        "run",
        "joint",
        *set_args(tiny_run_settings(root, out, *extra)),
        "--quiet",
        "--threads",
        "1",
    ]


@pytest.mark.parametrize("how", ["forkserver", "subprocess"])
def test_both_launchers_give_the_same_run(root, tmp_path, monkeypatch, how):
    monkeypatch.setenv("MRBENCH_LAUNCH", how)
    assert (launcher._forkserver() is not None) == (how == "forkserver")
    log = tmp_path / "run.log"
    log.write_text("$ command\n")
    assert launch(command(root, tmp_path / "runs", "run.name=r"), log, {**os.environ}) == 0
    text = log.read_text()
    assert text.startswith("$ command\n") and "PSNR" in text  # the header kept, the run's output appended
    metrics = json.loads((tmp_path / "runs" / "default" / "r" / "metrics.json").read_text())
    ref = tmp_path.parent / "reference-metrics.json"
    if ref.exists():  # the other launcher ran first: the same numbers
        assert json.loads(ref.read_text())["contexts"] == metrics["contexts"]
    else:
        ref.write_text(json.dumps(metrics))


def test_a_bad_option_exits_2_with_one_line_in_the_log(root, tmp_path, monkeypatch):
    monkeypatch.setenv("MRBENCH_LAUNCH", "forkserver")
    log = tmp_path / "bad.log"
    log.write_text("")
    code = launch(command(root, tmp_path / "runs", "train.budget=-1"), log, {**os.environ})
    assert code == 2
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "train.budget" in lines[0]
    assert "Traceback" not in log.read_text()


def test_the_run_gets_the_environment_it_is_given(tmp_path, monkeypatch):
    """The forked run sees the per-run environment the sweep hands it (the run lock's variable,
    the thread counts), not the server's: here COLUMNS, which sets click's help width."""
    monkeypatch.setenv("MRBENCH_LAUNCH", "forkserver")
    widths = {}
    for columns in ("50", "200"):
        log = tmp_path / f"help{columns}.log"
        log.write_text("")
        env = {**os.environ, "COLUMNS": columns}
        assert launch([sys.executable, "-m", "mrbench", "run", "--help"], log, env) == 0
        widths[columns] = max(len(line) for line in log.read_text().splitlines())
    assert widths["50"] <= 52 < widths["200"]


def test_warm_lists_every_module_but_the_cli_entry_and_imports_them():
    """``python -m mrbench.warm`` (the Makefile's bytecode step) must import mrbench's modules
    without running the CLI: ``mrbench.__main__`` would parse sys.argv and exit."""
    from mrbench import warm

    names = warm.modules()
    assert "mrbench.__main__" not in names and "mrbench.warm" not in names
    assert {"mrbench.runner", "mrbench.reports.compare", "mrbench.methods.maml", "torch._dynamo"} <= set(names)
    imported, missing = warm.warm()
    assert imported >= len(names) - len(warm.OPTIONAL) and not set(missing) - set(warm.OPTIONAL)
