"""DataLoader workers for training batches (issue 14): the training process draws the items
and their masks, the workers only read and mask them, so metrics do not depend on the worker
count and a run stopped with workers resumes exactly (with or without them)."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import set_args, tiny_run_settings

from mrbench.cli import main


def _run(root, out, *extra):
    sets = tiny_run_settings(root, out, "train.budget=24", "data.unseen=[]", "eval.adapt_steps=0", *extra)
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 0, res.output
    return out / "default" / "joint-varnet-s0-seed0" / "metrics.json"


def test_workers_change_nothing_and_resume_exactly(three_contrast_root, tmp_path):
    base = _run(three_contrast_root, tmp_path / "w0").read_bytes()
    assert _run(three_contrast_root, tmp_path / "w2", "train.workers=2").read_bytes() == base
    _run(three_contrast_root, tmp_path / "r", "train.workers=2", "train.stop_after=8")
    res = CliRunner().invoke(
        main,
        [
            "run",
            "joint",
            "--quiet",
            "--resume",
            *set_args(
                tiny_run_settings(
                    three_contrast_root, tmp_path / "r", "train.budget=24", "data.unseen=[]", "eval.adapt_steps=0"
                )
            ),
        ],
    )
    assert res.exit_code == 0, res.output  # resumed without workers: the same run
    assert (tmp_path / "r" / "default" / "joint-varnet-s0-seed0" / "metrics.json").read_bytes() == base
