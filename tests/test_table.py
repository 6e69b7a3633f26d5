"""Results aggregation, statistics (crossed-model tests, Holm, win rate) and `mrbench table`."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import ttest_1samp

from mrbench.cli import main
from mrbench.errors import MrbenchError
from mrbench.reports import results as R
from mrbench.reports import statistics as S
from mrbench.reports.table import build_tables, render


def _frame(values: dict, steps=0, seen=True, context="AXT2"):
    rows = []
    for label, vals in values.items():
        for v, x in enumerate(vals):
            rows.append(
                {
                    "label": label,
                    "method": label,
                    "run": f"{label}-s0",
                    "experiment": "e",
                    "scarcity": 0,
                    "seed": 0,
                    "context": context,
                    "contrast": context,
                    "mask": "equispaced",
                    "acceleration": 4.0,
                    "seen": seen,
                    "scarce": False,
                    "steps": steps,
                    "volume": f"v{v}",
                    "train_slices": 10,
                    "psnr": x,
                    "ssim": x / 100,
                    "nmse": 1 / x,
                }
            )
    return pd.DataFrame(rows)


def test_asterisks_come_from_the_crossed_model_holm_corrected_per_column():
    ref = [30.0, 31.0, 29.5, 30.2, 30.8, 29.9]
    better = [r + d for r, d in zip(ref, [0.5, 0.7, 0.2, 0.9, 0.4, 0.6])]
    mixed = [r + d for r, d in zip(ref, [0.5, -0.7, 0.2, -0.9, 0.4, -0.6])]
    df = _frame({"joint": ref, "a": better, "b": mixed})
    t = R.verdicts(df, "joint", "psnr").set_index("label")
    d = np.subtract(better, ref)  # one seed: a one-sample t over the volumes
    assert t.loc["a", "volumes"] == 6 and t.loc["a", "verdict"] == "better"
    assert t.loc["a", "p"] == pytest.approx(ttest_1samp(d, 0).pvalue)
    assert t.loc["b", "p"] == pytest.approx(ttest_1samp(np.subtract(mixed, ref), 0).pvalue)
    np.testing.assert_allclose(t["p_holm"], S.holm(t["p"]))  # one column: one Holm family
    # NMSE: smaller is better, so "a" is better there too
    assert R.verdicts(df, "joint", "nmse").set_index("label").loc["a", "verdict"] == "better"
    # identical values: p = 1, not an exception
    same = R.verdicts(_frame({"joint": ref, "c": ref}), "joint", "psnr")
    assert same["p"].tolist() == [1.0] and same["verdict"].tolist() == ["tie"]
    # two columns: Holm within each, not across
    two = pd.concat([df, _frame({"joint": ref, "a": better}, context="AXT1")])
    t2 = R.verdicts(two, "joint", "psnr")
    axt1 = t2[t2.context == "AXT1"]
    assert axt1["p_holm"].tolist() == pytest.approx(axt1["p"].tolist())  # alone in its column: uncorrected


def test_summarise_and_win_rate():
    df = pd.concat(
        [
            _frame({"joint": [30, 32], "a": [31, 33]}, steps=5, seen=False, context="FLAIR"),
            _frame({"joint": [30, 32], "a": [29, 30]}, steps=5, seen=False, context="PD"),
            _frame({"joint": [20, 20], "a": [40, 40]}, steps=0, seen=False, context="PD"),  # steps 0 ignored
        ]
    )
    s = R.summarise(df, ci=True)
    row = s[(s.label == "a") & (s.context == "FLAIR")].iloc[0]
    assert row["psnr_mean"] == 32 and row["psnr_std"] == 1 and row["n"] == 2
    assert row["psnr_lo"] <= 32 <= row["psnr_hi"]
    assert R.win_rates(s, "joint", "psnr") == {"a": 0.5}
    assert R.win_rates(s, "joint", "psnr", steps=0) == {"a": 1.0}


def _expected_mean_std(run_dir, context):
    m = json.loads((run_dir / "metrics.json").read_text())
    vals = [v["psnr"] for v in m["contexts"][context]["steps"]["0"]["volumes"].values()]
    return np.mean(vals), np.std(vals)


def test_markdown_table_values_order_and_marks(finished_experiment):
    runs = R.load_runs([finished_experiment])
    assert len(runs) == 6
    tables = build_tables(runs, metrics=["psnr"])
    md = render(tables, "md")
    main_table = md.split("difference from")[0]
    lines = [line for line in main_table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith(
        "| method | setting | AXT1/equispaced/4x (s0) | AXT1/equispaced/4x (s1) | AXT2/equispaced/4x (s0)"
    )
    assert "AXFLAIR/equispaced/6x (s0, unseen, chosen steps)" in lines[0] and lines[0].endswith("unseen win rate |")
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| zero-filled-none", "| stl-varnet", "| joint-varnet"]
    mean, std = _expected_mean_std(finished_experiment / "stl-varnet-s1-seed0", "AXT2/equispaced/4x")
    stl_cells = lines[2].split(" | ")
    assert f"{mean:.2f} ± {std:.2f}" in stl_cells[5]
    # like with like, visible: each row says its backbone, parameter count and sampling rule
    params = json.loads((finished_experiment / "stl-varnet-s1-seed0" / "metrics.json").read_text())["cost"][
        "parameters"
    ]
    assert stl_cells[1].startswith(
        f"varnet · {params / 1e3:.0f}k params · stratified · loss sup · budget 32/run · adapt finetune"
    )
    assert lines[1].split(" | ")[1] == "–"
    # exactly one bold cell per column
    for col in range(2, 8):
        assert sum("**" in line.split(" | ")[col] for line in lines[1:]) == 1
    assert "(ref.)" in lines[3]
    assert (
        "Holm-corrected over the methods of each column" in md
        and "(≤ 3 volumes)" in md
        and "crossed seeds × volumes" in md
    )


def test_csv_and_latex(finished_experiment):
    runs = R.load_runs([finished_experiment])
    tables = build_tables(runs, metrics=["psnr", "nmse"])
    frame = pd.read_csv(io.StringIO(render(tables, "csv")))
    assert set(frame["metric"]) == {"psnr", "nmse"}
    assert frame["label"].iloc[0] == "zero-filled-none"
    row = frame[
        (frame.metric == "psnr")
        & (frame.label == "stl-varnet")
        & (frame.scarcity == 1)
        & (frame.context == "AXT2/equispaced/4x")
    ].iloc[0]
    mean, std = _expected_mean_std(finished_experiment / "stl-varnet-s1-seed0", "AXT2/equispaced/4x")
    assert row["mean"] == pytest.approx(mean, rel=1e-5) and row["std"] == pytest.approx(std, rel=1e-4)
    assert row["n"] == 3 and row["reference"] == "joint-varnet"
    best = (
        frame[frame.metric == "nmse"]
        .groupby(["context", "scarcity"])
        .apply(lambda g: g.loc[g["mean"].idxmin(), "best"], include_groups=False)
    )
    assert best.all()  # NMSE: the smallest is bold
    tex = render(tables, "latex")
    assert tex.count("\\begin{tabular}") == 2 and "\\toprule" in tex and "\\textbf{" in tex
    assert "zero-filled-none" in tex and "$\\pm$" in tex


def test_table_cli_and_errors(finished_experiment, tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["table", str(finished_experiment), "--format", "csv", "--metrics", "ssim"])
    assert res.exit_code == 0 and res.output.startswith("metric,label,setting,context")
    out = tmp_path / "t.tex"
    res = r.invoke(main, ["table", str(finished_experiment), "--format", "latex", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("\\begin{table}")
    # a run directory alone works too (no reference: a note, no tests)
    res = r.invoke(main, ["table", str(finished_experiment / "stl-varnet-s0-seed0")])
    assert res.exit_code == 0 and "no 'joint' runs" in res.output
    for args, needle in [
        (["table", str(finished_experiment), "--reference", "maml"], "--reference 'maml': no such method"),
        (["table", str(finished_experiment), "--metrics", "psnr,foo"], "unknown metric 'foo'"),
        (
            ["table", str(finished_experiment), "--steps", "7"],
            "--steps 7: the unseen contexts were evaluated after [0, 2]",
        ),
        (["table", str(tmp_path / "none")], "does not exist"),
        (["table", str(tmp_path)], "holds no runs"),
    ]:
        res = r.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output


def test_reference_by_method_or_label(finished_experiment):
    runs = R.load_runs([finished_experiment])
    t1 = build_tables(runs, reference="stl", metrics=["psnr"])
    t2 = build_tables(runs, reference="stl-varnet", metrics=["psnr"])
    assert t1.reference == t2.reference == "stl-varnet"
    with pytest.raises(MrbenchError, match="no such method"):
        build_tables(runs, reference="transfer", reference_required=True)


def _psnr_frame(offsets, seeds=3, volumes=8, seed_shifts=(0.0, 0.0, 0.0), vol_sd=0.3):
    """Per-volume PSNR records: label → seed → volume, the reference at 30 dB plus each
    label's offset, a volume difficulty shared by every label and seed, and per-seed shifts
    of the non-reference labels (what a different initialisation does to a run)."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 2, volumes)
    rows = []
    for label, off in {"joint": 0.0, **offsets}.items():
        for s in range(seeds):
            shift = 0.0 if label == "joint" else seed_shifts[s]
            for v in range(volumes):
                rows.append(
                    {
                        "label": label,
                        "method": label,
                        "run": f"{label}-{s}",
                        "experiment": "e",
                        "scarcity": 0,
                        "seed": s,
                        "context": "AXT2/equispaced/4x",
                        "seen": True,
                        "steps": 0,
                        "volume": f"v{v}",
                        "psnr": 30 + off + difficulty[v] + shift + rng.normal(0, vol_sd),
                    }
                )
    return pd.DataFrame(rows)


