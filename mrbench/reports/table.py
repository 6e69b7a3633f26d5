"""Paper-style tables (``mrbench table``): Markdown, CSV and LaTeX.

Rows are method variants (zero-filled, "no learning", first), columns are
contexts × scarcity levels (seen contexts first; unseen ones after the largest
adaptation step count unless ``steps`` is given). A cell is mean ± std over
test volumes (pooled over seeds); the best mean of a column is bold; ``*``
marks a cell whose paired difference from the reference method has p < 0.05
under the crossed seeds × volumes model (:mod:`.statistics`: the same model as
the verdicts' intervals, so seed-to-seed noise counts) after Holm's correction
over the methods of its column (docs/design.md §6). The last column is the win
rate over unseen contexts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import MrbenchError
from . import results as R

_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nmse": "NMSE"}
_DIGITS = {"psnr": 2, "ssim": 4, "nmse": 4}


@dataclass
class Table:
    """One metric's table: ``cells`` has one row per (label, column)."""

    metric: str
    labels: list[str]
    columns: list[tuple[str, bool, int, int]]  # (context, seen, scarcity, steps)
    cells: pd.DataFrame
    reference: str | None
    win_rate: dict[str, float]
    max_pairs: int
    settings: dict[str, str] = field(default_factory=dict)  # label → backbone · params · sampling
    verdicts: pd.DataFrame | None = None  # results.verdicts: Δ vs reference, 95 % CI, better/worse/tie
    max_seeds: int = 1


@dataclass
class Tables:
    tables: list[Table] = field(default_factory=list)
    reference: str | None = None
    runs: int = 0
    note: str = ""
    simulated: bool = False  # some test k-space was simulated from magnitude images
    adaptation: pd.DataFrame | None = None  # results.adaptation_gains: does adaptation help, per method
    diverged: set = field(default_factory=set)  # (label, scarcity) with a diverged run
    resolve: float | None = None  # --resolve: the difference whose seeds-needed the verdict table gives


def _column_title(context: str, seen: bool, scarcity: int, steps: int) -> str:
    tag = (
        f"s{scarcity}"
        if seen
        else f"s{scarcity}, unseen, " + ("chosen steps" if steps == R.CHOSEN else f"{steps} steps")
    )
    return f"{context} ({tag})"


