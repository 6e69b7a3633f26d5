"""The claims ledger: each paper claim an experiment file states, tested against its runs'
per-volume records (docs/design.md §9).

An experiment file lists its claims as ``[[claims]]`` tables::

    [[claims]]
    paper = "Liu et al. 2021"
    claim = "MTL ≥ STL across dataset ratios"
    kind = "compare"                 # or "adaptation", "ranking"
    method = "mtl-IIVV-uncert"       # a table row label
    reference = "stl-varnet"
    contexts = "scarce"              # all | seen | unseen | scarce | abundant (seen, not scarce)
    expect = "not worse"             # better | not worse | tie | within
    margin = 0.2                     # not worse / tie / within: the margin, in the metric's units
    win_rate = 0.8                   # compare, optional: the share of cells that must be better
    control = "zero-filled-none"     # optional: the no-learning control (automatic for self-supervised methods)
    at_budget = false                # true: the claim is about this budget, converged or not
    # adaptation claims: gain = 0.5 (the claimed gain, in the metric's units)
    # ranking claims: methods = ["a", "b", "c"] (with method = the first), order = true/false

Each compare or adaptation claim gets **one claim-level estimate**: Δ = the mean over the
claim's cells (contexts × levels) of the paired difference, with the interval of the crossed
seeds × volumes model over all those cells at once (:func:`statistics.crossed`: cells share
the seeds' networks, so they are not independent replications). Its test:

* ``better`` — superiority: *supported* when the 95 % interval lies above 0, *refuted* when
  it lies below 0.
* ``not worse`` (margin m, required) and ``within`` (margin m) — non-inferiority at m, one-sided
  α = 0.05: *supported* when the 90 % interval's lower end is above −m, *refuted* when its upper
  end is below −m.
* ``tie`` (margin m, required) — equivalence by two one-sided tests (TOST, α = 0.05 each):
  *supported* when the 90 % interval lies inside ±m, *refuted* when it lies wholly outside.
* ``win_rate`` w — the share of cells whose mean favours the method, with a simultaneous
  interval from Bonferroni-adjusted cell intervals (lower end: cells significantly better;
  upper end: cells not significantly worse): *supported* when the lower end reaches w,
  *refuted* when the upper end falls short of w.
* ``adaptation`` (claimed gain g): *supported* when the interval of the gain (chosen steps − 0
  steps) lies above 0 and reaches g/2; *refuted* when it lies below g/2.

Otherwise the claim is *inconclusive*: its interval is too wide to decide, never *held*.
Beside the claim-level test every cell gets the same test, Holm-corrected within the claim
(the family: its cells), reported as counts. A claim is *not assessable* when a run it needs is
missing, when its no-learning control satisfies it too (a margin zero-filled passes cannot
tell learning from nothing), or when a budget ladder shows one of its cells unconverged
(doubling the budget moved it by more than min(0.2 dB, its interval's half-width)) — unless
``at_budget`` says the claim is about that budget. Self-supervised claims carry their
zero-filled control as a row of its own and report the share of the reference's gain over
zero-filled that the method recovers, with its interval. Every row shows its minimum
detectable difference (80 % power), budget and parameters; ``resolve`` adds how many seeds
would detect a given Δ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import read_toml
from ..errors import MrbenchError
from . import results as R
from . import statistics as S

KINDS = ("compare", "adaptation", "ranking")
EXPECT = ("better", "not worse", "tie", "within")
CONTEXTS = ("all", "seen", "unseen", "scarce", "abundant")
#: the verdict words, each explained in one line (README.md, "The claims ledger")
VERDICTS = {
    "supported": "the claim-level interval clears the claim's test at its α",
    "refuted": "the interval lies on the far side of the test: the data contradict the claim",
    "inconclusive": "the interval is too wide to decide either way at these seeds and volumes",
    "not assessable": "no test at this budget: a run is missing, a cell is unconverged, or zero-filled passes too",
}


@dataclass
class Claim:
    paper: str
    claim: str
    method: str
    kind: str = "compare"
    reference: str = ""
    contexts: str = "all"
    expect: str = "better"
    win_rate: float = 0.0
    margin: float = 0.0
    gain: float = 0.0
    metric: str = "psnr"
    methods: list = field(default_factory=list)  # ranking claims: the rows ranked
    order: bool = False  # ranking claims: the methods are listed best first, and that order is claimed
    control: str = ""  # the no-learning control's label ("" = zero-filled, automatically, for self-supervised methods)
    at_budget: bool = False  # the claim is about this budget: unconverged cells do not make it not assessable
    extra: dict = field(default_factory=dict)


def read_claims(path: str | Path) -> list[Claim]:
    """The ``[[claims]]`` of an experiment file; a malformed entry is a one-line error."""
    values = read_toml(Path(path), "experiment file").get("claims", [])
    if not isinstance(values, list) or not values:
        raise MrbenchError(f"{path}: no [[claims]] tables")
    out = []
    for i, c in enumerate(values):
        where = f"{path}: claims[{i}]"
        if not isinstance(c, dict):
            raise MrbenchError(f"{where}: expected a table")
        unknown = set(c) - {f for f in Claim.__dataclass_fields__ if f != "extra"}
        if unknown:
            raise MrbenchError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("paper", "claim", "method"):
            if not isinstance(c.get(key), str) or not c[key]:
                raise MrbenchError(f'{where}: needs {key} = "..."')
        claim = Claim(**c)
        if claim.kind not in KINDS:
            raise MrbenchError(f"{where}.kind: must be {' or '.join(KINDS)}, got {claim.kind!r}")
        if claim.contexts not in CONTEXTS:
            raise MrbenchError(f"{where}.contexts: must be one of {', '.join(CONTEXTS)}, got {claim.contexts!r}")
        if claim.kind == "compare" and (not claim.reference or claim.expect not in EXPECT):
            raise MrbenchError(
                f'{where}: a compare claim needs reference = "..." and expect = one of {", ".join(EXPECT)}'
            )
        if claim.kind == "compare" and claim.expect != "better" and not claim.margin > 0:
            raise MrbenchError(f'{where}: expect = "{claim.expect}" needs a stated margin > 0 (in the metric\'s units)')
        if not 0 <= claim.win_rate <= 1:
            raise MrbenchError(f"{where}.win_rate: must be a share in [0, 1], got {claim.win_rate}")
        if claim.kind == "ranking" and (len(claim.methods) < 2 or not all(isinstance(m, str) for m in claim.methods)):
            raise MrbenchError(f'{where}: a ranking claim needs methods = ["a", "b", ...] (two or more rows)')
        if claim.metric not in R.METRICS:
            raise MrbenchError(f"{where}.metric: must be one of {', '.join(R.METRICS)}")
        out.append(claim)
    return out


def _select(df: pd.DataFrame, contexts: str) -> pd.DataFrame:
    if contexts == "seen":
        return df[df["seen"]]
    if contexts == "unseen":
        return df[~df["seen"]]
    if contexts == "scarce":
        return df[df["seen"] & df["scarce"]]
    if contexts == "abundant":
        return df[df["seen"] & ~df["scarce"]]
    return df


def _result(test: str, measured: str, e: S.Estimate, cells, verdict: str, n: int) -> dict:
    """One claim test's outcome, as the ledger rows read it."""
    return {
        "test": test,
        "measured": measured,
        "estimate": e,
        "keys": [k for k, _ in cells],
        "verdict": verdict,
        "seeds": e.seeds,
        "volumes": e.volumes,
        "n": n,
    }


