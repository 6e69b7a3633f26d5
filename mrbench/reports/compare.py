"""``mrbench compare``: finished runs → one self-contained HTML report (docs/design.md §9).

The report is a Bokeh layout rendered with BokehJS inlined, so the file opens
offline and can be mailed or archived next to the runs. Every panel is drawn
from the tidy frames of :mod:`mrbench.reports.results` (``records`` →
``summarise``, ``costs``) and the runs' ``previews.npz``; nothing is
recomputed from networks, so a report can always be redrawn from the run
directories alone.

Panels, top to bottom:

1. metric vs scarcity level per context, one line per label (method variant), and vs the
   training budget for a budget ladder (seed bands);
2. heat map of the gain over the reference label, seen then unseen contexts;
3. metric vs adaptation steps on unseen contexts, and vs the support-set size where
   ``mrbench evaluate --support-sizes`` added curves (seed bands);
4. reconstruction viewer: target, zero-filled, each method and |error| maps;
5. cost per method: wall seconds and parameters.

Unseen contexts are compared at each run's adaptation step count chosen on seen
validation (as ``mrbench table`` does; runs without a choice at the largest step count
evaluated); seen contexts are never adapted (steps = 0). The steps panel shows every
step count.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from bokeh.embed import file_html
from bokeh.layouts import column, gridplot, row
from bokeh.models import (
    BoxZoomTool,
    ColorBar,
    ColumnDataSource,
    Div,
    FactorRange,
    HoverTool,
    LinearColorMapper,
    PanTool,
    Range1d,
    ResetTool,
    WheelZoomTool,
)
from bokeh.models.layouts import LayoutDOM
from bokeh.palettes import Category10_10, Greys256, RdBu11, Viridis256, turbo
from bokeh.plotting import figure
from bokeh.resources import INLINE

from .. import atomic
from ..errors import MrbenchError
from . import results
from .results import HIGHER_IS_BETTER, METRICS, Run

#: the viewer shows at most this many contexts and method columns (file size, screen width)
MAX_VIEWER_CONTEXTS = 4
MAX_VIEWER_LABELS = 8
#: error maps are magnified so that small errors are visible on the target's grey scale
ERROR_GAIN = 5

_UNITS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nmse": "NMSE"}
_DECIMALS = {"psnr": 2, "ssim": 3, "nmse": 4}
_CURVE_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
_DASHES = ("solid", "dashed", "dotted", "dotdash", "dashdot")


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ReportData:
    """Everything the panels draw from, computed once from the runs."""

    runs: list[Run]
    records: pd.DataFrame  # results.records(runs): one row per run × context × volume × steps
    summary: pd.DataFrame  # results.summarise(records(runs)): one row per label × context × level × steps
    final: pd.DataFrame  # the compared rows: seen contexts, unseen ones at each run's chosen step count (steps = -1)
    costs: pd.DataFrame
    labels: list[str]  # zero-filled first, then the method registry's order
    methods: dict[str, str]  # label → method
    reference: str | None  # the resolved reference label; None = show absolute values
    requested_reference: str
    seen: list[str]  # seen contexts in task order
    unseen: list[str]
    metric: str
    colours: dict[str, str]  # label or baseline legend → colour, the same in every panel
    baselines: pd.DataFrame | None

    @property
    def contexts(self) -> list[str]:
        return self.seen + self.unseen

    def final_steps(self, context: str) -> int:
        """The step count an unseen context is compared at (``results.CHOSEN``: each run's own)."""
        return int(self.final.loc[self.final["context"] == context, "steps"].iloc[0])


def prepare(
    runs: Sequence[Run],
    *,
    baselines: pd.DataFrame | None = None,
    reference: str = "joint",
    metric: str = "psnr",
    reference_required: bool = False,
) -> ReportData:
    """Validate the inputs and tabulate the runs; raises MrbenchError for what a user can fix."""
    if metric not in METRICS:
        raise MrbenchError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if not runs:
        raise MrbenchError("no finished runs to report (a run is finished when it has DONE and metrics.json)")
    records = results.records(runs)
    summary = results.summarise(records)
    if summary.empty:
        raise MrbenchError("no finished runs with test metrics to report (metrics.json lists no contexts)")
    methods = dict(zip(summary["label"], summary["method"]))
    labels = results.order_labels(summary["label"], methods)
    resolved = results.resolve_reference(labels, methods, reference)
    if resolved is None and reference_required:
        raise MrbenchError(
            f"--reference {reference!r} is neither a label nor the method of one; labels: {', '.join(labels)}"
        )
    summary = summary.astype({"seen": bool})
    seen = set(summary.loc[summary["seen"], "context"])
    contexts = _in_run_order(runs)  # summarise sorts contexts by name; keep the config's task order
    # the curves and the heat map compare what the tables do (results.at_compared_steps)
    final = results.summarise(results.at_compared_steps(records)).astype({"seen": bool})
    legends = labels + (_baseline_legends(baselines) if baselines is not None else [])
    return ReportData(
        runs=list(runs),
        records=records,
        summary=summary,
        final=final.reset_index(drop=True),
        costs=results.costs(runs),
        labels=labels,
        methods=methods,
        reference=resolved,
        requested_reference=reference,
        seen=[c for c in contexts if c in seen],
        unseen=[c for c in contexts if c not in seen],
        metric=metric,
        colours=_colours(legends),
        baselines=baselines,
    )


def _steps_shown(steps: pd.Series) -> list[str]:
    """Hover text of a step count: ``chosen`` for :data:`results.CHOSEN`."""
    return ["chosen" if int(k) == results.CHOSEN else str(int(k)) for k in steps]


def _in_run_order(runs: Sequence[Run]) -> list[str]:
    """Context names in the order metrics.json lists them (the config's task order)."""
    return list(dict.fromkeys(c for run in runs for c in (run.metrics or {}).get("contexts", {})))


def _colours(keys: Sequence[str]) -> dict[str, str]:
    palette = Category10_10 if len(keys) <= 10 else turbo(len(keys))
    return {key: palette[i] for i, key in enumerate(keys)}


def _baseline_legends(baselines: pd.DataFrame) -> list[str]:
    pairs = baselines[["label", "source"]].drop_duplicates()
    return [_baseline_legend(lab, src) for lab, src in pairs.itertuples(index=False)]


def _baseline_legend(label: str, source: str) -> str:
    return f"baseline: {label} ({source})"


# ---------------------------------------------------------------------- entry points


def build_layout(
    runs: Sequence[Run],
    *,
    baselines: pd.DataFrame | None = None,
    reference: str = "joint",
    metric: str = "psnr",
    title: str = "mrbench report",
    reference_required: bool = False,
) -> LayoutDOM:
    """The report's Bokeh layout (what :func:`write_report` renders); separate so tests can inspect it."""
    data = prepare(runs, baselines=baselines, reference=reference, metric=metric, reference_required=reference_required)
    return layout_of(data, title)


def layout_of(data: ReportData, title: str) -> LayoutDOM:
    """The panels of :func:`build_layout` for already prepared data."""
    panels = [
        header_div(data, title),
        scarcity_panel(data),
        budget_panel(data),
        heatmap_panel(data),
        verdict_panel(data),
        unseen_panel(data),
        support_panel(data),
        viewer_panel(data),
        cost_panel(data),
    ]
    return column(*[p for p in panels if p is not None])


def write_report(
    runs: Sequence[Run],
    out: str | os.PathLike,
    *,
    baselines: pd.DataFrame | None = None,
    reference: str = "joint",
    metric: str = "psnr",
    title: str = "mrbench report",
    reference_required: bool = False,
) -> Path:
    """Write the report to ``out`` (an .html file) and its ``summary.csv`` beside it, atomically;
    returns the report's path."""
    path = Path(out)
    if path.is_dir():
        raise MrbenchError(f"{path} is a directory; give the report's file name (e.g. {path / 'report.html'})")
    data = prepare(runs, baselines=baselines, reference=reference, metric=metric, reference_required=reference_required)
    atomic.write_text(path, file_html(layout_of(data, title), resources=INLINE, title=title))
    # the numbers behind the report, in the long form baselines/ holds and --baselines reads
    results.write_summary_csv(data.summary, path.with_name("summary.csv"))
    return path


# ---------------------------------------------------------------------- header


def header_div(data: ReportData, title: str) -> Div:
    """Title, what was compared, and a small table of each label's mean over seen contexts."""
    experiments = sorted({run.experiment for run in data.runs})
    if data.reference is not None:
        reference = html.escape(data.reference)
    else:
        reference = f"none ({html.escape(data.requested_reference)!r} is not among the labels)"
    seen = data.final[data.final["seen"]]
    table = seen.groupby(["label", "scarcity"])[f"{data.metric}_mean"].mean().unstack("scarcity")
    levels = list(table.columns)
    head = "".join(f"<th>s{lvl}</th>" for lvl in levels)
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(label)}</td>"
        + "".join(f"<td>{_cell_text(table, label, lvl, data.metric)}</td>" for lvl in levels)
        + "</tr>"
        for label in data.labels
    )
    return Div(
        text=(
            f"<h1>{html.escape(title)}</h1>"
            f"<p>{len(data.runs)} runs · experiment(s): {html.escape(', '.join(experiments))} · "
            f"{len(data.labels)} labels · reference: {reference}</p>"
            f"<p>Mean {_UNITS[data.metric]} over seen contexts (each context weighs equally), "
            f"per scarcity level s&lt;N&gt; (higher N = fewer training slices of the scarce contrast):</p>"
            f"<table border='1' style='border-collapse:collapse;text-align:right'>"
            f"<tr><th>label</th>{head}</tr>{body}</table>"
        ),
        width=900,
    )