def test_verdicts_say_tie_when_the_difference_is_within_seed_noise():
    df = _psnr_frame({"better": 1.0, "worse": -1.0, "noisy": 0.3})
    v = R.verdicts(df, "joint", "psnr").set_index("label")
    assert v.loc["better", "verdict"] == "better" and v.loc["worse", "verdict"] == "worse"
    assert v.loc["better", "lo"] > 0 and v.loc["better", "seeds"] == 3 and v.loc["better", "volumes"] == 8
    # the same mean gap, but seeds that move a run by ~1 dB: the interval spans 0 → a tie
    noisy = R.verdicts(_psnr_frame({"gap": 0.3}, seed_shifts=(-1.0, 0.0, 1.0)), "joint", "psnr").set_index("label")
    assert noisy.loc["gap", "verdict"] == "tie" and noisy.loc["gap", "lo"] < 0 < noisy.loc["gap", "hi"]
    # a paired volume difficulty (2 dB spread) does not hide a consistent 0.3 dB gain
    steady = R.verdicts(_psnr_frame({"gap": 0.3}, vol_sd=0.05), "joint", "psnr").set_index("label")
    assert steady.loc["gap", "verdict"] == "better"


def test_interval_widens_with_seed_noise():
    flat = np.zeros((3, 8)) + np.arange(8) * 0.01
    lo1, hi1 = S.one_cell(flat).interval()
    seeded = flat + np.array([[-1.0], [0.0], [1.0]])
    lo2, hi2 = S.one_cell(seeded).interval()
    assert (hi2 - lo2) > 10 * (hi1 - lo1)
    # three seeds one dB apart: t at ~2 df, wider than the spread of the seed means
    assert hi2 - lo2 > 2.0