def build_tables(
    runs: Sequence[R.Run] | pd.DataFrame,
    *,
    reference: str | None = "joint",
    reference_required: bool = False,
    metrics: Sequence[str] = ("psnr", "ssim"),
    steps: int | None = None,
    diverged: Sequence[R.Run] = (),
    resolve: float | None = None,
) -> Tables:
    """Aggregate ``runs`` (or their :func:`~mrbench.reports.results.records`, e.g. a
    baseline's ``records.csv.gz``) into one :class:`Table` per metric; ``diverged`` runs are
    named in the legend and their cells say *diverged* — never averaged in."""
    if not len(runs):
        raise MrbenchError("no finished runs (directories with DONE and metrics.json) to tabulate")
    for m in metrics:
        if m not in R.METRICS:
            raise MrbenchError(f"--metrics: unknown metric {m!r}; valid: {', '.join(R.METRICS)}")
    df = runs if isinstance(runs, pd.DataFrame) else R.records(runs)
    if df.empty:
        raise MrbenchError("the runs hold no per-volume metrics")
    methods = dict(zip(df["label"], df["method"]))
    ref = R.resolve_reference(df["label"], methods, reference) if reference else None
    note = ""
    if reference and ref is None:
        if reference_required:
            raise MrbenchError(f"--reference {reference!r}: no such method among {', '.join(sorted(set(df['label'])))}")
        note = f"no {reference!r} runs: no significance tests or win rates"
    all_records = df
    # unseen contexts: by default each run at its step count chosen on seen validation (one
    # "chosen steps" column; runs without a choice at the largest), or all at --steps
    if steps is None:
        df = R.at_compared_steps(df)
    else:
        available = sorted(set(df.loc[~df["seen"], "steps"]))
        if not df["seen"].all() and steps not in available:
            raise MrbenchError(f"--steps {steps}: the unseen contexts were evaluated after {available} steps")
        df = df[df["seen"] | (df["steps"] == steps)]
    conv = R.convergence(df)  # budget ladders: read each label at its largest budget, marked if unconverged
    if df["budget"].nunique() > 1:
        df = df[df["budget"] == df.groupby("label")["budget"].transform("max")]
    summary = R.summarise(df, metrics)
    labels = R.order_labels(summary["label"], methods)
    cols = (
        summary[["context", "seen", "scarcity", "steps"]]
        .drop_duplicates()
        .sort_values(["seen", "context", "scarcity"], ascending=[False, True, True])
    )
    columns = [tuple(r) for r in cols.itertuples(index=False)]
    if diverged:
        names = ", ".join(sorted(r.name for r in diverged))
        note = "; ".join(filter(None, [note, f"diverged (stored as such, not averaged in): {names}"]))
    out = Tables(
        reference=ref,
        runs=int(all_records["run"].nunique()),
        note=note,
        adaptation=R.adaptation_gains(all_records),
        diverged={(r.label, r.scarcity) for r in diverged},
        resolve=resolve,
        simulated=R.simulated_kspace(all_records),
    )
    settings = R.row_settings(all_records)
    for m in metrics:
        cells = summary[["label", "context", "seen", "scarcity", "steps", "n", "seeds", f"{m}_mean", f"{m}_std"]].copy()
        cells.columns = ["label", "context", "seen", "scarcity", "steps", "n", "seeds", "mean", "std"]
        sign = 1 if R.HIGHER_IS_BETTER[m] else -1
        best = cells.groupby(["context", "scarcity", "steps"])["mean"].transform(lambda v: (sign * v).max())  # noqa: B023 (called at once, inside this iteration)
        cells["best"] = np.isclose(sign * cells["mean"], best, rtol=0, atol=1e-12)
        rates = R.win_rates(R.summarise(df, [m]), ref, m) if ref is not None else {}
        v = R.verdicts(df, ref, m, resolve) if ref is not None else None
        max_pairs = int(v["volumes"].max()) if v is not None and len(v) else 0
        if v is not None:
            cells = cells.merge(
                v.drop(columns=["seeds", "volumes", "seeds_needed"], errors="ignore"),
                how="left",
                on=["label", "context", "scarcity", "steps"],
            )
        else:
            cells["p_holm"] = np.nan
        cells["significant"] = cells["p_holm"] < 0.05
        cells = cells.merge(
            conv[["label", "context", "scarcity", "steps", "change_db", "converged"]],
            how="left",
            on=["label", "context", "scarcity", "steps"],
        )
        out.tables.append(
            Table(m, labels, columns, cells, ref, rates, max_pairs, settings, v, int(cells["seeds"].max()))
        )
    return out


def _cell(t: Table, label: str, col: tuple) -> pd.Series | None:
    c = t.cells
    hit = c[(c["label"] == label) & (c["context"] == col[0]) & (c["scarcity"] == col[2]) & (c["steps"] == col[3])]
    return None if hit.empty else hit.iloc[0]


def _value(t: Table, row: pd.Series) -> str:
    d = _DIGITS[t.metric]
    return f"{row['mean']:.{d}f} ± {row['std']:.{d}f}"


def _unconverged(row: pd.Series) -> bool:
    value = row.get("converged")
    return value is not None and not pd.isna(value) and not bool(value)


def _legend(t: Table, tables: Tables) -> str:
    parts = [
        "mean ± std over test volumes" + (" × seeds" if (t.cells["seeds"] > 1).any() else ""),
        "bold: best in column",
    ]
    if t.max_seeds == 1:
        parts.insert(
            0, "SINGLE SEED: intervals and tests cover test-volume noise only, not seed-to-seed noise (run ≥ 3 seeds)"
        )
    if t.reference:
        parts.append(
            f"* p < 0.05 vs {t.reference}, paired by seed and test volume (≤ {t.max_pairs} volumes), crossed seeds × volumes "
            f"model (t at conservative Satterthwaite df), Holm-corrected over the methods of each column"
        )
        parts.append(f"win rate: share of unseen context × level cells beating {t.reference}")
    if (t.cells["converged"] == False).any():  # noqa: E712 (NaN-safe)
        parts.append(
            f"† not converged: doubling the budget moved the mean PSNR by more than min({R.CONVERGENCE_DB} dB, "
            "the cell's 95 % half-width) — "
            "do not read a ranking off this cell"
        )
    if tables.note:
        parts.append(tables.note)
    if tables.simulated:
        parts.append(R.SIMULATED_NOTE)
    return "; ".join(parts)


