"""Data-parallel training under torchrun (issue 14, mrbench/distributed.py): two gloo processes
on CPU end where one process at the same global batch ends, a run stopped midway resumes on
both ranks, and what cannot run data-parallel is refused with one line before any group is
joined."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import set_args, tiny_run_settings

from mrbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(three_contrast_root):
    return three_contrast_root


def _settings(root, out, *extra):
    return tiny_run_settings(root, out, "train.budget=32", "data.unseen=[]", "eval.adapt_steps=0", *extra)


def _torchrun(method, sets, *flags):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mrbench",
        "run",
        method,
        "--quiet",
        *flags,
        *set_args(sets),
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _volumes(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return {(c, v): x["psnr"] for c, e in m["contexts"].items() for v, x in e["steps"]["0"]["volumes"].items()}


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch_and_resume(root, tmp_path):
    single = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(_settings(root, tmp_path / "one"))])
    assert single.exit_code == 0, single.output
    res = _torchrun("joint", _settings(root, tmp_path / "two"))
    assert res.returncode == 0, res.stdout + res.stderr
    one, two = (tmp_path / d / "default" / "joint-varnet-s0-seed0" for d in ("one", "two"))
    a, b = _volumes(one), _volumes(two)
    gap = max(abs(a[k] - b[k]) for k in a)
    assert a.keys() == b.keys() and gap < 0.01, gap  # float rounding of the all-reduced mean only
    wa, wb = (torch.load(r / "checkpoints" / "best.pt")["models"]["joint"] for r in (one, two))
    # Adam divides by sqrt(v): a rounding-level gradient difference on a near-zero gradient moves a
    # weight by up to ~lr per step, so weights agree to a fraction of lr × steps (3e-3 × 8), not to 1e-7
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 3e-3
    assert json.loads((two / "metrics.json").read_text())["cost"]["trained_slices"] == 32  # both ranks' slices
    # stopped after 16 slices, resumed: the same end as the uninterrupted two-process run
    stop = _torchrun("joint", _settings(root, tmp_path / "three", "train.stop_after=16"))
    assert stop.returncode == 0 and "continue with" in stop.stdout, stop.stdout + stop.stderr
    resumed = _torchrun("joint", _settings(root, tmp_path / "three"), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    c = _volumes(tmp_path / "three" / "default" / "joint-varnet-s0-seed0")
    assert max(abs(c[k] - b[k]) for k in b) < 1e-6


def test_meta_learners_and_uneven_batches_are_refused_before_joining(root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; nothing may wait for a second rank
    res = CliRunner().invoke(main, ["run", "maml", "--quiet", *set_args(_settings(root, tmp_path))])
    assert res.exit_code == 2 and "not data-parallel" in res.output and "joint" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "default").exists()
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(_settings(root, tmp_path, "train.batch=3"))])
    assert res.exit_code == 2 and "train.batch = 3 must be a multiple of the 2 processes" in res.output