def _cell_text(table: pd.DataFrame, label: str, level: int, metric: str) -> str:
    value = table.at[label, level] if label in table.index else float("nan")
    return "–" if pd.isna(value) else _fmt(value, metric)


def _fmt(value: float, metric: str, sign: str = "") -> str:
    return f"{value:{sign}.{_DECIMALS[metric]}f}"


def _hover_format(metric: str) -> str:
    """The Bokeh number format of a hover value with the metric's decimals."""
    return "0." + "0" * _DECIMALS[metric]


def _heading(title: str, text: str) -> Div:
    return Div(text=f"<h2>{html.escape(title)}</h2><p>{text}</p>", width=900)


# ---------------------------------------------------------------------- 1. metric vs scarcity


def scarcity_panel(data: ReportData) -> LayoutDOM:
    """How each method degrades as the scarce contrast loses training data, per context."""
    blocks = [
        _heading(
            "Metric vs scarcity level per context",
            "One line per label: mean ± std over test volumes (and seeds). Unseen contexts after each run's "
            "adaptation step count chosen on seen validation. Click a legend entry to hide its line."
            + (" Dashed lines: baselines." if data.baselines is not None else ""),
        )
    ]
    for metric in _curve_metrics(data.metric):
        figs = [_scarcity_figure(data, ctx, metric) for ctx in data.contexts]
        blocks.append(gridplot(figs, ncols=min(3, len(figs)), toolbar_location="right"))
    return column(blocks)