def _win(t: Table, label: str) -> str:
    if label == t.reference:
        return "(ref.)"
    return f"{100 * t.win_rate[label]:.0f} %" if label in t.win_rate else "–"


def to_markdown(tables: Tables) -> str:
    buf = io.StringIO()
    for t in tables.tables:
        unseen = any(not c[1] for c in t.columns)
        head = ["method", "setting", *[_column_title(*c) for c in t.columns]] + (["unseen win rate"] if unseen else [])
        buf.write(f"**{_NAMES[t.metric]}**\n\n")
        buf.write("| " + " | ".join(head) + " |\n")
        buf.write("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|\n")
        for label in t.labels:
            row = [label, t.settings.get(label, "–")]
            for col in t.columns:
                c = _cell(t, label, col)
                if c is None:
                    row.append("diverged" if (label, col[2]) in tables.diverged else "–")
                    continue
                if (label, col[2]) in tables.diverged:
                    row.append(_value(t, c) + " (some seeds diverged)")
                    continue
                v = _value(t, c) + ("\\*" if c["significant"] else "") + (" †" if _unconverged(c) else "")
                row.append(f"**{v}**" if c["best"] else v)
            if unseen:
                row.append(_win(t, label))
            buf.write("| " + " | ".join(row) + " |\n")
        buf.write(f"\n{_legend(t, tables)}\n\n")
        if t.verdicts is not None and len(t.verdicts):
            buf.write(_verdict_markdown(t, tables))
    if tables.adaptation is not None and len(tables.adaptation):
        buf.write(_adaptation_markdown(tables.adaptation))
    return buf.getvalue()


def _adaptation_markdown(a: pd.DataFrame) -> str:
    """Does adaptation help each method on the unseen contexts (chosen steps vs 0 steps)?"""
    buf = io.StringIO()
    buf.write("**Adaptation on unseen contexts: PSNR after the chosen steps − at 0 steps**\n\n")
    buf.write(
        "| method | unseen context (level) | chosen on seen validation (rule×steps) | Δ PSNR (dB) | 95 % interval "
        "| seeds × volumes | verdict | diagnostic: Δ at the most steps [95 %] |\n"
    )
    buf.write("|---|---|---|---:|---:|---:|---|---:|\n")
    for r in a.itertuples(index=False):
        buf.write(
            f"| {r.label} | {r.context} (s{r.scarcity}) | {r.choices} | {r.gain:+.3f} | [{r.lo:+.3f}, {r.hi:+.3f}] "
            f"| {r.seeds} × {r.volumes} | {r.verdict} | "
            + (
                f"{r.gain_max:+.3f} at {r.max_steps} [{r.lo_max:+.3f}, {r.hi_max:+.3f}]"
                if r.gain_max == r.gain_max
                else "– (eval.curve off)"
            )
            + " |\n"
        )
    buf.write(
        "\nPaired by seed and volume; 95 % interval from the crossed seeds × volumes model; a run that chose 0 steps "
        "has Δ = 0 by construction. The last column reads the test set at the largest step count — what more "
        "adaptation would have done, shown as a diagnostic and never used to choose.\n\n"
    )
    return buf.getvalue()


_MARK = {"better": "better", "worse": "worse", "tie": "tie (within noise)"}


def seeds_of(v: pd.DataFrame) -> int:
    return int(v["seeds"].max()) if len(v) else 0


