"""The claims ledger: each paper claim an experiment file states, checked against its runs
(docs/design.md §9).

An experiment file lists its claims as ``[[claims]]`` tables::

    [[claims]]
    paper = "Liu et al. 2021"
    claim = "MTL ≥ STL across dataset ratios"
    kind = "compare"                 # or "adaptation"
    method = "mtl-IIVV-uncert"       # a table row label
    reference = "stl-varnet"
    contexts = "scarce"              # all | seen | unseen | scarce | abundant (seen, not scarce)
    expect = "not worse"             # compare: better | not worse | tie | within (margin = 1.0)
    win_rate = 0.8                   # compare, optional: the share of cells that must be better
    # adaptation claims: gain = 0.5 (the claimed gain, in the metric's units)

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

KINDS = ("compare", "adaptation")
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
    lost = sorted(r.name for r in diverged if r.label in (claim.method, claim.reference))
    row = {"paper": claim.paper, "claim": claim.claim, "diverged": len(lost)}
    labels = set(df["label"])
    needed = [claim.method] + ([claim.reference] if claim.kind == "compare" else [])
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