def _curve_metrics(metric: str) -> list[str]:
    """The chosen metric, then SSIM (or PSNR when SSIM is the chosen one)."""
    return [metric, "psnr" if metric == "ssim" else "ssim"]


def _scarcity_figure(data: ReportData, context: str, metric: str) -> figure:
    cells = data.final[data.final["context"] == context]
    steps = data.final_steps(context)
    kind = (
        "seen"
        if context in data.seen
        else ("unseen, chosen steps" if steps == results.CHOSEN else f"unseen, {steps} steps")
    )
    fig = figure(
        name=f"scarcity:{metric}:{context}",
        title=f"{context} ({kind})",
        width=430,
        height=300,
        tools=_CURVE_TOOLS,
        x_axis_label="scarcity level",
        y_axis_label=_UNITS[metric],
    )
    fig.xaxis.ticker = sorted(int(v) for v in cells["scarcity"].unique())
    markers = []
    present = [lab for lab in data.labels if lab in set(cells["label"])]
    for i, label in enumerate(present):
        g = cells[cells["label"] == label].sort_values("scarcity")
        x = g["scarcity"] + _dodge(i, len(present), cells["scarcity"])
        markers.append(_series(fig, _series_source(g, metric, x), data.colours[label], label))
    markers += _baseline_series(fig, data, context, metric)
    _finish(fig, markers, metric)
    return fig


def _baseline_series(fig: figure, data: ReportData, context: str, metric: str) -> list:
    """Dashed lines of the baseline summaries for this context, at their own largest step count."""
    if data.baselines is None or f"{metric}_mean" not in data.baselines.columns:
        return []
    b = data.baselines[data.baselines["context"] == context]
    b = b[b["steps"] == b["steps"].max()] if len(b) else b
    markers = []
    for (label, source), g in b.groupby(["label", "source"], sort=True):
        legend = _baseline_legend(label, source)
        g = g.sort_values("scarcity").assign(runs=f"baseline {source}")
        markers.append(
            _series(fig, _series_source(g, metric, g["scarcity"]), data.colours[legend], legend, dash="dashed")
        )
    return markers


def _dodge(i: int, k: int, x: pd.Series) -> float:
    """A small horizontal offset for series ``i`` of ``k``, so that whiskers at the same x stay
    readable; ``x`` are all x values of the figure (the offset scales with their span)."""
    span = max(1.0, float(x.max() - x.min()))
    return (i - (k - 1) / 2) * min(0.04, 0.3 / k) * span


def _series_source(cells: pd.DataFrame, metric: str, x) -> ColumnDataSource:
    """Columns of one line: position, mean ± std for the whisker, and what the hover shows."""
    mean = cells[f"{metric}_mean"].to_numpy(dtype=np.float64)
    std = cells[f"{metric}_std"] if f"{metric}_std" in cells else pd.Series(0.0, index=cells.index)
    std = std.fillna(0.0).to_numpy(dtype=np.float64)
    return ColumnDataSource(
        {
            "x": np.asarray(x, dtype=np.float64),
            "mean": mean,
            "std": std,
            "lo": mean - std,
            "hi": mean + std,
            "label": cells["label"].astype(str).to_list(),
            "context": cells["context"].astype(str).to_list(),
            "level": cells["scarcity"].astype(int).to_list(),
            "steps": cells["steps"].astype(int).to_list(),
            "steps_shown": _steps_shown(cells["steps"]),
            "train_slices": cells["train_slices"].astype(int).to_list()
            if "train_slices" in cells
            else [0] * len(cells),
            "n": cells["n"].astype(int).to_list() if "n" in cells else [0] * len(cells),
            "runs": cells["runs"].astype(str).to_list(),
        }
    )