def _verdict_markdown(t: Table, tables: Tables) -> str:
    """Δ vs the reference with its 95 % interval and the verdict, one cell per table cell."""
    d = _DIGITS[t.metric]
    v = t.verdicts
    buf = io.StringIO()
    resolve = tables.resolve
    head = ["vs " + str(t.reference), *[_column_title(*c) for c in t.columns]] + (
        [f"seeds to resolve ±{resolve:g} in every cell"] if resolve is not None else []
    )
    buf.write(f"**{_NAMES[t.metric]}: difference from {t.reference}, 95 % CI, verdict**\n\n")
    buf.write("| " + " | ".join(head) + " |\n")
    buf.write("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|\n")
    for label in t.labels:
        if label == t.reference:
            continue
        row = [label]
        for col in t.columns:
            hit = v[
                (v["label"] == label) & (v["context"] == col[0]) & (v["scarcity"] == col[2]) & (v["steps"] == col[3])
            ]
            if hit.empty:
                row.append("–")
                continue
            r = hit.iloc[0]
            row.append(
                f"{r['delta']:+.{d}f} [{r['lo']:+.{d}f}, {r['hi']:+.{d}f}] {_MARK[r['verdict']]}"
                + f", mde {r['mde']:.{d}f}"
            )
        if resolve is not None:
            need = v.loc[v["label"] == label, "seeds_needed"]
            row.append(
                "unknown (one seed)"
                if seeds_of(v) < 2
                else "> 100 (volume-bound)"
                if need.isna().any()
                else f"{int(need.max())}"
            )
        buf.write("| " + " | ".join(row) + " |\n")
    seeds, vols = int(v["seeds"].max()), int(v["volumes"].max())
    buf.write(
        f"\nΔ = mean over seeds × test volumes of (method − {t.reference}), runs paired by seed and volumes by name; "
        f"95 % interval from the crossed seeds × volumes model ({seeds} seed(s) × ≤ {vols} volumes; t at conservative "
        "Satterthwaite df, docs/design.md §6); better / worse when the interval excludes 0, otherwise a tie within noise; "
        "mde: the smallest difference this cell would detect with 80 % power at its seeds and volumes"
        + (" — SINGLE SEED: the interval omits training (seed-to-seed) noise" if seeds == 1 else "")
        + ".\n\n"
    )
    return buf.getvalue()


def to_csv(tables: Tables) -> str:
    """Long form: one line per (metric, method, column) with the numbers behind every cell."""
    frames = []
    for t in tables.tables:
        c = t.cells.copy()
        c.insert(0, "metric", t.metric)
        c["reference"] = t.reference or ""
        c["win_rate"] = c["label"].map(t.win_rate)
        c["setting"] = c["label"].map(t.settings)
        c["order"] = c["label"].map({lab: i for i, lab in enumerate(t.labels)})
        frames.append(c.sort_values(["order", "seen", "context", "scarcity"], ascending=[True, False, True, True]))
    out = pd.concat(frames, ignore_index=True).drop(columns="order")
    cols = [
        "metric",
        "label",
        "setting",
        "context",
        "seen",
        "scarcity",
        "steps",
        "n",
        "seeds",
        "mean",
        "std",
        "best",
        "p_holm",
        "significant",
        "reference",
        "win_rate",
        "delta",
        "lo",
        "hi",
        "verdict",
        "change_db",
        "converged",
    ]
    out = out.reindex(columns=cols)
    return out[cols].to_csv(index=False, float_format="%.6g")


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(tables: Tables) -> str:
    """booktabs tables, one per metric (``\\usepackage{booktabs}``)."""
    buf = io.StringIO()
    for t in tables.tables:
        unseen = any(not c[1] for c in t.columns)
        d = _DIGITS[t.metric]
        n = len(t.columns) + (1 if unseen else 0)
        buf.write("\\begin{table}[t]\n\\centering\\small\n")
        caption = _tex(_legend(t, tables)).replace("±", r"$\pm$")
        buf.write(f"\\caption{{{_tex(_NAMES[t.metric])}: {caption}}}\n")
        buf.write(f"\\begin{{tabular}}{{ll{'r' * n}}}\n\\toprule\n")
        head = ["method", "setting", *[_column_title(*c) for c in t.columns]] + (["unseen win rate"] if unseen else [])
        buf.write(" & ".join(_tex(h) for h in head) + " \\\\\n\\midrule\n")
        for label in t.labels:
            row = [_tex(label), _tex(t.settings.get(label, "–"))]
            for col in t.columns:
                c = _cell(t, label, col)
                if c is None:
                    row.append("--")
                    continue
                v = f"{c['mean']:.{d}f} $\\pm$ {c['std']:.{d}f}" + ("$^{*}$" if c["significant"] else "")
                row.append(f"\\textbf{{{v}}}" if c["best"] else v)
            if unseen:
                row.append(_tex(_win(t, label)))
            buf.write(" & ".join(row) + " \\\\\n")
        buf.write("\\bottomrule\n\\end{tabular}\n\\end{table}\n\n")
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}


def render(tables: Tables, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise MrbenchError(f"--format: unknown format {fmt!r}; valid: {', '.join(RENDERERS)}")
    return RENDERERS[fmt](tables)
