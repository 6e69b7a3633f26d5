"""The claims ledger: each paper claim an experiment file states, checked against its runs
(docs/design.md §9).

An experiment file lists its claims as ``[[claims]]`` tables::

    [[claims]]
    paper = "Liu et al. 2021"
    claim = "MTL ≥ STL across dataset ratios"
    kind = "compare"                 # or "adaptation", "ranking"
    method = "mtl-IIVV-uncert"       # a table row label
    reference = "stl-varnet"
    contexts = "scarce"              # all | seen | unseen | scarce | abundant (seen, not scarce)
    expect = "not worse"             # compare: better | not worse | tie | within (margin = 1.0)
    win_rate = 0.8                   # compare, optional: the share of cells that must be better
    # adaptation claims: gain = 0.5 (the claimed gain, in the metric's units)
    # ranking claims: methods = ["a", "b", "c"] (with method = the first): the order of these
    #   rows, best first, when order = true; otherwise "the same ranking in every cell"

and ``mrbench table RUNS --claims FILE`` turns each into one ledger row from the runs'
per-volume metrics: the paired differences of :func:`~mrbench.reports.results.verdicts`
(unseen contexts at each run's chosen adaptation step count) or the adaptation gains of
:func:`~mrbench.reports.results.adaptation_gains`, every cell with its 95 % interval over
seeds × volumes. Verdicts:

* ``compare``, expect ``better`` (or a ``win_rate`` w): *held* when at least w of the cells
  (all, without a win rate) are better; *did not hold* when even counting ties as wins they
  fall short of w; otherwise *within noise*. Expect ``not worse``: *held* when no cell is
  worse, else *did not hold*. ``tie``: *held* when every cell is a tie. ``within`` (a
  ``margin`` m): *held* when every cell's interval stays above −m (no more than m behind the
  reference), *did not hold* when some interval lies wholly below −m, else *within noise*.
* ``ranking`` of ``methods`` over the selected cells (context × level): every pair of rows gets
  a paired verdict per cell. With ``order = true`` (the listed order, best first, is claimed):
  *held* when no consecutive pair is significantly reversed in any cell and the means follow
  the order in every cell; *did not hold* when some consecutive pair is significantly
  reversed somewhere; else *within noise*. Without ``order`` (the ranking is claimed to be the
  same everywhere): *held* when the means order the rows identically in every cell; *did not
  hold* when some pair is significantly better in one cell and significantly worse in
  another; else *within noise* (the orders differ only among ties).
* ``adaptation`` with a claimed gain g: *held* when every cell's interval lies above 0 and
  the mean gain reaches g/2; *did not hold* when every cell's interval lies below g; else
  *within noise*.

Diverged runs are never averaged in: the row counts them (``diverged``), and a claim whose
method or reference has no finished run is *not measured*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

import numpy as np

from ..errors import MrbenchError
from . import results as R

KINDS = ("compare", "adaptation", "ranking")
EXPECT = ("better", "not worse", "tie", "within")
CONTEXTS = ("all", "seen", "unseen", "scarce", "abundant")


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
    extra: dict = field(default_factory=dict)


def read_claims(path: str | Path) -> list[Claim]:
    """The ``[[claims]]`` of an experiment file; a malformed entry is a one-line error."""
    from ..config import read_toml

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
                raise MrbenchError(f"{where}: needs {key} = \"...\"")
        claim = Claim(**c)
        if claim.kind not in KINDS:
            raise MrbenchError(f"{where}.kind: must be {' or '.join(KINDS)}, got {claim.kind!r}")
        if claim.contexts not in CONTEXTS:
            raise MrbenchError(f"{where}.contexts: must be one of {', '.join(CONTEXTS)}, got {claim.contexts!r}")
        if claim.kind == "compare" and (not claim.reference or claim.expect not in EXPECT):
            raise MrbenchError(f"{where}: a compare claim needs reference = \"...\" and expect = one of {', '.join(EXPECT)}")
        if claim.expect == "within" and not claim.margin > 0:
            raise MrbenchError(f"{where}: expect = \"within\" needs margin > 0 (in the metric's units)")
        if claim.kind == "ranking" and (len(claim.methods) < 2 or not all(isinstance(m, str) for m in claim.methods)):
            raise MrbenchError(f"{where}: a ranking claim needs methods = [\"a\", \"b\", ...] (two or more rows)")
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


def _span(values: Sequence[float], metric: str) -> str:
    lo, hi = min(values), max(values)
    unit, digits = (" dB", 2) if metric == "psnr" else ("", 4)
    same = abs(hi - lo) < 0.5 * 10**-digits
    return f"{lo:+.{digits}f}{unit}" if same else f"{lo:+.{digits}f} to {hi:+.{digits}f}{unit}"


def check(claim: Claim, df: pd.DataFrame, runs: Sequence[R.Run], diverged: Sequence[R.Run]) -> dict:
    """One ledger row for ``claim`` from the runs' records ``df``."""
    lost = sorted(r.name for r in diverged if r.label in (claim.method, claim.reference, *claim.methods))
    row = {"paper": claim.paper, "claim": claim.claim, "diverged": len(lost)}
    labels = set(df["label"])
    needed = [claim.method] + ([claim.reference] if claim.kind == "compare" else []) + list(claim.methods)
    needed = list(dict.fromkeys(needed))
    missing = [n for n in needed if n not in labels]
    if missing:
        return {**row, "measured": f"no finished run of {', '.join(missing)}", "cells": "", "verdict": "not measured"}
    if claim.kind == "compare":
        v = R.verdicts(_select(R.at_compared_steps(df), claim.contexts), claim.reference, claim.metric)
        v = v[v["label"] == claim.method]
        if v.empty:
            return {**row, "measured": "no shared cells", "cells": "", "verdict": "not measured"}
        n, better, worse = len(v), int((v["verdict"] == "better").sum()), int((v["verdict"] == "worse").sum())
        ties = n - better - worse
        sign = 1 if R.HIGHER_IS_BETTER[claim.metric] else -1
        if claim.expect == "not worse":
            verdict = "held" if worse == 0 else "did not hold"
        elif claim.expect == "tie":
            verdict = "held" if ties == n else "did not hold"
        elif claim.expect == "within":  # no more than margin behind the reference
            low = np.minimum(sign * v["lo"], sign * v["hi"])
            high = np.maximum(sign * v["lo"], sign * v["hi"])
            verdict = ("held" if bool((low >= -claim.margin).all())
                       else "did not hold" if bool((high < -claim.margin).any()) else "within noise")
        else:
            w = claim.win_rate or 1.0
            verdict = "held" if better / n >= w else "did not hold" if (better + ties) / n < w else "within noise"
        measured = (f"{claim.method} − {claim.reference}: {_span(v['delta'], claim.metric)}; better in {better}, "
                    f"worse in {worse}, tied in {ties} of {n} cells")
        seeds, vols = int(v["seeds"].min()), int(v["volumes"].max())
    elif claim.kind == "ranking":
        return {**row, **_ranking(claim, _select(R.at_compared_steps(df), claim.contexts))}
    else:
        runs_of = [r for r in runs if r.label == claim.method]
        g = R.adaptation_gains(runs_of, claim.metric, df[df["label"] == claim.method])
        if g.empty:
            return {**row, "measured": "no unseen context with an adaptation choice", "cells": "", "verdict": "not measured"}
        n = len(g)
        above0, below = bool((g["lo"] > 0).all()), bool((g["hi"] < claim.gain).all())
        verdict = ("held" if above0 and g["gain"].mean() >= claim.gain / 2
                   else "did not hold" if below else "within noise")
        measured = (f"gain {_span(g['gain'], claim.metric)} (mean {g['gain'].mean():+.3f}, claimed {claim.gain:+g}); "
                    f"interval above 0 in {int((g['lo'] > 0).sum())} of {n} cells")
        seeds, vols = int(g["seeds"].min()), int(g["volumes"].max())
    return {**row, "measured": measured, "cells": f"{seeds} seeds × ≤ {vols} volumes", "verdict": verdict}