def _fmt(value: float, metric: str, sign: str = "+") -> str:
    unit, digits = (" dB", 2) if metric == "psnr" else ("", 4)
    return f"{value:{sign}.{digits}f}{unit}"


def _span(values: Sequence[float], metric: str) -> str:
    lo, hi = min(values), max(values)
    unit, digits = (" dB", 2) if metric == "psnr" else ("", 4)
    same = abs(hi - lo) < 0.5 * 10**-digits
    return f"{lo:+.{digits}f}{unit}" if same else f"{lo:+.{digits}f} to {hi:+.{digits}f}{unit}"


# ---------------------------------------------------------------------- the paired cells


Cells = list  # [(context, scarcity, steps), seeds × volumes DataFrame], oriented: + favours the method


def _orient(metric: str) -> int:
    return 1 if R.HIGHER_IS_BETTER[metric] else -1


def paired_cells(df: pd.DataFrame, method: str, reference: str, metric: str) -> Cells:
    """Per (context, scarcity, steps) both labels have: ``method − reference`` as a seeds ×
    volumes matrix (:func:`results.paired_matrix`), signed so that + favours ``method``."""
    sign = _orient(metric)
    groups = {
        k: g for k, g in df[df["label"].isin([method, reference])].groupby(["label", "context", "scarcity", "steps"])
    }
    out = []
    for (label, *cell), g in sorted(groups.items(), key=lambda kv: kv[0][1:]):
        ref = groups.get((reference, *cell))
        if label != method or ref is None:
            continue
        d = R.paired_matrix(R.seed_volume_matrix(g, metric), R.seed_volume_matrix(ref, metric))
        if d is not None and d.size:
            out.append((tuple(cell), sign * d))
    return out