def test_single_seed_table_says_so_and_prints_verdicts(finished_experiment):
    md = render(build_tables(R.load_runs([finished_experiment]), metrics=["psnr"]), "md")
    assert "SINGLE SEED" in md and "difference from joint-varnet, 95 % CI, verdict" in md
    assert any(w in md for w in ("tie (within noise)", "better", "worse"))


def _fake_run(name, method, budget, psnrs, seed=0):
    """An in-memory finished run with one seen context and the given per-volume PSNRs."""
    from pathlib import Path

    vols = {f"v{i}.h5": {"psnr": p, "ssim": 0.5, "nmse": 0.1} for i, p in enumerate(psnrs)}
    metrics = {
        "contexts": {
            "AXT1/equispaced/4x": {
                "seen": True,
                "scarce": False,
                "train_slices": 10,
                "context": {"contrast": "AXT1"},
                "steps": {"0": {"volumes": vols}},
            }
        },
        "cost": {"parameters": 1000},
    }
    config = {
        "method": method,
        "scarcity": 0,
        "train": {"seed": seed, "budget": budget, "sampling": "stratified"},
        "model": {"backbone": "varnet"},
        "run": {"experiment": "ladder"},
    }
    return R.Run(Path("runs/ladder") / name, config, metrics, None, True)