def _short_names(labels: Sequence[str], stem: str) -> dict[str, str]:
    """Labels without the claim method's name in front (``stl-modl-ei`` → ``ei`` for the stem
    ``stl-modl``); the stem itself and labels of other families stay whole."""
    return {lab: lab[len(stem) + 1:] if lab.startswith(stem + "-") else lab for lab in labels}


def _ranking(claim: Claim, df: pd.DataFrame) -> dict:
    """A ranking claim's measured text, cells and verdict (module docstring)."""
    methods = list(claim.methods)
    df = df[df["label"].isin(methods)]
    sign = 1 if R.HIGHER_IS_BETTER[claim.metric] else -1
    pair = {}  # (a, b) → verdicts of a against b, per cell
    for b in methods:
        v = R.verdicts(df, b, claim.metric)
        for a in methods:
            if a != b:
                pair[(a, b)] = v[v["label"] == a].set_index(["context", "scarcity", "steps"])["verdict"]
    means = df.groupby(["context", "scarcity", "steps", "label"])[claim.metric].mean()
    cells = sorted({k[:3] for k in means.index})
    short = _short_names(methods, claim.method)
    orders, follows = [], True
    for cell in cells:
        m = means.loc[cell]
        present = [x for x in methods if x in m.index]
        ranked = sorted(present, key=lambda x: -sign * m[x])
        follows = follows and (not claim.order or ranked == present)
        orders.append((cell[0] + (f" (s{cell[1]})" if len({c[1] for c in cells}) > 1 else ""), ranked))
    if claim.order:
        steps = list(zip(methods, methods[1:]))
        reversed_ = [(a, b, c) for a, b in steps for c, verdict in pair.get((a, b), pd.Series(dtype=str)).items()
                     if verdict == "worse"]
        verdict = "did not hold" if reversed_ else "held" if follows else "within noise"
        note = (f"; reversed: {', '.join(sorted({f'{short[a]} < {short[b]} on {c[0]}' for a, b, c in reversed_}))}"
                if reversed_ else "")
    else:
        flips = [(a, b) for (a, b), v in pair.items() if a < b and (v == "better").any() and (v == "worse").any()]
        same = len({tuple(r) for _, r in orders}) == 1
        verdict = "did not hold" if flips else "held" if same else "within noise"
        note = f"; significant flips: {', '.join(f'{short[a]}/{short[b]}' for a, b in flips)}" if flips else ""
    text = "; ".join(f"{c}: {' > '.join(short[x] for x in r)}" for c, r in orders) + note
    seeds = int(df.groupby(["label", "context", "scarcity"])["seed"].nunique().min()) if len(df) else 0
    vols = int(df.groupby(["label", "context", "scarcity", "seed"])["volume"].nunique().max()) if len(df) else 0
    return {"measured": f"means ranked {text}", "cells": f"{seeds} seeds × ≤ {vols} volumes", "verdict": verdict}


def ledger(claims: Sequence[Claim], runs: Sequence[R.Run], diverged: Sequence[R.Run], experiment: str) -> pd.DataFrame:
    df = R.records(runs)
    rows = [{"experiment": experiment, **check(c, df, runs, diverged)} for c in claims]
    return pd.DataFrame(rows, columns=["paper", "claim", "experiment", "measured", "cells", "diverged", "verdict"])


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| paper | claim | experiment | measured (95 % intervals) | seeds × volumes | diverged | verdict |",
             "|---|---|---|---|---|---:|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['paper']} | {r['claim']} | {r['experiment']} | {r['measured']} | {r['cells']} | "
                     f"{r['diverged']} | **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def experiment_names(runs: Sequence[R.Run]) -> str:
    names = sorted({r.experiment for r in runs})
    return ", ".join(names) if names else "?"


__all__ = ["Claim", "check", "experiment_names", "ledger", "read_claims", "to_markdown"]