def _common_seeds(cells: Cells) -> pd.Index:
    seeds = cells[0][1].index
    for _, d in cells[1:]:
        seeds = seeds.intersection(d.index)
    return seeds


def claim_estimate(cells: Cells) -> S.Estimate | None:
    """The crossed model over all of a claim's cells at once, on the seeds every cell has
    (None when no seed is common to all)."""
    seeds = _common_seeds(cells)
    if len(seeds) == 0:
        return None
    return S.crossed([S.Cell(d.loc[seeds].to_numpy(), list(d.columns), cell[0]) for cell, d in cells])


# ---------------------------------------------------------------------- the tests


@dataclass(frozen=True)
class Test:
    """One claim's hypothesis test on an oriented estimate (+ favours the method)."""

    expect: str
    margin: float = 0.0

    @property
    def alpha(self) -> float:
        """One-sided α: 0.025 for superiority (the two-sided 95 % interval), 0.05 for the
        non-inferiority and equivalence tests (the 90 % interval, TOST's convention)."""
        return 0.025 if self.expect == "better" else 0.05

    def describe(self, metric: str) -> str:
        m = _fmt(self.margin, metric, "")
        return {
            "better": "superiority (95 % interval > 0)",
            "not worse": f"non-inferiority at −{m} (one-sided α 0.05)",
            "within": f"non-inferiority at −{m} (one-sided α 0.05)",
            "tie": f"equivalence within ±{m} (TOST, α 0.05)",
        }[self.expect]

    def _bounds(self) -> tuple[float, float | None]:
        """The claim as an interval for Δ: above ``low`` (0 for superiority, −margin otherwise)
        and, for a tie, below ``high`` = +margin."""
        low = 0.0 if self.expect == "better" else -self.margin
        return low, (self.margin if self.expect == "tie" else None)

    def p_for(self, e: S.Estimate) -> float:
        """p of the claim's null hypothesis (small: the data support the claim); TOST for a tie."""
        low, high = self._bounds()
        p = e.p_greater(low)
        return p if high is None else max(p, e.p_less(high))

    def p_against(self, e: S.Estimate) -> float:
        """p of the claim itself (small: the data refute it): Δ below ``low`` (or above ``high``)."""
        low, high = self._bounds()
        p = e.p_less(low)
        return p if high is None else min(p, e.p_greater(high))

    def verdict(self, e: S.Estimate) -> str:
        if self.p_for(e) < self.alpha:
            return "supported"
        if self.p_against(e) < self.alpha:
            return "refuted"
        return "inconclusive"


def cell_counts(test: Test, estimates: Sequence[S.Estimate]) -> tuple[int, int, int]:
    """Cells supported / refuted / inconclusive under ``test``, Holm-corrected within the claim."""
    pro = S.holm([test.p_for(e) for e in estimates]) < test.alpha
    con = S.holm([test.p_against(e) for e in estimates]) < test.alpha
    n = len(estimates)
    return int(pro.sum()), int((con & ~pro).sum()), int(n - pro.sum() - (con & ~pro).sum())