def test_budget_ladder_marks_cells_that_moved_when_the_budget_doubled():
    """Issue 12: a cell whose mean PSNR moved > 0.2 dB from B/2 to B is 'not converged'."""
    runs = [
        _fake_run("joint-varnet-b600-s0-seed0", "joint", 600, [30.0, 31.0, 32.0]),
        _fake_run("joint-varnet-b1200-s0-seed0", "joint", 1200, [30.1, 31.1, 32.1]),  # +0.1 dB: converged
        _fake_run("stl-varnet-b600-s0-seed0", "stl", 600, [28.0, 29.0, 30.0]),
        _fake_run("stl-varnet-b1200-s0-seed0", "stl", 1200, [29.0, 30.0, 31.0]),  # +1 dB: still learning
    ]
    conv = R.convergence(R.records(runs)).set_index("label")
    assert conv.loc["stl-varnet", "change_db"] == pytest.approx(1.0) and not conv.loc["stl-varnet", "converged"]
    assert conv.loc["joint-varnet", "converged"] and conv.loc["joint-varnet", "budget"] == 1200
    tables = build_tables(runs, metrics=["psnr"])
    md = render(tables, "md")
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in md.split("difference from")[0].splitlines()
        if line.startswith("| ")
    }
    assert "30.00 ± 0.82\\* †" in rows["stl-varnet"] and "†" not in rows["joint-varnet"]  # the largest budget, marked
    assert "not converged" in md
    frame = pd.read_csv(io.StringIO(render(tables, "csv")))
    assert set(frame.loc[frame.label == "stl-varnet", "converged"]) == {False}


def test_budget_ladder_compares_the_seeds_both_rungs_ran():
    """A rung at fewer seeds than the grid: the change is paired by seed, not mean(5) − mean(3)."""
    runs = [_fake_run(f"stl-varnet-b600-s0-seed{s}", "stl", 600, [28.0 + s, 29.0 + s], seed=s) for s in range(5)]
    runs += [_fake_run(f"stl-varnet-b1200-s0-seed{s}", "stl", 1200, [28.1 + s, 29.1 + s], seed=s) for s in range(3)]
    conv = R.convergence(R.records(runs), read={"stl-varnet": 600}).set_index("label")
    # seeds 0-2 moved +0.1 dB each; unpaired means would say 29.6 - 30.5 = -0.9 dB
    assert conv.loc["stl-varnet", "change_db"] == pytest.approx(0.1)
    assert conv.loc["stl-varnet", "compared"] == 1200 and conv.loc["stl-varnet", "converged"]


def test_budget_ladder_has_its_own_report_panel():
    """Issue 19 item 5: metric vs training budget with seed bands, only for a ladder."""
    from mrbench.reports.compare import budget_panel, prepare

    runs = [
        _fake_run(f"stl-varnet-b{b}-s0-seed{s}", "stl", b, [28.0 + s + b / 600, 29.0, 30.0], seed=s)
        for b in (600, 1200)
        for s in (0, 1)
    ]
    panel = budget_panel(prepare(runs, reference="stl"))
    fig = panel.select_one({"name": "budget:AXT1/equispaced/4x"})
    assert fig is not None
    xs = sorted(
        set(
            round(x)
            for r in fig.renderers
            if "x" in getattr(r.data_source, "data", {})
            for x in r.data_source.data["x"]
        )
    )
    assert xs == [600, 1200]
    assert budget_panel(prepare(runs[:2], reference="stl")) is None  # one budget: no panel