def _series(fig: figure, source: ColumnDataSource, colour: str, legend: str, dash: str = "solid"):
    """Line, markers and std whiskers under one legend entry (so one click hides all three)."""
    fig.line("x", "mean", source=source, color=colour, line_width=2, line_dash=dash, legend_label=legend)
    fig.segment("x", "lo", "x", "hi", source=source, color=colour, line_width=1.5, legend_label=legend)
    return fig.scatter("x", "mean", source=source, color=colour, size=7, legend_label=legend)


def _finish(fig: figure, markers: list, metric: str) -> None:
    """Hover on the markers and a legend outside the plot whose entries hide their series."""
    fig.add_tools(
        HoverTool(
            renderers=markers,
            tooltips=[
                ("method", "@label"),
                ("context", "@context"),
                ("level", "s@level"),
                ("steps", "@steps_shown"),
                ("training slices", "@train_slices"),
                (metric, f"@mean{{{_hover_format(metric)}}} ± @std{{{_hover_format(metric)}}}"),
                ("n", "@n"),
                ("runs", "@runs"),
            ],
        )
    )
    fig.legend.click_policy = "hide"
    fig.legend.label_text_font_size = "8pt"
    fig.add_layout(fig.legend[0], "right")


# ---------------------------------------------------------------------- 2. heat map of gains


def heatmap_cells(data: ReportData) -> pd.DataFrame:
    """One row per label × context × scarcity level, at the context's largest step count.

    ``value`` is the label's mean minus the reference's mean for the same context, level and
    steps; without a reference it is the mean itself (``reference`` is then NaN)."""
    m = data.metric
    cells = data.final[["label", "context", "seen", "scarcity", "steps", "n", f"{m}_mean"]]
    cells = cells.rename(columns={f"{m}_mean": "mean"})
    if data.reference is None:
        return cells.assign(reference=np.nan, value=cells["mean"])
    ref = cells.loc[cells["label"] == data.reference, ["context", "scarcity", "steps", "mean"]]
    cells = cells.merge(ref.rename(columns={"mean": "reference"}), on=["context", "scarcity", "steps"])
    return cells.assign(value=cells["mean"] - cells["reference"])


def heatmap_panel(data: ReportData) -> LayoutDOM:
    """Where (which context, which scarcity level) each method beats the reference, at a glance."""
    m, unit = data.metric, _UNITS[data.metric]
    cells = heatmap_cells(data)
    kind = {ctx: "seen" if ctx in data.seen else "unseen" for ctx in data.contexts}
    cells = cells.assign(x=[(kind[c], c, f"s{lvl}") for c, lvl in zip(cells["context"], cells["scarcity"])])
    factors = [
        (kind[c], c, f"s{lvl}")
        for c in data.contexts
        for lvl in sorted(cells.loc[cells["context"] == c, "scarcity"].unique())
    ]
    labels = [lab for lab in data.labels if lab in set(cells["label"])]
    better_high = HIGHER_IS_BETTER[m]
    if data.reference is not None:
        lim = max(float(cells["value"].abs().max()), 1e-6)
        palette = tuple(reversed(RdBu11)) if better_high else RdBu11  # blue = better than the reference
        mapper = LinearColorMapper(palette=palette, low=-lim, high=lim)
        text = [_fmt(v, m, sign="+") for v in cells["value"]]
        title = f"gain in {unit} over {data.reference}"
        note = (
            f"Cell = a label's mean {unit} minus the reference <b>{html.escape(data.reference)}</b>'s, "
            f"same context and scarcity level; unseen contexts after each run's chosen adaptation step count. "
            f"Blue = better than the reference, red = worse (colour scale centred on 0)."
        )
    else:
        palette = Viridis256 if better_high else tuple(reversed(Viridis256))  # bright = better
        mapper = LinearColorMapper(palette=palette, low=float(cells["value"].min()), high=float(cells["value"].max()))
        text = [_fmt(v, m) for v in cells["value"]]
        title = f"mean {unit}, no reference"
        note = (
            f"<b>The reference {html.escape(data.requested_reference)!r} is not among the labels</b>, so cells "
            f"show absolute mean {unit} instead of gains; pass --reference with one of the labels."
        )
    source = ColumnDataSource(
        {
            "x": cells["x"].to_list(),
            "label": cells["label"].to_list(),
            "context": cells["context"].to_list(),
            "kind": [kind[c] for c in cells["context"]],
            "level": cells["scarcity"].astype(int).to_list(),
            "steps": cells["steps"].astype(int).to_list(),
            "steps_shown": _steps_shown(cells["steps"]),
            "mean": cells["mean"].to_numpy(),
            "reference": cells["reference"].to_numpy(),
            "value": cells["value"].to_numpy(),
            "n": cells["n"].astype(int).to_list(),
            "text": text,
            "ink": _ink(cells["value"].to_numpy(), mapper),
        }
    )
    fig = figure(
        name="heatmap",
        title=title,
        x_range=FactorRange(*factors),
        y_range=FactorRange(*reversed(labels)),
        width=260 + 85 * len(factors),
        height=150 + 34 * len(labels),
        tools="save",
        toolbar_location="right",
    )
    cells_renderer = fig.rect(
        "x",
        "label",
        width=1,
        height=1,
        source=source,
        line_color="white",
        fill_color={"field": "value", "transform": mapper},
    )
    fig.text(
        "x",
        "label",
        text="text",
        source=source,
        text_color="ink",
        text_align="center",
        text_baseline="middle",
        text_font_size="9pt",
    )
    fig.add_layout(ColorBar(color_mapper=mapper, width=12), "right")
    fig.add_tools(
        HoverTool(
            renderers=[cells_renderer],
            tooltips=[
                ("method", "@label"),
                ("context", "@context (@kind)"),
                ("level", "s@level"),
                ("steps", "@steps_shown"),
                (m, f"@mean{{{_hover_format(m)}}}"),
                ("reference", f"@reference{{{_hover_format(m)}}}"),
                ("cell", f"@value{{{_hover_format(m)}}}"),
                ("n", "@n"),
            ],
        )
    )
    fig.grid.visible = False
    fig.axis.axis_line_color = None
    return column(_heading("Seen / unseen contexts: gain over the reference", note), fig)