def win_share(estimates: Sequence[S.Estimate]) -> tuple[float, float, float]:
    """The share of cells whose mean favours the method, and a simultaneous 95 % interval of the
    share of cells that truly do: Bonferroni-adjusted cell intervals (level 1 − 0.05/n) all hold
    with probability ≥ 95 %, and then the true share lies between the cells significantly better
    and the cells not significantly worse."""
    n = len(estimates)
    level = 1 - S.ALPHA / n
    bounds = [e.interval(level) for e in estimates]
    share = float(np.mean([e.delta > 0 for e in estimates]))
    return share, sum(lo > 0 for lo, _ in bounds) / n, sum(not hi < 0 for _, hi in bounds) / n


# ---------------------------------------------------------------------- one ledger row


def _budget_text(df: pd.DataFrame, labels: Sequence[str]) -> str:
    parts = []
    for lab in labels:
        g = df[df["label"] == lab]
        if g.empty:
            continue
        budget = "/".join(str(b) for b in sorted(g["budget"].unique()))
        rule = "/".join(sorted(g["budget_rule"].astype(str).unique())) if "budget_rule" in g else "run"
        params = sorted(int(p) for p in g["parameters"].unique()) if "parameters" in g else [0]
        p = "/".join(f"{x / 1e3:.0f}k" if x < 10**6 else f"{x / 1e6:.2f}M" for x in params)
        parts.append(f"{lab}: {budget} slices per {rule}, {p} params")
    return "; ".join(parts)


def _at_largest_budget(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["budget"] == df.groupby("label")["budget"].transform("max")]


def _convergence(claim: Claim, conv: pd.DataFrame, labels: Sequence[str], cells: Sequence[tuple]) -> tuple[str, bool]:
    """The convergence column and whether the claim is read off an unconverged cell."""
    c = conv[conv["label"].isin(labels)]
    c = c[[tuple(k) in set(cells) for k in c[["context", "scarcity", "steps"]].itertuples(index=False)]]
    c = c[c["change_db"].notna()]
    if c.empty:
        return "not measured (no budget ladder)", False
    bad = c[~c["converged"]]
    rungs = "/".join(sorted({f"{int(min(b, o))}→{int(max(b, o))}" for b, o in zip(c["budget"], c["compared"])}))
    of = f"{len(c)} of {len(cells) * len(labels)} label × cells with a rung ({rungs} slices)"
    if bad.empty:
        return f"converged: ×2 budget moved ≤ {c['change_db'].abs().max():.2f} dB; {of}", False
    worst = bad.loc[bad["change_db"].abs().idxmax()]
    text = (
        f"{len(bad)} unconverged: ×2 budget moved {worst['label']} on {worst['context']} "
        f"s{int(worst['scarcity'])} by {worst['change_db']:+.2f} dB; {of}"
    )
    return text, not claim.at_budget


def _control_label(claim: Claim, df: pd.DataFrame) -> tuple[str | None, str]:
    """The no-learning control of a compare claim: the one stated, or zero-filled for a
    self-supervised method. (label or None, note)."""
    zero = sorted(set(df.loc[df["method"] == "zero-filled", "label"]))
    if claim.control:
        return (
            (claim.control, "") if claim.control in set(df["label"]) else (None, f"no run of control {claim.control}")
        )
    if claim.kind != "compare" or claim.method in zero or claim.reference in zero:
        return None, ""
    loss = df.loc[df["label"] == claim.method, "loss"].astype(str)
    if not (loss != "sup").any():
        return None, ""
    if len(zero) == 1:
        return zero[0], ""
    return None, (
        "no zero-filled control among the runs"
        if not zero
        else f"several zero-filled rows ({', '.join(zero)}): name one as control"
    )