def test_budget_ladder_is_a_sweep_axis(tmp_path):
    from mrbench.sweep import load_experiment

    f = tmp_path / "e.toml"
    f.write_text(
        '[sweep]\nbudgets = [600, 1200]\nmethods = ["zero-filled", "joint", { method = "stl", name = "stl-x" }]\n'
    )
    exp = load_experiment(f, [f"run.out={tmp_path}"])
    names = sorted(cfg.run_name for cfg in exp.configs.values())
    assert names == [
        "joint-varnet-b1200-s0-seed0",
        "joint-varnet-b600-s0-seed0",
        "stl-x-b1200-s0-seed0",
        "stl-x-b600-s0-seed0",
        "zero-filled-none-s0-seed0",
    ]
    budgets = {cfg.run_name: cfg.train.budget for cfg in exp.configs.values()}
    assert budgets["joint-varnet-b600-s0-seed0"] == 600 and budgets["stl-x-b1200-s0-seed0"] == 1200
    cell = next(c for c, cfg in exp.configs.items() if cfg.run_name == "stl-x-b600-s0-seed0")
    assert "train.budget=600" in exp.command(cell, threads=1)


def _lr_run(label, lr, seed, val_ssim, test_psnr):
    run = _fake_run(f"{label}-lr{lr:g}-s0-seed{seed}", "mtl", 1200, [test_psnr] * 3, seed=seed)
    run.config["train"]["lr"] = lr
    run.metrics["history"] = [
        {"phase": "mtl", "slices": 600, "task": t, "ssim": val_ssim - 0.05, "psnr": 0, "nmse": 0} for t in ("a", "b")
    ] + [
        {"phase": "mtl", "slices": 1200, "task": t, "ssim": val_ssim + d, "psnr": 0, "nmse": 0}
        for t, d in (("a", 0.01), ("b", -0.01))
    ]
    return run


def test_learning_rate_search_keeps_the_lr_best_on_seen_validation_never_on_test():
    """Issue 19 item 4(a): one lr per label and level, by mean best validation SSIM over seeds;
    the test PSNR (here highest at the lr validation did not pick) plays no part."""
    runs = [
        _lr_run("mtl-naive", lr, s, val, test)
        for lr, val, test in ((1e-3, 0.70, 35.0), (3e-3, 0.74, 30.0), (1e-2, 0.60, 20.0))
        for s in (0, 1)
    ]
    runs += [
        _lr_run("mtl-uncert", lr, s, val + 0.01 * s, 30.0) for lr, val in ((1e-3, 0.72), (3e-3, 0.71)) for s in (0, 1)
    ]
    kept = R.select_learning_rates(runs)
    chosen = {(r.label, r.config["train"]["lr"]) for r in kept}
    assert chosen == {("mtl-naive", 3e-3), ("mtl-uncert", 1e-3)} and len(kept) == 4
    assert R.validation_score(runs[0]) == pytest.approx(0.70)  # best check, mean over tasks
    naive = next(r for r in kept if r.label == "mtl-naive")
    assert naive.lr_search == pytest.approx({1e-3: 0.70, 3e-3: 0.74, 1e-2: 0.60})
    assert "lr 0.003 of 0.001/0.003/0.01" in R.row_settings(kept)["mtl-naive"]
    single = [_lr_run("joint", 3e-3, 0, 0.7, 30.0)]
    assert R.select_learning_rates(single) == single and single[0].lr_search is None  # no search, untouched


def test_learning_rate_search_is_a_sweep_axis(tmp_path):
    from mrbench.sweep import load_experiment

    f = tmp_path / "e.toml"
    f.write_text('[sweep]\nlrs = [1e-3, 1e-2]\nmethods = ["zero-filled", { method = "joint", name = "j" }]\n')
    exp = load_experiment(f, [f"run.out={tmp_path}"])
    lrs = {cfg.run_name: cfg.train.lr for cfg in exp.configs.values()}
    assert lrs == {
        "j-lr0.001-s0-seed0": 1e-3,
        "j-lr0.01-s0-seed0": 1e-2,
        "zero-filled-none-s0-seed0": lrs["zero-filled-none-s0-seed0"],
    }
    cell = next(c for c, cfg in exp.configs.items() if cfg.run_name == "j-lr0.01-s0-seed0")
    assert "train.lr=0.01" in exp.command(cell, threads=1)
    f.write_text('[sweep]\nlrs = [0]\nmethods = ["joint"]\n')
    with pytest.raises(MrbenchError, match="sweep.lrs"):
        load_experiment(f, [f"run.out={tmp_path}"])