def verdict_panel(data: ReportData) -> LayoutDOM:
    """Each method against the reference per context × level: Δ with its 95 % interval over
    seeds × volumes and the verdict better / worse / tie (within noise) — the heat map's gains
    with the noise that says which of them are real (:func:`results.verdicts`)."""
    heading = _heading(
        "Verdicts against the reference",
        "Δ = method − reference, mean over seeds × test volumes (paired by seed and volume); "
        "95 % interval from the crossed seeds × volumes model (training and test-volume noise, "
        "docs/design.md §6); a difference whose interval contains 0 is a tie within noise.",
    )
    if data.reference is None:
        return column(heading, Div(text="<p>No reference method among the runs: no verdicts.</p>"))
    v = results.verdicts(data.records, data.reference, data.metric)
    if v.empty:
        return column(heading, Div(text="<p>No cell shared with the reference.</p>"))
    seeds = int(v["seeds"].max())
    conv = results.convergence(data.records)
    moved = {
        (r.label, r.context, r.scarcity, r.steps): r for r in conv.itertuples(index=False) if r.change_db == r.change_db
    }
    note = (
        "<p><b>Single seed</b>: the intervals hold test-volume noise only; seeds moved demo cells by up to "
        "~1 dB, so run ≥ 3 seeds before reading a ranking.</p>"
        if seeds == 1
        else ""
    )
    rows = []
    for r in v.sort_values(["context", "scarcity", "label"]).itertuples(index=False):
        colour = {"better": "#1a7f37", "worse": "#b42318", "tie": "#555"}[r.verdict]
        steps = "" if r.steps <= 0 else f", {int(r.steps)} steps"
        rows.append(
            f"<tr><td>{html.escape(r.label)}</td><td>{html.escape(r.context)} (s{r.scarcity}{steps})</td>"
            f"<td>{_fmt(r.delta, data.metric, '+')}</td><td>[{_fmt(r.lo, data.metric, '+')}, {_fmt(r.hi, data.metric, '+')}]</td>"
            f"<td>{r.seeds} × {r.volumes}</td><td style='color:{colour}'>{'tie (within noise)' if r.verdict == 'tie' else r.verdict}</td>"
            f"<td>{_fmt(r.mde, data.metric, '')}</td><td>{_moved(moved.get((r.label, r.context, r.scarcity, r.steps)))}</td></tr>"
        )
    table = (
        "<table><tr><th>method</th><th>context (level)</th><th>Δ</th><th>95 % interval</th>"
        "<th>seeds × volumes</th><th>verdict</th><th>mde (80 % power)</th><th>budget ×2</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return column(heading, Div(text=note + table, width=900))


def _moved(c) -> str:
    """A verdict cell's convergence mark: † when doubling the budget moved it (the method's mean
    PSNR) by more than its threshold, – without a budget ladder rung."""
    if c is None:
        return "–"
    mark = "† not converged" if not c.converged else "converged"
    return f"{mark} ({c.change_db:+.2f} dB, {int(min(c.budget, c.compared))}→{int(max(c.budget, c.compared))})"


def _ink(values: np.ndarray, mapper: LinearColorMapper) -> list[str]:
    """Black or white text, whichever reads better on the cell colour the mapper gives ``values``."""
    palette, low, high = mapper.palette, mapper.low, mapper.high
    t = np.clip((values - low) / max(high - low, 1e-12), 0, 1)
    colours = [palette[min(int(v * len(palette)), len(palette) - 1)] for v in np.nan_to_num(t)]
    luminance = [0.299 * int(c[1:3], 16) + 0.587 * int(c[3:5], 16) + 0.114 * int(c[5:7], 16) for c in colours]
    return ["white" if lum < 128 else "black" for lum in luminance]


# ---------------------------------------------------------------------- 3. metric vs adaptation steps


def unseen_panel(data: ReportData) -> LayoutDOM:
    """How fast each method adapts to contexts it never trained on (few-shot, docs/design.md §6)."""
    title = f"{_UNITS[data.metric]} vs adaptation steps on unseen contexts"
    if not data.unseen:
        return _heading(title, "No unseen contexts in these runs (data.unseen is empty), so no adaptation curves.")
    figs = [_steps_figure(data, ctx) for ctx in data.unseen]
    return column(
        _heading(
            title,
            "One line per label (per label × scarcity level when there are few): mean ± std over "
            "test volumes after fine-tuning on the context's support slices for that many steps.",
        ),
        gridplot(figs, ncols=min(3, len(figs)), toolbar_location="right"),
    )


def _steps_figure(data: ReportData, context: str) -> figure:
    cells = data.summary[data.summary["context"] == context]
    present = [lab for lab in data.labels if lab in set(cells["label"])]
    levels = sorted(cells["scarcity"].unique())
    if len(present) * len(levels) > 8:
        levels = levels[:1]  # one line per label: the level with the most training data
    title = f"{context} (unseen)" + (f", level s{levels[0]}" if len(levels) == 1 else "")
    fig = _curve_figure(data, f"steps:{context}", title, "adaptation steps", cells["steps"])
    series = [(lab, lvl) for lab in present for lvl in levels]
    markers = []
    for i, (label, level) in enumerate(series):
        g = cells[(cells["label"] == label) & (cells["scarcity"] == level)].sort_values("steps")
        if g.empty:
            continue
        legend = label if len(levels) == 1 else f"{label} s{level}"
        x = g["steps"] + _dodge(i, len(series), cells["steps"])
        markers.append(
            _series(
                fig,
                _series_source(g, data.metric, x),
                data.colours[label],
                legend,
                dash=_DASHES[levels.index(level) % len(_DASHES)],
            )
        )
    _finish(fig, markers, data.metric)
    return fig


def _curve_figure(data, name: str, title: str, x_label: str, ticks: pd.Series):
    """The empty figure every curve panel draws into: its size, tools, axis labels and ticks."""
    fig = figure(
        name=name,
        title=title,
        width=430,
        height=300,
        tools=_CURVE_TOOLS,
        x_axis_label=x_label,
        y_axis_label=_UNITS[data.metric],
    )
    fig.xaxis.ticker = sorted(int(v) for v in ticks.unique())
    return fig


def _curves(data, cells: pd.DataFrame, x: str, x_label: str, title: str, ctx: str, level: int, steps: int):
    """A figure with one series per label of ``cells`` (one row per run): the metric's mean ± std
    over seeds against column ``x`` (budget, support size), dodged apart, with its legend."""
    fig = _curve_figure(data, f"{x}:{ctx}", title, x_label, cells[x])
    present = [lab for lab in data.labels if lab in set(cells["label"])]
    markers = []
    for i, label in enumerate(present):
        g = cells[cells["label"] == label].groupby(x)[data.metric].agg(["mean", "std", "count"]).reset_index()
        g = g.sort_values(x)
        table = pd.DataFrame(
            {
                "label": label,
                "context": ctx,
                "scarcity": level,
                "steps": steps,
                f"{data.metric}_mean": g["mean"],
                f"{data.metric}_std": g["std"].fillna(0.0),
                "n": g["count"],
                "runs": g["count"].astype(str) + " seed(s)",
            }
        )
        at = g[x] + _dodge(i, len(present), cells[x])
        markers.append(_series(fig, _series_source(table, data.metric, at), data.colours[label], label))
    _finish(fig, markers, data.metric)
    return fig


def budget_panel(data: ReportData) -> LayoutDOM | None:
    """Seen-context metric against the training budget for a budget ladder (``[sweep]
    budgets``), mean ± std over seeds: whether a ranking was read off an unconverged budget.
    None (no panel) when every run had one budget."""
    rec = data.records[data.records["seen"]]
    if rec.empty or rec["budget"].nunique() < 2:
        return None
    per_run = rec.groupby(["label", "context", "scarcity", "budget", "seed"])[data.metric].mean().reset_index()
    figs = []
    for ctx in [c for c in data.seen if c in set(per_run["context"])]:
        cells = per_run[(per_run["context"] == ctx) & (per_run["scarcity"] == per_run["scarcity"].min())]
        level = int(cells["scarcity"].min())
        title = f"{ctx} (seen), level s{level}"
        figs.append(_curves(data, cells, "budget", "training budget (slices)", title, ctx, level, 0))
    return column(
        _heading(
            f"{_UNITS[data.metric]} vs training budget on seen contexts",
            "The budget ladder: a line still rising at the largest budget is not converged "
            f"(the tables and verdicts mark † a move > min({results.CONVERGENCE_DB} dB, the cell's 95 % half-width) "
            "when the budget doubles); mean ± std over seeds.",
        ),
        gridplot(figs, ncols=min(3, len(figs)), toolbar_location="right"),
    )


def support_panel(data: ReportData) -> LayoutDOM:
    """Unseen-context metric against the support-set size (``mrbench evaluate --support-sizes``),
    after the most adaptation steps evaluated, mean ± std over seeds (the seed band): how
    much labelled data an unseen contrast needs before adaptation pays."""
    title = f"{_UNITS[data.metric]} vs support size on unseen contexts"
    rec = results.support_records(data.runs)
    if rec.empty:
        return _heading(
            title, "No support curves in these runs (`mrbench evaluate RUNS --support-sizes 1,2,4,8` adds them)."
        )
    rec = rec[rec["steps"] == rec.groupby("context")["steps"].transform("max")]
    figs = []
    for ctx in [c for c in data.unseen if c in set(rec["context"])]:
        cells = rec[rec["context"] == ctx]
        level = int(cells["scarcity"].min())
        cells = cells[cells["scarcity"] == level]
        steps = int(cells["steps"].max())
        label = f"{ctx} (unseen), level s{level}, {steps} steps"
        figs.append(_curves(data, cells, "support", "support set size", label, ctx, level, steps))
    return column(
        _heading(
            title,
            "After the most adaptation steps each run evaluated, with its own rule and lr chosen on "
            "seen validation; mean ± std over seeds (whiskers: the seed band).",
        ),
        gridplot(figs, ncols=min(3, len(figs)), toolbar_location="right"),
    )


# ---------------------------------------------------------------------- 4. reconstruction viewer


def viewer_panel(data: ReportData) -> LayoutDOM:
    """The images behind the numbers: artefacts that PSNR averages away show up here."""
    heading = _heading(
        "Reconstruction viewer",
        f"One test slice per context (at most {MAX_VIEWER_CONTEXTS} contexts, {MAX_VIEWER_LABELS} methods), "
        f"from each label's run at its lowest scarcity level (lowest seed); unseen contexts after the largest "
        f"adaptation step count. Titles give the slice PSNR (data range = the target's maximum). Second row: "
        f"|error| × {ERROR_GAIN} on the target's grey scale. Pan and zoom are linked within a context.",
    )
    methods = [lab for lab in data.labels if data.methods[lab] != "zero-filled"][:MAX_VIEWER_LABELS]
    sources = [lab for lab in data.labels if data.methods[lab] == "zero-filled"] + methods
    picks = {lab: _viewer_run(data.runs, lab) for lab in sources}
    previews = {lab: run.previews() for lab, run in picks.items()}
    blocks = []
    for context in data.contexts:
        entries = {lab: e for lab in sources if (e := _preview_for(previews[lab], context)) is not None}
        if entries and len(blocks) < MAX_VIEWER_CONTEXTS:
            blocks.append(_viewer_grid(context, entries, {lab: picks[lab] for lab in methods if lab in entries}))
    if not blocks:
        return column(heading, Div(text="<p>No run has previews.npz, so there is nothing to show.</p>"))
    return column(heading, *blocks)


def _viewer_run(runs: Sequence[Run], label: str) -> Run:
    """The label's run with the most training data: lowest scarcity level, then lowest seed."""
    return min((r for r in runs if r.label == label), key=lambda r: (r.scarcity, r.seed, r.name))


def _preview_for(entries: list[dict], context: str) -> dict | None:
    """The context's preview after the most adaptation steps (seen contexts have only steps 0)."""
    mine = [e for e in entries if e["context"] == context]
    return max(mine, key=lambda e: e["steps"]) if mine else None


def _viewer_grid(context: str, entries: dict[str, dict], runs: dict[str, Run]) -> LayoutDOM:
    """Row 1: target, zero-filled, each method; row 2: their |error| maps; linked ranges."""
    first = next(iter(entries.values()))
    target, zero_filled = first["target"], first["zero_filled"]
    same_slice = {
        lab: e
        for lab, e in entries.items()
        if (e["volume"], e["slice"]) == (first["volume"], first["slice"]) and e["pred"].shape == target.shape
    }
    h, w = target.shape
    ranges = Range1d(0, w, bounds=(0, w)), Range1d(0, h, bounds=(0, h))
    peak = float(target.max())
    image_mapper = LinearColorMapper(palette=Greys256, low=0.0, high=peak)
    error_mapper = LinearColorMapper(palette=Greys256, low=0.0, high=peak)

    def image(name: str, title: str, img: np.ndarray, mapper: LinearColorMapper) -> figure:
        return _image_figure(f"viewer:{context}:{name}", title, img, mapper, ranges)

    def error(name: str, img: np.ndarray) -> figure:
        return image(f"{name}:error", f"|error| ×{ERROR_GAIN}", ERROR_GAIN * np.abs(img - target), error_mapper)

    # two-line titles everywhere in the row, so that every frame keeps the same size
    top = [
        image("target", f"target\nslice {first['slice']}", target, image_mapper),
        image("zero-filled", f"zero-filled\n{_slice_psnr(target, zero_filled):.2f} dB", zero_filled, image_mapper),
    ]
    bottom = [None, error("zero-filled", zero_filled)]
    for label, run in runs.items():
        if label in same_slice:
            pred = same_slice[label]["pred"]
            top.append(image(label, f"{label} s{run.scarcity}\n{_slice_psnr(target, pred):.2f} dB", pred, image_mapper))
            bottom.append(error(label, pred))
    steps = f", after {first['steps']} adaptation steps" if first["steps"] else ""
    caption = Div(
        text=f"<h3>{html.escape(context)}</h3><p>volume {html.escape(first['volume'])}, "
        f"slice {first['slice']}{steps}</p>"
    )
    return column(caption, gridplot([top, bottom], toolbar_location="right"))


def _image_figure(
    name: str, title: str, img: np.ndarray, mapper: LinearColorMapper, ranges: tuple[Range1d, Range1d], size: int = 150
) -> figure:
    """One magnitude image; ``ranges`` are shared by the context's images (linked pan/zoom).

    The frame has the image's aspect ratio and box zoom keeps it (ranges are explicit, so
    Bokeh's ``match_aspect`` for data ranges would not apply)."""
    h, w = img.shape
    fig = figure(
        name=name,
        title=title,
        x_range=ranges[0],
        y_range=ranges[1],
        frame_width=size,
        frame_height=max(1, round(size * h / w)),
        tools=[PanTool(), WheelZoomTool(), BoxZoomTool(match_aspect=True), ResetTool()],
    )
    # row 0 of an MR image is its top; Bokeh's image origin is the bottom left
    fig.image(image=[np.ascontiguousarray(img[::-1], dtype=np.float32)], x=0, y=0, dw=w, dh=h, color_mapper=mapper)
    fig.add_tools(HoverTool(tooltips=[("x, y", "$x{0}, $y{0}"), ("value", "@image")]))
    fig.title.text_font_size = "9pt"
    fig.axis.visible = False
    fig.grid.visible = False
    return fig


def _slice_psnr(target: np.ndarray, x: np.ndarray) -> float:
    """PSNR of one slice with data_range = target.max(), as the volume metric uses (docs/design.md §6)."""
    mse = float(np.mean((target.astype(np.float64) - x.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(float(target.max()) ** 2 / mse)


# ---------------------------------------------------------------------- 5. cost


def cost_panel(data: ReportData) -> LayoutDOM:
    """What each method's numbers cost: wall time of a run and network size."""
    per = data.costs.groupby("label").agg(
        wall_seconds=("wall_seconds", "mean"),
        parameters=("parameters", "mean"),
        trained_slices=("trained_slices", "mean"),
        runs=("run", "count"),
        device=("device", _joined),
        threads=("threads", _joined),
    )
    labels = [lab for lab in data.labels if lab in per.index]
    per = per.loc[labels]
    source = ColumnDataSource(
        {
            "label": labels,
            "wall_seconds": per["wall_seconds"].to_numpy(),
            "parameters": per["parameters"].to_numpy(),
            "trained_slices": per["trained_slices"].to_numpy(),
            "runs": per["runs"].to_list(),
            "device": per["device"].to_list(),
            "threads": per["threads"].to_list(),
            "colour": [data.colours[lab] for lab in labels],
        }
    )
    figs = [
        _cost_figure(source, labels, "wall_seconds", "mean wall seconds per run", "0.0"),
        _cost_figure(source, labels, "parameters", "parameters (mean over runs)", "0,0"),
    ]
    return column(
        _heading(
            "Cost per method",
            "Mean over each label's runs: wall-clock seconds of a run "
            "(training and evaluation, manifest.json) and trainable parameters.",
        ),
        row(figs),
    )


def _cost_figure(source: ColumnDataSource, labels: list[str], field: str, title: str, fmt: str) -> figure:
    fig = figure(
        name=f"cost:{field}",
        title=title,
        x_range=FactorRange(*labels),
        width=max(320, 70 * len(labels)),
        height=320,
        tools="save",
    )
    bars = fig.vbar(x="label", top=field, width=0.7, source=source, fill_color="colour", line_color=None)
    fig.add_tools(
        HoverTool(
            renderers=[bars],
            tooltips=[
                ("method", "@label"),
                (field.replace("_", " "), f"@{field}{{{fmt}}}"),
                ("trained slices", "@trained_slices{0,0}"),
                ("runs", "@runs"),
                ("device", "@device"),
                ("threads", "@threads"),
            ],
        )
    )
    fig.xaxis.major_label_orientation = 0.8
    fig.y_range.start = 0
    fig.xgrid.visible = False
    return fig


def _joined(values: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in values if str(v)}))