def _recovered(df: pd.DataFrame, claim: Claim, control: str) -> str:
    """The share of the reference's gain over the control that the method recovers."""
    num = dict(paired_cells(df, claim.method, control, claim.metric))
    den = dict(paired_cells(df, claim.reference, control, claim.metric))
    keys = [k for k in num if k in den]
    if not keys:
        return ""
    pairs = []
    for k in keys:
        seeds, vols = num[k].index.intersection(den[k].index), num[k].columns.intersection(den[k].columns)
        if len(seeds) and len(vols):
            pairs.append((k, num[k].loc[seeds, vols], den[k].loc[seeds, vols]))
    common = _common_seeds([(k, n) for k, n, _ in pairs]) if pairs else []
    if not len(common):
        return ""
    r = S.ratio(
        [S.Cell(n.loc[common].to_numpy(), list(n.columns), k[0]) for k, n, _ in pairs],
        [S.Cell(d.loc[common].to_numpy(), list(d.columns), k[0]) for k, _, d in pairs],
    )
    gap = S.crossed([S.Cell(d.loc[common].to_numpy(), list(d.columns), k[0]) for k, _, d in pairs])
    return (
        f"; recovers {100 * r.delta:.0f} % [{100 * r.lo:.0f}, {100 * r.hi:.0f}] of {claim.reference}'s gain over "
        f"{control} ({_fmt(gap.delta, claim.metric)} [{_fmt(gap.lo, claim.metric)}, {_fmt(gap.hi, claim.metric)}])"
    )


def _resolve_text(e: S.Estimate, resolve: float | None, metric: str) -> str:
    if resolve is None:
        return ""
    need = S.seeds_to_resolve(e, resolve)
    if e.single_seed:
        return f"; to resolve {_fmt(resolve, metric, '')}: unknown (one seed)"
    return f"; to resolve {_fmt(resolve, metric, '')}: " + (f"{need} seeds" if need else "> 100 seeds (volume-bound)")


def _compare(claim: Claim, df: pd.DataFrame, resolve: float | None) -> dict:
    cells = paired_cells(_select(df, claim.contexts), claim.method, claim.reference, claim.metric)
    if not cells:
        return {"measured": "no shared cells", "verdict": "not assessable"}
    e = claim_estimate(cells)
    if e is None:
        return {"measured": "the cells share no seed", "verdict": "not assessable"}
    per_cell = [R.cell_estimate(d) for _, d in cells]
    test = Test(claim.expect, claim.margin)
    n = len(cells)
    lo, hi = e.interval()
    head = (
        f"{claim.method} − {claim.reference}: Δ {_fmt(e.delta, claim.metric)} [{_fmt(lo, claim.metric)}, "
        f"{_fmt(hi, claim.metric)}] over {n} cell{'s' if n > 1 else ''} (cells {_span([x.delta for x in per_cell], claim.metric)})"
    )
    if claim.win_rate:
        share, low, high = win_share(per_cell)
        verdict = "supported" if low >= claim.win_rate else "refuted" if high < claim.win_rate else "inconclusive"
        measured = (
            f"{head}; better mean in {100 * share:.0f} % of cells, simultaneous 95 % interval "
            f"[{100 * low:.0f} %, {100 * high:.0f} %] vs claimed {100 * claim.win_rate:.0f} %"
        )
        test_text = f"win rate ≥ {100 * claim.win_rate:.0f} % (Bonferroni-simultaneous cell intervals)"
    else:
        verdict = test.verdict(e)
        pro, con, open_ = cell_counts(test, per_cell)
        measured = f"{head}; cells (Holm within the claim): {pro} supported, {con} refuted, {open_} inconclusive"
        test_text = test.describe(claim.metric)
        if claim.expect != "better":
            lo90, hi90 = e.interval(0.90)
            measured += f"; 90 % interval [{_fmt(lo90, claim.metric)}, {_fmt(hi90, claim.metric)}]"
    return _result(test_text, measured, e, cells, verdict, n)


