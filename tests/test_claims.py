"""The claims ledger (issues 19, 30): each claim's test from per-volume metrics with known
differences — a clear gain is *supported*, a difference inside the noise *inconclusive*
(never held), a shortfall *refuted*, and what zero-filled also passes or an unconverged cell
*not assessable* — and diverged runs are counted, never averaged in."""

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
        contexts[name] = {
            "seen": seen,
            "scarce": scarce,
            "steps": steps,
            "context": {"contrast": name[0]},
            **({} if seen else {"chosen_steps": 5}),
        }
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


def test_compare_verdicts_follow_the_claim_level_interval():
    clear = runs(new=(1.0,), ref=(0.0,))
    row = verdict(claim(), clear)
    assert row["verdict"] == "supported" and "3 supported, 0 refuted" in row["measured"]
    assert row["test"].startswith("superiority") and row["power"].startswith("mde")
    assert verdict(claim(expect="not worse", margin=0.2), clear)["verdict"] == "supported"
    behind = runs(new=(-1.0,), ref=(0.0,))
    assert verdict(claim(), behind)["verdict"] == "refuted"
    assert verdict(claim(expect="within", margin=2.0), behind)["verdict"] == "supported"
    assert verdict(claim(expect="within", margin=0.5), behind)["verdict"] == "refuted"
    assert verdict(claim(expect="tie", margin=0.3), behind)["verdict"] == "refuted"
    # seeds 1 dB apart: the same small gap decides nothing — never "held" because nothing is significant
    noisy = runs(new=(0.05, 1.0), ref=(0.0, 1.0))
    for c in (claim(), claim(expect="not worse", margin=0.2), claim(expect="tie", margin=0.2)):
        assert verdict(c, noisy)["verdict"] == "inconclusive", c.expect
    # a wide margin the noisy interval fits inside: equivalence is supported
    assert verdict(claim(expect="tie", margin=5.0), noisy)["verdict"] == "supported"


def test_claim_level_estimate_pools_cells_on_their_shared_seeds():
    from mrbench.reports import results as R

    df = R.records(runs(new=(0.5, 0.3), ref=(0.0, 0.3)))
    cells = C.paired_cells(df, "new", "ref", "psnr")
    assert len(cells) == 4  # A, B seen; C unseen at 0 and 5 steps
    e = C.claim_estimate(cells)
    assert e.seeds == 3 and e.volumes == 3 * 8
    assert e.delta == pytest.approx(np.mean([d.to_numpy().mean() for _, d in cells]))
    # NMSE (lower is better) is oriented so that + favours the method
    worse = R.records(runs(new=(0.0,), ref=(0.0,)))
    worse.loc[worse.label == "new", "nmse"] += 0.01
    assert C.claim_estimate(C.paired_cells(worse, "new", "ref", "nmse")).delta == pytest.approx(-0.01)


def test_win_rate_claims_can_fail_and_have_an_interval():
    clear = runs(new=(1.0,), ref=(0.0,))
    row = verdict(claim(win_rate=0.8), clear)
    assert row["verdict"] == "supported" and "[100 %, 100 %]" in row["measured"]
    behind = runs(new=(-1.0,), ref=(0.0,))
    assert verdict(claim(win_rate=0.5), behind)["verdict"] == "refuted"
    noisy = runs(new=(0.05, 1.0), ref=(0.0, 1.0))
    row = verdict(claim(win_rate=0.8), noisy)
    assert row["verdict"] == "inconclusive" and "simultaneous 95 % interval [0 %, 100 %]" in row["measured"]


def test_adaptation_claims_read_the_gain_at_the_chosen_steps():
    assert verdict(claim(kind="adaptation", gain=0.5), runs(new=(0.0, 0.0, 0.6)))["verdict"] == "supported"
    assert verdict(claim(kind="adaptation", gain=0.5), runs(new=(0.0, 0.0, 0.01)))["verdict"] == "refuted"
    assert verdict(claim(kind="adaptation", gain=0.5), runs(new=(0.0, 1.0, 0.3)))["verdict"] == "inconclusive"