def test_adaptation_gain_is_chosen_minus_zero_steps_with_a_verdict():
    from pathlib import Path

    def run(seed, zero, adapted, steps=3):
        ctx = {
            "seen": False,
            "scarce": False,
            "train_slices": 0,
            "context": {"contrast": "AXT2"},
            "chosen_steps": steps,
            "steps": {
                "0": {"volumes": {f"v{i}": {"psnr": p, "ssim": 0.5, "nmse": 0.1} for i, p in enumerate(zero)}},
                "3": {"volumes": {f"v{i}": {"psnr": p, "ssim": 0.5, "nmse": 0.1} for i, p in enumerate(adapted)}},
            },
        }
        metrics = {
            "contexts": {"AXT2/equispaced/4x": ctx},
            "adaptation": {"rule": "finetune", "lr": 1e-3, "steps": steps},
        }
        config = {
            "method": "joint",
            "scarcity": 0,
            "train": {"seed": seed, "budget": 10},
            "model": {"backbone": "varnet"},
        }
        return R.Run(Path("runs/x") / f"joint-varnet-s0-seed{seed}", config, metrics, None, True)

    runs = [run(s, [30.0, 31.0, 32.0, 33.0], [30.5 + 0.01 * s, 31.5, 32.5, 33.5]) for s in range(3)]
    g = R.adaptation_gains(runs).iloc[0]
    assert g["gain"] == pytest.approx(0.5, abs=0.01) and g["verdict"] == "helps" and g["seeds"] == 3
    assert g["choices"] == "finetune×3"
    flat = R.adaptation_gains([run(s, [30.0, 31.0], [30.0, 31.0]) for s in range(3)]).iloc[0]
    assert flat["gain"] == 0 and flat["verdict"] == "within noise"


def test_records_file_reproduces_tables_and_ledger(finished_experiment, tmp_path):
    """Issue 30 item 7: what baselines/ publishes (records.csv.gz) is enough to regenerate the
    tables and the ledger rows, byte for byte, without the run directories."""
    from mrbench.reports import claims as C
    from mrbench.reports.record_file import read_records

    rec = tmp_path / "baseline" / "records.csv.gz"
    cli = CliRunner()
    from_runs = cli.invoke(
        main, ["table", str(finished_experiment), "--save-records", str(rec), "--metrics", "psnr,ssim,nmse"]
    )
    assert from_runs.exit_code == 0, from_runs.output
    df, diverged = read_records([rec])
    assert {
        "label",
        "seed",
        "context",
        "scarcity",
        "steps",
        "volume",
        "psnr",
        "ssim",
        "nmse",
        "budget",
        "parameters",
    } <= set(df.columns) and not diverged
    pd.testing.assert_frame_equal(
        df[R.RECORD_COLUMNS], R.records(R.load_runs([finished_experiment])), check_dtype=False
    )
    for args in ([], ["--format", "csv"], ["--format", "latex"]):
        a = cli.invoke(main, ["table", str(finished_experiment), "--metrics", "psnr,ssim,nmse", *args])
        b = cli.invoke(main, ["table", str(rec.parent), "--metrics", "psnr,ssim,nmse", *args])
        assert b.exit_code == 0 and a.output == b.output, args
    claims = tmp_path / "c.toml"
    claims.write_text(
        '[[claims]]\npaper = "P"\nclaim = "stl not worse than joint"\nmethod = "stl-varnet"\n'
        'reference = "joint-varnet"\nexpect = "not worse"\nmargin = 0.5\n'
    )
    a = cli.invoke(main, ["table", str(finished_experiment), "--claims", str(claims)])
    b = cli.invoke(main, ["table", str(rec), "--claims", str(claims)])
    assert a.exit_code == 0 and a.output == b.output and "stl-varnet − joint-varnet" in b.output
    # a garbled records file is one line, exit 2
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"not gzip")
    r = cli.invoke(main, ["table", str(bad)])
    assert r.exit_code == 2 and "not a readable records file" in r.output
    mixed = cli.invoke(main, ["table", str(rec), str(finished_experiment)])
    assert mixed.exit_code == 2 and "mixes records files and run directories" in mixed.output
    assert C.read_claims(claims)