def _adaptation(claim: Claim, df: pd.DataFrame) -> dict:
    g = df[(df["label"] == claim.method) & ~df["seen"] & df["chosen_steps"].notna()]
    g = g[g["adaptation"].astype(str) != ""] if "adaptation" in g else g
    sign = _orient(claim.metric)
    cells = []
    for (context, level), c in g.groupby(["context", "scarcity"]):
        zero = R.seed_volume_matrix(c[c["steps"] == 0], claim.metric)
        chosen = R.seed_volume_matrix(c[c["steps"] == c["chosen_steps"]], claim.metric)
        d = R.paired_matrix(chosen, zero)
        if d is not None and d.size:
            cells.append(((context, level, R.CHOSEN), sign * d))
    if not cells:
        return {"measured": "no unseen context with an adaptation choice", "verdict": "not assessable"}
    e = claim_estimate(cells)
    if e is None:
        return {"measured": "the cells share no seed", "verdict": "not assessable"}
    lo, hi = e.interval()
    half = claim.gain / 2
    verdict = "supported" if lo > 0 and hi >= half else "refuted" if hi < half else "inconclusive"
    per_cell = [R.cell_estimate(d) for _, d in cells]
    measured = (
        f"gain {_fmt(e.delta, claim.metric)} [{_fmt(lo, claim.metric)}, {_fmt(hi, claim.metric)}] over "
        f"{len(cells)} cells (cells {_span([x.delta for x in per_cell], claim.metric)}; claimed "
        f"{_fmt(claim.gain, claim.metric)}); interval above 0 in {sum(x.lo > 0 for x in per_cell)} of {len(cells)} cells"
    )
    return _result(
        f"gain > 0 and ≥ half the claimed {_fmt(claim.gain, claim.metric, '')}", measured, e, cells, verdict, len(cells)
    )


def check(
    claim: Claim,
    df: pd.DataFrame,
    diverged: Sequence[R.Run] = (),
    *,
    conv: pd.DataFrame | None = None,
    resolve: float | None = None,
) -> list[dict]:
    """The ledger row(s) for ``claim`` from the records ``df`` (:func:`results.records`, all
    budgets): the claim's row, then its zero-filled control's row when it has one."""
    lost = sorted(r.name for r in diverged if r.label in (claim.method, claim.reference, *claim.methods))
    row = {
        "paper": claim.paper,
        "claim": claim.claim,
        "test": "",
        "diverged": len(lost),
        "cells": "",
        "power": "",
        "budget": "",
        "convergence": "",
    }
    labels = set(df["label"])
    needed = list(
        dict.fromkeys([claim.method] + ([claim.reference] if claim.kind == "compare" else []) + list(claim.methods))
    )
    missing = [n for n in needed if n not in labels]
    if missing:
        return [{**row, "measured": f"no finished run of {', '.join(missing)}", "verdict": "not assessable"}]
    conv = convergence_gate(df) if conv is None else conv
    read = _at_largest_budget(df)
    row["budget"] = _budget_text(read, needed)
    if claim.kind == "ranking":
        ranked = _ranking(claim, _select(R.at_compared_steps(read), claim.contexts))
        keys = ranked.pop("keys")
        text, blocked = _convergence(claim, conv, claim.methods, keys)
        out = {
            **row,
            **ranked,
            "test": "ranking" + (" in the listed order" if claim.order else " the same in every cell"),
            "convergence": text,
        }
        if blocked:
            out["verdict"] = "not assessable"
        return [out]
    result = (
        _compare(claim, R.at_compared_steps(read), resolve) if claim.kind == "compare" else _adaptation(claim, read)
    )
    if "estimate" not in result:
        return [{**row, **result}]
    e = result.pop("estimate")
    keys = result.pop("keys")
    row["cells"] = f"{result.pop('seeds')} seeds × {result.pop('volumes')} volumes in {result.pop('n')} cells"
    row["power"] = f"mde {_fmt(e.mde(), claim.metric, '')}" + _resolve_text(e, resolve, claim.metric)
    row["convergence"], blocked = _convergence(claim, conv, needed, keys)
    out = {**row, **result}
    rows = [out]
    control, note = _control_label(claim, read)
    if note:
        out["measured"] += f"; {note}"
        out["verdict"] = "not assessable"
    elif control:
        out["measured"] += _recovered(R.at_compared_steps(read), claim, control)
        twin = Claim(
            **{
                **claim.__dict__,
                "method": control,
                "claim": f"control: {control} under the same test",
                "control": control,
            }
        )
        ctrl = _compare(twin, R.at_compared_steps(read), resolve)
        ctrl_row = {
            **row,
            "claim": twin.claim,
            **{k: v for k, v in ctrl.items() if k not in ("estimate", "keys", "seeds", "volumes", "n")},
            "budget": _budget_text(read, [control, claim.reference]),
        }
        if ctrl.get("estimate") is not None:
            ctrl_row["power"] = f"mde {_fmt(ctrl['estimate'].mde(), claim.metric, '')}"
        rows.append(ctrl_row)
        if ctrl.get("verdict") == "supported":
            out["measured"] += f"; {control} satisfies the claim too"
            out["verdict"] = "not assessable"
    if blocked:
        out["verdict"] = "not assessable"
    return rows