def _zero(seed: int, offset: float = -2.0) -> Run:
    r = fake_run("zero-filled-none", seed, offset)
    r.config["method"] = "zero-filled"
    r.metrics.pop("adaptation")
    return r


def test_self_supervised_claims_carry_a_zero_filled_control_and_the_gain_recovered():
    """Item 3: "within 1 dB of supervised" passes for a method that learned nothing when
    zero-filled is itself within 1 dB; the ledger then says *not assessable*."""

    def ssl(offset):
        rs = runs(ssl=(offset,), sup=(0.0,)) + [_zero(s) for s in range(3)]
        for r in rs:
            if r.label == "ssl":
                r.config["train"]["loss"] = "ei"
        return rs

    c = claim(method="ssl", reference="sup", expect="within", margin=3.0)
    rows = C.ledger([c], ssl(-1.0), [], "exp")
    assert len(rows) == 2 and rows.iloc[1]["claim"].startswith("control: zero-filled-none")
    assert rows.iloc[1]["verdict"] == "supported"  # zero-filled is within 3 dB too: 2 dB behind
    assert rows.iloc[0]["verdict"] == "not assessable" and "satisfies the claim too" in rows.iloc[0]["measured"]
    # at a 1.5 dB margin zero-filled fails, the method (1 dB behind) passes, and it recovers half the gap
    tight = C.ledger([claim(method="ssl", reference="sup", expect="within", margin=1.5)], ssl(-1.0), [], "exp")
    assert tight.iloc[0]["verdict"] == "supported" and tight.iloc[1]["verdict"] == "refuted"
    assert "recovers 50 % [50, 50] of sup's gain over zero-filled-none (+2.00 dB" in tight.iloc[0]["measured"]
    # a self-supervised method without a zero-filled run among the runs: not assessable
    alone = [r for r in ssl(-1.0) if r.method != "zero-filled"]
    row = C.ledger([c], alone, [], "exp").iloc[0]
    assert row["verdict"] == "not assessable" and "no zero-filled control" in row["measured"]


def test_unconverged_cells_make_a_claim_not_assessable_unless_it_is_about_that_budget():
    def ladder(step_gain):
        rs = []
        for budget, extra in ((600, 0.0), (1200, step_gain)):
            for r in runs(new=(1.0 + extra,), ref=(0.0,)):
                r.config["train"]["budget"] = budget
                r.path = r.path.with_name(r.path.name.replace("-s0-", f"-b{budget}-s0-"))
                rs.append(r)
        return rs

    row = verdict(claim(), ladder(0.05))
    assert row["verdict"] == "supported" and row["convergence"].startswith("converged")
    row = verdict(claim(), ladder(0.8))
    assert row["verdict"] == "not assessable" and "unconverged" in row["convergence"]
    assert "1200 slices per run" in row["budget"]
    assert verdict(claim(at_budget=True), ladder(0.8))["verdict"] == "supported"
    # the claim read at the main runs' budget (600), gated by a separate ladder's 2× rung
    rs = ladder(0.8)
    main_runs, rung = [r for r in rs if "-b600-" in r.name], [r for r in rs if "-b1200-" in r.name]
    row = C.ledger([claim()], main_runs, [], "exp", ladder=rung).iloc[0]
    assert row["verdict"] == "not assessable" and "600→1200" in row["convergence"] and "600 slices" in row["budget"]
    assert C.ledger([claim()], main_runs, [], "exp").iloc[0]["verdict"] == "supported"  # no ladder: not gated
    assert verdict(claim(), runs(new=(1.0,), ref=(0.0,)))["convergence"].startswith("not measured")


