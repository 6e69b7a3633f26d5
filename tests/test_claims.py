"""The claims ledger (issue 19): each expectation's verdict from per-volume metrics with
known differences — a clear gain is *held*, a difference inside the noise is *within noise*,
a shortfall *did not hold* — and diverged runs are counted, never averaged in."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mrbench.cli import main
from mrbench.errors import MrbenchError
from mrbench.reports import claims as C
from mrbench.reports.results import Run

CONTEXTS = {"A/equispaced/4x": (True, False), "B/equispaced/4x": (True, True), "C/random/6x": (False, False)}


def fake_run(label: str, seed: int, offset: float, noise: float = 0.0, gain: float = 0.0) -> Run:
    """A finished run whose PSNR on 8 volumes is 30 + offset (+ noise), with unseen contexts
    at 0 and 5 adaptation steps (5 chosen; + gain)."""
    rng = np.random.default_rng(seed * 100 + zlib.crc32(label.encode()) % 97)  # not hash(): salted per process
    contexts = {}
    for name, (seen, scarce) in CONTEXTS.items():
        steps = {"0": {}} if seen else {"0": {}, "5": {}}
        for k in steps:
            vols = {}
            for v in range(8):
                psnr = 30 + offset + v * 0.1 + noise * rng.standard_normal() + (gain if k == "5" else 0)
                vols[f"vol{v}.h5"] = {"psnr": psnr, "ssim": 0.8 + psnr / 1000, "nmse": 0.01}
            steps[k] = {"volumes": vols}
        contexts[name] = {"seen": seen, "scarce": scarce, "steps": steps, "context": {"contrast": name[0]},
                          **({} if seen else {"chosen_steps": 5})}
    metrics = {"contexts": contexts, "adaptation": {"rule": "finetune", "lr": 1e-3, "steps": 5}}
    config = {"method": label.split("-")[0], "scarcity": 0, "train": {"seed": seed}, "run": {"experiment": "exp"}}
    return Run(Path(f"{label}-s0-seed{seed}"), config, metrics, done=True)


def runs(**labels):
    return [fake_run(label, s, *args) for label, args in labels.items() for s in range(3)]


def claim(**kw):
    base = dict(paper="P", claim="c", method="new", reference="ref")
    return C.Claim(**{**base, **kw})


def verdict(c, rs, diverged=()):
    return C.ledger([c], rs, list(diverged), "exp").iloc[0]


def test_compare_verdicts_follow_the_intervals():
    clear = runs(new=(1.0,), ref=(0.0,))
    assert verdict(claim(), clear)["verdict"] == "held"
    assert verdict(claim(expect="not worse"), clear)["verdict"] == "held"
    behind = runs(new=(-1.0,), ref=(0.0,))
    assert verdict(claim(), behind)["verdict"] == "did not hold"
    assert verdict(claim(expect="within", margin=2.0), behind)["verdict"] == "held"
    assert verdict(claim(expect="within", margin=0.5), behind)["verdict"] == "did not hold"
    noisy = runs(new=(0.05, 1.0), ref=(0.0, 1.0))
    row = verdict(claim(), noisy)
    assert row["verdict"] == "within noise" and "tied in" in row["measured"]
    assert verdict(claim(expect="tie"), noisy)["verdict"] == "held"
    assert verdict(claim(contexts="unseen", win_rate=0.5), clear)["measured"].endswith("of 1 cells")


def test_adaptation_claims_read_the_gain_at_the_chosen_steps():
    assert verdict(claim(kind="adaptation", gain=0.5), runs(new=(0.0, 0.0, 0.6)))["verdict"] == "held"
    assert verdict(claim(kind="adaptation", gain=0.5), runs(new=(0.0, 0.0, 0.01)))["verdict"] == "did not hold"


def test_missing_and_diverged_runs_are_reported_not_averaged():
    rs = runs(new=(1.0,))
    row = verdict(claim(), rs, diverged=[fake_run("ref", 0, 0.0)])
    assert row["verdict"] == "not measured" and "ref" in row["measured"] and row["diverged"] == 1


def test_claims_file_errors_and_the_command(tmp_path):
    bad = tmp_path / "e.toml"
    bad.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "m"\nexpect = "better"\n')
    with pytest.raises(MrbenchError, match="needs reference"):
        C.read_claims(bad)
    bad.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "m"\nreference = "r"\nwhen = 1\n')
    with pytest.raises(MrbenchError, match="unknown key"):
        C.read_claims(bad)
    r = CliRunner().invoke(main, ["table", str(tmp_path), "--claims", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize("name", ["demo.toml", "deepinv_ssl.toml", "kmmaml2023.toml", "liu2021_mtl.toml"])
def test_every_experiment_file_states_well_formed_claims(name):
    root = Path(__file__).resolve().parents[1] / "evaluate"
    assert C.read_claims(root / name)


def test_each_verdict_has_its_p_and_detectable_difference_consistent_with_its_interval():
    """A clear gap: p ≈ 0; a tie's interval contains 0 exactly when p ≥ 0.05; the minimum
    detectable difference exceeds the half-width of the interval (80 % power)."""
    from mrbench.reports import results as R

    clear = R.verdicts(R.records(runs(new=(1.0,), ref=(0.0,))), "ref", "psnr")
    assert (clear["p"] < 1e-6).all() and (clear["verdict"] == "better").all()
    noisy = R.verdicts(R.records(runs(new=(0.02, 1.0), ref=(0.0, 1.0))), "ref", "psnr")
    ties = noisy["verdict"] == "tie"
    assert ties.any() and (noisy.loc[ties, "p"] >= 0.05).all() and (noisy.loc[~ties, "p"] < 0.05).all()
    assert (noisy["mde"] > (noisy["hi"] - noisy["lo"]) / 2).all()


def _shift(rs, context, delta):
    """Add ``delta`` dB to every volume of ``context`` in these runs."""
    for r in rs:
        for step in r.metrics["contexts"][context]["steps"].values():
            for v in step["volumes"].values():
                v["psnr"] += delta
    return rs


def ranking(**kw):
    return claim(kind="ranking", method="a", reference="", methods=["a", "b", "c"], contexts="seen", **kw)


def test_ranking_claims_read_orders_and_significant_reversals():
    """Issue 19 item 3: a listed order holds when the means follow it in every cell and no
    consecutive pair is significantly reversed; an unordered ranking claim holds when every
    cell orders the rows alike and fails on a significant flip between cells."""
    same = runs(a=(2.0,), b=(1.0,), c=(0.0,))
    row = verdict(ranking(order=True), same)
    assert row["verdict"] == "held" and "A/equispaced/4x: a > b > c" in row["measured"]
    assert verdict(ranking(), same)["verdict"] == "held"
    flipped = runs(a=(2.0,), b=(1.0,), c=(0.0,))
    _shift([r for r in flipped if r.name.startswith("c-")], "B/equispaced/4x", 3.0)  # c best on B only
    row = verdict(ranking(order=True), flipped)
    assert row["verdict"] == "did not hold" and "b < c on B/equispaced/4x" in row["measured"]
    assert verdict(ranking(), flipped)["verdict"] == "did not hold"


def test_ranking_claims_are_checked_when_read(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "a"\nkind = "ranking"\nmethods = ["a"]\n')
    with pytest.raises(MrbenchError, match="ranking claim needs methods"):
        C.read_claims(f)