def _short_names(labels: Sequence[str], stem: str) -> dict[str, str]:
    """Labels without the claim method's name in front (``stl-modl-ei`` → ``ei`` for the stem
    ``stl-modl``); the stem itself and labels of other families stay whole."""
    return {lab: lab[len(stem) + 1 :] if lab.startswith(stem + "-") else lab for lab in labels}


def _ranking(claim: Claim, df: pd.DataFrame) -> dict:
    """A ranking claim: every pair of rows gets the crossed model's verdict per cell. With
    ``order`` (the listed order, best first, is claimed): *supported* when every consecutive
    pair is significantly in order in every cell; *refuted* when some consecutive pair is
    significantly reversed somewhere; else *inconclusive*. Without ``order`` (the same ranking
    everywhere): *supported* when the means order the rows identically in every cell and every
    consecutive pair of that order is significant in every cell; *refuted* when some pair is
    significantly better in one cell and significantly worse in another; else *inconclusive*."""
    methods = list(claim.methods)
    df = df[df["label"].isin(methods)]
    sign = _orient(claim.metric)
    pair = {}  # (a, b) → verdicts of a against b, per cell
    for b in methods:
        v = R.verdicts(df, b, claim.metric)
        for a in methods:
            if a != b:
                pair[(a, b)] = v[v["label"] == a].set_index(["context", "scarcity", "steps"])["verdict"]
    means = df.groupby(["context", "scarcity", "steps", "label"])[claim.metric].mean()
    cells = sorted({k[:3] for k in means.index})
    short = _short_names(methods, claim.method)
    orders, rankings = [], []
    for cell in cells:
        m = means.loc[cell]
        present = [x for x in methods if x in m.index]
        ranked = sorted(present, key=lambda x: -sign * m[x])
        rankings.append((cell, ranked))
        orders.append((cell[0] + (f" (s{cell[1]})" if len({c[1] for c in cells}) > 1 else ""), ranked))

    def significant(order, cell):
        return all(pair.get((a, b), pd.Series(dtype=str)).get(cell) == "better" for a, b in zip(order, order[1:]))

    if claim.order:
        steps = list(zip(methods, methods[1:]))
        reversed_ = [
            (a, b, c)
            for a, b in steps
            for c, verdict in pair.get((a, b), pd.Series(dtype=str)).items()
            if verdict == "worse"
        ]
        resolved = all(significant([x for x in methods if x in r], c) for c, r in rankings)
        verdict = "refuted" if reversed_ else "supported" if resolved else "inconclusive"
        note = (
            f"; reversed: {', '.join(sorted({f'{short[a]} < {short[b]} on {c[0]}' for a, b, c in reversed_}))}"
            if reversed_
            else ""
        )
    else:
        flips = [(a, b) for (a, b), v in pair.items() if a < b and (v == "better").any() and (v == "worse").any()]
        same = len({tuple(r) for _, r in orders}) == 1
        resolved = same and all(significant(r, c) for c, r in rankings)
        verdict = "refuted" if flips else "supported" if resolved else "inconclusive"
        note = f"; significant flips: {', '.join(f'{short[a]}/{short[b]}' for a, b in flips)}" if flips else ""
    text = "; ".join(f"{c}: {' > '.join(short[x] for x in r)}" for c, r in orders) + note
    seeds = int(df.groupby(["label", "context", "scarcity"])["seed"].nunique().min()) if len(df) else 0
    vols = int(df.groupby(["label", "context", "scarcity", "seed"])["volume"].nunique().max()) if len(df) else 0
    return {
        "measured": f"means ranked {text}",
        "cells": f"{seeds} seeds × ≤ {vols} volumes in {len(cells)} cells",
        "verdict": verdict,
        "keys": cells,
    }