def test_missing_and_diverged_runs_are_reported_not_averaged():
    rs = runs(new=(1.0,))
    row = verdict(claim(), rs, diverged=[fake_run("ref", 0, 0.0)])
    assert row["verdict"] == "not assessable" and "ref" in row["measured"] and row["diverged"] == 1


def test_resolve_says_how_many_seeds_would_detect_a_difference():
    noisy = runs(new=(0.05, 1.0), ref=(0.0, 1.0))
    c = C.ledger([claim()], noisy, [], "exp", resolve=0.5).iloc[0]
    assert "to resolve 0.50 dB:" in c["power"] and "seeds" in c["power"]


def test_claims_file_errors_and_the_command(tmp_path):
    bad = tmp_path / "e.toml"
    bad.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "m"\nexpect = "better"\n')
    with pytest.raises(MrbenchError, match="needs reference"):
        C.read_claims(bad)
    bad.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "m"\nreference = "r"\nwhen = 1\n')
    with pytest.raises(MrbenchError, match="unknown key"):
        C.read_claims(bad)
    bad.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "m"\nreference = "r"\nexpect = "not worse"\n')
    with pytest.raises(MrbenchError, match="needs a stated margin"):
        C.read_claims(bad)
    r = CliRunner().invoke(main, ["table", str(tmp_path), "--claims", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "evaluate").glob("*.toml"))
)
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
    assert row["verdict"] == "supported" and "A/equispaced/4x: a > b > c" in row["measured"]
    assert verdict(ranking(), same)["verdict"] == "supported"
    flipped = runs(a=(2.0,), b=(1.0,), c=(0.0,))
    _shift([r for r in flipped if r.name.startswith("c-")], "B/equispaced/4x", 3.0)  # c best on B only
    row = verdict(ranking(order=True), flipped)
    assert row["verdict"] == "refuted" and "b < c on B/equispaced/4x" in row["measured"]
    assert verdict(ranking(), flipped)["verdict"] == "refuted"
    close = runs(a=(0.05, 1.0), b=(0.0, 1.0), c=(-0.05, 1.0))  # ordered means, within the seed noise
    assert verdict(ranking(order=True), close)["verdict"] == "inconclusive"


def test_ranking_claims_are_checked_when_read(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[[claims]]\npaper = "P"\nclaim = "c"\nmethod = "a"\nkind = "ranking"\nmethods = ["a"]\n')
    with pytest.raises(MrbenchError, match="ranking claim needs methods"):
        C.read_claims(f)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "evaluate").glob("*.toml"))
)
def test_every_experiment_with_claims_has_a_convergence_ladder(name):
    """Issue 30 item 5: a ladder profile at twice the grid's budget, the same seeds, holding
    every row its claims compare (zero-filled trains nothing and needs none)."""
    import tomllib

    from mrbench.reports.results import _SUFFIX
    from mrbench.sweep import load_experiment

    path = Path(__file__).resolve().parents[1] / "evaluate" / name
    base_profile = "cpu" if "cpu" in tomllib.loads(path.read_text()).get("profile", {}) else None
    base = load_experiment(path, profile=base_profile)
    ladder = load_experiment(path, profile=",".join(filter(None, [base_profile, "ladder"])))
    learned = [c for c in ladder.configs.values() if c.method != "zero-filled"]
    budgets = {c.train.budget for c in base.configs.values() if c.method != "zero-filled"}
    assert {c.train.budget for c in learned} == {2 * b for b in budgets}
    assert (
        set(ladder.seeds) <= set(base.seeds) and ladder.directory != base.directory
    )  # a rung may use fewer seeds (CPU time)
    labels = {_SUFFIX.sub("", c.run_dir.name) for c in learned}
    zero = {_SUFFIX.sub("", c.run_dir.name) for c in base.configs.values() if c.method == "zero-filled"}
    for c in C.read_claims(path):
        for label in {c.method, c.reference, *c.methods} - {""} - zero:
            assert label in labels, f"{name}: claim {c.claim!r} compares {label}, which the ladder lacks"
