"""`mrbench demo` end to end at a toy size: synth → 24-run sweep → report → tables; a rerun skips."""

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import worker_threads

import mrbench.demo as demo
from mrbench.cli import main
from mrbench.data.synth.build import SynthSpec
from mrbench.sweep import load_experiment

TOY = [
    "train.budget=8",
    "train.val_every=8",
    "train.batch=4",
    "data.val_volumes=1",
    "model.cascades=2",
    "model.blocks=IV",
    "model.chans=2",
    "model.sens_chans=2",
    "model.sens_pools=1",
    "eval.adapt_steps=0,1",
    "eval.support=2",
    "meta.embedding=8",
]


def test_demo_experiment_file_is_packaged_and_complete():
    from mrbench.sweep import RUN_SUFFIX

    exp = load_experiment(demo.demo_experiment_file())
    methods = {c.entry.method for c in exp.cells}
    assert methods == {"zero-filled", "stl", "joint", "transfer", "mtl", "maml", "metadrop", "kmmaml", "conditioned"}
    assert exp.scarcity == [0, 2] and exp.seeds == [0, 1, 2] and len(exp.cells) == 60  # the quick look (issue 31)
    assert exp.directory.name == "demo-quick"
    # every regime at level 0; the scarcity claims' rows at levels 0 and 2
    levels = {}
    for cell, cfg in exp.configs.items():
        levels.setdefault(RUN_SUFFIX.sub("", cfg.run_name), set()).add(cell.scarcity)
    assert {k for k, v in levels.items() if v == {0, 2}} == {
        "zero-filled-none",
        "stl-varnet",
        "stl-varnet-pernet",
        "joint-varnet",
        "mtl-IIVV-uncert",
    }
    assert all(v in ({0}, {0, 2}) for v in levels.values()) and len(levels) == 15
    full = load_experiment(demo.demo_experiment_file(), profile="full")  # the grid before issue 31
    assert full.scarcity == [0, 1, 2] and len(full.cells) == 135 and full.directory.name == "demo"
    assert {c.train.budget for c in full.configs.values()} == {1200}
    assert {RUN_SUFFIX.sub("", c.run_name) for c in full.configs.values()} == set(levels)
    # MoDL rows, supervised and self-supervised (equivariant imaging)
    ei = [cfg for cfg in exp.configs.values() if cfg.train.loss == "ei"]
    assert ei and all(cfg.model.backbone == "modl" and cfg.run_name.startswith("stl-modl-ei-") for cfg in ei)
    # KM-MAML has its own backbone in the grid: joint and maml on the same base U-Net as km-unet's
    by_name = {cfg.run_name: cfg for cfg in exp.configs.values()}
    assert demo.DEMO_SYNTH.splits().count("test") >= 12  # ≥ 12 test volumes per contrast
    km, ju, mu = (by_name[f"{n}-s0-seed0"] for n in ("kmmaml-km-unet", "joint-unet", "maml-unet"))
    from mrbench.methods.kmmaml import kmunet_kwargs

    base = kmunet_kwargs(km)
    for cfg in (ju, mu):
        assert cfg.model.backbone == "unet" and cfg.model.backbone_kwargs() == {k: base[k] for k in ("chans", "pools")}
    cfg = next(iter(exp.configs.values()))
    assert cfg.data.tasks == ["AXT1", "AXFLAIR"] and cfg.data.scarce == ["AXFLAIR"]
    assert [u["contrast"] for u in cfg.data.unseen] == ["AXT2", "AXPD"]
    assert len({c.train.budget for c in exp.configs.values()}) == 1  # one budget for every method


@pytest.mark.slow
def test_demo_end_to_end_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SYNTH", SynthSpec(subjects=6, size=32, slices=3))
    out, data = tmp_path / "runs", tmp_path / "data"
    args = [
        "demo",
        "--out",
        str(out),
        "--data",
        str(data),
        "--jobs",
        str(worker_threads()),
        "--quiet",
        "--seeds",
        "0",
        *sum((["--set", s] for s in TOY), []),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    exp = out / "demo-quick"
    assert "20 done, 0 failed, 0 skipped" in res.output
    assert "training slice lists identical per scarcity level (level 0: 15 runs, level 2: 5 runs)" in res.output
    html = (exp / "report.html").read_text()
    assert "kmmaml-km-unet" in html and "cdn.bokeh.org" not in html
    md = (exp / "table.md").read_text()
    rows = [line for line in md.split("difference from")[0].splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| zero-filled-none") and len(rows) == 1 + 15  # the PSNR table: every label
    assert "difference from joint-varnet, 95 % CI, verdict" in md
    assert res.output.startswith("**PSNR (dB)**")
    assert "convergence not measured here" in md and "Budget: 8 slices per run" in md  # what the budget supports
    summary = pd.read_csv(exp / "summary.csv")
    assert set(summary["scarcity"]) == {0, 2} and summary["label"].nunique() == 15
    assert (exp / "table.tex").read_text().startswith("\\begin{table}")
    # a second demo synthesises nothing and trains nothing
    res2 = CliRunner().invoke(main, args)
    assert res2.exit_code == 0 and "0 done, 0 failed, 20 skipped" in res2.output


def test_an_interrupted_demo_prints_the_verdicts_of_its_finished_cells(finished_experiment, tmp_path, monkeypatch):
    """Issue 31 item 4: Ctrl-C during the demo shows what is finished (and the sweep resumes)."""
    text = demo.interrupted_table(finished_experiment)
    assert text.startswith("interrupted: the verdicts of the 6 finished runs")
    assert "difference from joint-varnet, 95 % CI, verdict" in text
    assert "nothing to tabulate" in demo.interrupted_table(tmp_path / "empty")
    lines = []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_sweep", interrupted)
    monkeypatch.setattr(demo, "is_up_to_date", lambda spec, root: True)
    monkeypatch.setattr(
        demo,
        "load_experiment",
        lambda *a, **k: type("E", (), {"directory": finished_experiment, "configs": {1: None}})(),
    )
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out=str(tmp_path), data_root=str(tmp_path / "d"), report=lines.append)
    assert any(line.startswith("interrupted: the verdicts of the 6 finished runs") for line in lines)