LEDGER_COLUMNS = [
    "paper",
    "claim",
    "experiment",
    "test",
    "measured",
    "cells",
    "power",
    "budget",
    "convergence",
    "diverged",
    "verdict",
]


def ledger(
    claims: Sequence[Claim],
    df: pd.DataFrame | Sequence[R.Run],
    diverged: Sequence[R.Run],
    experiment: str,
    *,
    resolve: float | None = None,
    ladder: pd.DataFrame | Sequence[R.Run] | None = None,
) -> pd.DataFrame:
    """One row per claim (two for a claim with a control), from the runs or their records.
    ``ladder``: the runs (or records) of a budget ladder of the same experiment — each label is
    read at its budget B in ``df`` and the ladder's rungs at 2B (or B/2) gate its cells."""
    df = df if isinstance(df, pd.DataFrame) else R.records(df)
    conv = convergence_gate(df, ladder)
    if R.simulated_kspace(df):
        experiment += " (k-space simulated from magnitude)"
    rows = [{"experiment": experiment, **r} for c in claims for r in check(c, df, diverged, conv=conv, resolve=resolve)]
    return pd.DataFrame(rows, columns=LEDGER_COLUMNS)


def convergence_gate(df: pd.DataFrame, ladder: pd.DataFrame | Sequence[R.Run] | None = None) -> pd.DataFrame:
    """:func:`results.convergence` of the records a claim reads (each label at its largest
    budget in ``df``), with the rungs of ``ladder`` beside them."""
    read = df.groupby("label")["budget"].max().to_dict()
    if ladder is not None:
        ladder = ladder if isinstance(ladder, pd.DataFrame) else R.records(ladder)
        df = pd.concat([df, ladder], ignore_index=True)
    return R.convergence(R.at_compared_steps(df), read)


def to_markdown(table: pd.DataFrame) -> str:
    lines = [
        "| paper | claim | experiment | test | measured (claim-level Δ, 95 % interval) | seeds × volumes | power "
        "| budget · parameters | convergence | diverged | verdict |",
        "|---|---|---|---|---|---|---|---|---|---:|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['paper']} | {r['claim']} | {r['experiment']} | {r['test']} | {r['measured']} | {r['cells']} "
            f"| {r['power']} | {r['budget']} | {r['convergence']} | {r['diverged']} | **{r['verdict']}** |"
        )
    legend = (
        "\nVerdicts: " + "; ".join(f"*{k}*: {v}" for k, v in VERDICTS.items()) + ". Intervals: crossed seeds × "
        "volumes model over the claim's cells (docs/design.md §6); cell counts Holm-corrected within each claim "
        "(the family: its cells); no correction across claims — read the ledger as a list of separate tests. "
        "mde: the smallest Δ the claim's test detects with 80 % power.\n"
    )
    if table["experiment"].astype(str).str.contains("simulated from magnitude").any():
        legend += f"\n{R.SIMULATED_NOTE}.\n"
    return "\n".join(lines) + "\n" + legend


def experiment_names(runs: Sequence[R.Run]) -> str:
    names = sorted({r.experiment for r in runs})
    return ", ".join(names) if names else "?"


__all__ = [
    "Claim",
    "LEDGER_COLUMNS",
    "Test",
    "VERDICTS",
    "check",
    "claim_estimate",
    "experiment_names",
    "ledger",
    "paired_cells",
    "read_claims",
    "to_markdown",
    "win_share",
]
