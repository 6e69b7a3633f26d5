"""Finished runs → tidy tables: the one input of ``mrbench compare`` and ``mrbench table``.

Data flows one way: run directories (``metrics.json``, ``manifest.json``,
``config.json``, ``previews.npz``) are read here into :class:`Run` objects and
flattened into a per-volume :func:`records` frame (one row per run × context ×
adaptation step count × test volume). Everything the reports show is a
function of that frame, so a report can always be redrawn from the run
directories alone (benchopt's rule: results carry everything the plot needs).

Statistics (docs/design.md §6, :mod:`.statistics`): mean ± std over test volumes (pooled over
seeds when there are several); every interval, test and verdict comes from one model of a
paired difference's two crossed noise sources — training randomness (seed) and test-volume
sampling (volume) — with a t quantile at conservative Satterthwaite df; Holm's step-down
correction over the methods of one column (context × scarcity level) for the tables'
asterisks; and the *win rate*: the share of unseen contexts where a method's mean beats the
reference's (the form of KM-MAML's "generalises to 80 % / 92 % of unseen contexts").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic
from ..errors import MrbenchError
from ..store import RunStore, read_json
from . import statistics as S

METRICS = ("psnr", "ssim", "nmse")
#: larger is better for these; NMSE is better when smaller
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "nmse": False}
_SUFFIX = re.compile(r"(-b\d+)?(-lr[0-9.e+-]+?)?-s\d+-seed\d+$")  # budget-ladder rung, searched lr, level, seed


@dataclass
class Run:
    """One run directory as the reports see it."""

    path: Path
    config: dict
    metrics: dict | None = None
    manifest: dict | None = None
    done: bool = False
    store: RunStore = field(repr=False, default=None)
    lr_search: dict | None = None  # {lr: mean seen-validation SSIM} when this run's lr won a search

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """The method variant a table row stands for: the run name without ``-s<N>-seed<S>``
        a budget-ladder rung ``-b<B>`` and a searched learning rate ``-lr<LR>`` (``stl-varnet``,
        a sweep entry's name such as ``mtl-IIVV-dwa``)."""
        return _SUFFIX.sub("", self.name) or self.name

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def scarcity(self) -> int:
        return int(self.config.get("scarcity", 0))

    @property
    def seed(self) -> int:
        return int(self.config.get("train", {}).get("seed", 0))

    @property
    def experiment(self) -> str:
        return self.config.get("run", {}).get("experiment", self.path.parent.name)

    def previews(self) -> list[dict]:
        return self.store.read_previews()


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named directly, or found under experiment (or runs) directories."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise MrbenchError(f"{p} does not exist")
        if not p.is_dir():
            raise MrbenchError(f"{p} is not a directory (expected a run or experiment directory)")
        if (p / "config.json").exists():
            found.append(p)
            continue
        below = sorted(c.parent for c in p.rglob("config.json"))
        if not below:
            raise MrbenchError(f"{p} holds no runs (no config.json below it)")
        found.extend(below)
    unique = list(dict.fromkeys(d.resolve() for d in found))
    return unique


def load_runs(paths: Iterable[str | os.PathLike], *, finished_only: bool = True) -> list[Run]:
    """Load the runs below ``paths``; with ``finished_only`` keep those with DONE and metrics."""
    runs = []
    for d in find_run_dirs(paths):
        store = RunStore(d)
        cfg = read_json(d / "config.json", missing_ok=True)
        run = Run(
            path=d,
            config=cfg or {},
            metrics=read_json(d / "metrics.json", missing_ok=True),
            manifest=read_json(d / "manifest.json", missing_ok=True),
            done=store.is_done(),
            store=store,
        )
        if finished_only and not (run.done and run.metrics):
            continue
        runs.append(run)
    return select_learning_rates(runs) if finished_only else runs


def validation_score(run: Run) -> float:
    """The run's checkpoint criterion: the best, over validation checks of its last phase, of
    the mean SSIM over that phase's seen tasks (``metrics.json`` history; seen validation
    volumes only, never a test set). NaN without a history."""
    history = (run.metrics or {}).get("history") or []
    if not history:
        return float("nan")
    last = history[-1]["phase"]
    checks: dict[int, list[float]] = {}
    for h in history:
        if h["phase"] == last:
            checks.setdefault(int(h["slices"]), []).append(float(h["ssim"]))
    return max(float(np.mean(v)) for v in checks.values())


def select_learning_rates(runs: list[Run]) -> list[Run]:
    """A learning-rate search (``[sweep] lrs``): where a label has runs at several ``train.lr``
    at one scarcity level, keep only the runs at the lr with the best mean
    :func:`validation_score` over seeds (one lr per label and level, chosen on seen
    validation data, never on test), and record the search on them (``Run.lr_search``).
    Every label gets the same search, so no method is compared at a tuned lr against
    another at a default one (Kurin et al. 2022; Xin et al. 2022)."""
    groups: dict[tuple[str, int], dict[float, list[Run]]] = {}
    for run in runs:
        lr = float(run.config.get("train", {}).get("lr", 0.0))
        groups.setdefault((run.label, run.scarcity), {}).setdefault(lr, []).append(run)
    keep = []
    for by_lr in groups.values():
        if len(by_lr) == 1:
            keep.extend(next(iter(by_lr.values())))
            continue
        scores = {lr: float(np.nanmean([validation_score(r) for r in rs])) for lr, rs in by_lr.items()}
        best = max(scores, key=lambda lr: (scores[lr], -lr))
        for run in by_lr[best]:
            run.lr_search = scores
        keep.extend(by_lr[best])
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(keep, key=lambda r: order[id(r)])


def diverged_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """The runs below ``paths`` stored as *diverged*: reports name them, never average them."""
    return [run for run in load_runs(paths, finished_only=False) if run.store.is_diverged()]


# ---------------------------------------------------------------------- flat records


def records(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run × context × adaptation step count × test volume.

    Columns: label, method, run, experiment, scarcity, seed, context, contrast,
    mask, acceleration, seen, scarce, steps, volume, train_slices, chosen_steps (the adaptation
    step count chosen on seen validation, unseen contexts only), psnr, ssim, nmse.
    """
    rows = []
    for run in runs:
        per_run = run_facts(run)
        for ctx_name, ctx in (run.metrics or {}).get("contexts", {}).items():
            c = ctx.get("context", {})
            for steps, res in ctx.get("steps", {}).items():
                for volume, m in res.get("volumes", {}).items():
                    rows.append(
                        {
                            "label": run.label,
                            "method": run.method,
                            "run": run.name,
                            "experiment": run.experiment,
                            "scarcity": run.scarcity,
                            "seed": run.seed,
                            "context": ctx_name,
                            "contrast": c.get("contrast", ctx_name.split("/")[0]),
                            "mask": c.get("mask", ""),
                            "acceleration": c.get("acceleration", float("nan")),
                            "seen": bool(ctx.get("seen", True)),
                            "scarce": bool(ctx.get("scarce", False)),
                            "steps": int(steps),
                            "volume": volume,
                            "train_slices": int(ctx.get("train_slices", 0)),
                            "chosen_steps": float(ctx.get("chosen_steps", float("nan"))),
                            "kspace_source": str(ctx.get("kspace_source", "")),
                            **per_run,
                            **{k: float(m[k]) for k in METRICS},
                        }
                    )
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


#: the per-volume records: what a table, a claim and the report read, and what ``baselines/``
#: stores (``records.csv.gz``) so that anyone can recompute them
RECORD_COLUMNS = [
    "label",
    "method",
    "run",
    "experiment",
    "scarcity",
    "seed",
    "context",
    "contrast",
    "mask",
    "acceleration",
    "seen",
    "scarce",
    "steps",
    "volume",
    "train_slices",
    "chosen_steps",
    "budget",
    "budget_rule",
    "parameters",
    "loss",
    "adaptation",
    "setting",
    "kspace_source",
    *METRICS,
]
#: columns a records file written before they existed may lack (read as empty)
OPTIONAL_COLUMNS = ("kspace_source",)
#: what the tables and the ledger say beside results on k-space made from magnitude images
SIMULATED_NOTE = (
    "k-space simulated from magnitude images (mrbench data import): reconstruction looks easier than "
    "on raw data (Shimron et al., PNAS 2022)"
)


def simulated_kspace(df: pd.DataFrame) -> bool:
    """Whether any record's test k-space was simulated from magnitude images."""
    return "kspace_source" in df and df["kspace_source"].fillna("").astype(str).str.contains("simulated").any()


def run_facts(run: Run) -> dict:
    """The run-level columns of its records: budget (and how a multi-network method spends it),
    parameters, training loss, the adaptation chosen on seen validation and the row's setting text."""
    train = run.config.get("train", {})
    loss = str(train.get("loss", "sup"))
    if run.config.get("data", {}).get("self_supervised"):
        loss += f"+{train.get('ssl_loss', 'ei')}-on-{'+'.join(run.config['data']['self_supervised'])}"
    choice = (run.metrics or {}).get("adaptation") or {}
    adapted = choice.get("rule") not in (None, "none")
    return {
        "budget": int(train.get("budget", 0)),
        "budget_rule": str(train.get("budget_per", "run")),
        "parameters": int((run.metrics or {}).get("cost", {}).get("parameters", 0)),
        "loss": "none" if run.method == "zero-filled" else loss,
        "adaptation": f"{choice['rule']}×{choice['steps']}" if adapted else "",
        "setting": " · ".join(_setting_parts(run).values()) if run.method != "zero-filled" else "",
    }


def support_records(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run × unseen context × support size × adaptation step count of the support
    curves (``mrbench evaluate --support-sizes``): label, scarcity, seed, context, support,
    steps and the mean metrics over the context's test volumes."""
    rows = []
    for run in runs:
        for ctx_name, ctx in (run.metrics or {}).get("contexts", {}).items():
            for k, by_steps in ctx.get("support_curve", {}).items():
                for steps, m in by_steps.items():
                    rows.append(
                        {
                            "label": run.label,
                            "scarcity": run.scarcity,
                            "seed": run.seed,
                            "context": ctx_name,
                            "support": int(k),
                            "steps": int(steps),
                            **{x: float(m[x]) for x in METRICS},
                        }
                    )
    return pd.DataFrame(rows, columns=["label", "scarcity", "seed", "context", "support", "steps", *METRICS])


def _setting_parts(run: Run) -> dict[str, str]:
    params = int((run.metrics or {}).get("cost", {}).get("parameters", 0))
    parts = {
        "backbone": str(run.config.get("model", {}).get("backbone", "?")),
        "params": (f"{params / 1e3:.0f}k" if params < 10**6 else f"{params / 1e6:.2f}M") + " params",
        "sampling": str(run.config.get("train", {}).get("sampling", "?")),
        "loss": f"loss {run.config.get('train', {}).get('loss', 'sup')}"
        + (
            f" + {run.config['train'].get('ssl_loss', 'ei')} on {'/'.join(run.config['data']['self_supervised'])}"
            if run.config.get("data", {}).get("self_supervised")
            else ""
        ),
    }
    train = run.config.get("train", {})
    parts["budget"] = f"budget {int(train.get('budget', 0))}/{train.get('budget_per', 'run')}"
    if run.lr_search:
        parts["lr"] = (
            f"lr {float(run.config['train']['lr']):g} of {'/'.join(f'{lr:g}' for lr in sorted(run.lr_search))}"
        )
    choice = (run.metrics or {}).get("adaptation")
    if choice and choice.get("rule") not in (None, "none"):
        lr = f" {choice['lr']:g}" if choice.get("lr") else ""
        parts["adapt"] = f"adapt {choice['rule']}{lr} ×{choice['steps']}"
    return parts


def _part_key(i: int, part: str) -> str | int:
    """A setting part's key when read back from its text: the named parts by their first word."""
    word = part.split(" ", 1)[0]
    return word if word in ("loss", "budget", "lr", "adapt") else i


def row_settings(runs: Sequence[Run] | pd.DataFrame) -> dict[str, str]:
    """What each table row (label) was trained with, so like is seen to be compared with like:
    backbone, parameter count, task-sampling rule, training loss and the test-time adaptation chosen on
    seen validation (rule, lr, steps; ``–`` for zero-filled). Values that differ between a
    label's runs (levels, seeds) are joined with ``/``. From runs, or from their :func:`records`
    (the ``setting`` column)."""
    if isinstance(runs, pd.DataFrame):
        texts = runs.drop_duplicates("run")[["label", "setting"]].fillna("").itertuples(index=False)
        per_run = [
            (label, {_part_key(i, p): p for i, p in enumerate(str(t).split(" · "))} if t else {}) for label, t in texts
        ]
    else:
        per_run = [
            (
                run.label,
                {}
                if run.method == "zero-filled"
                else {_part_key(i, p): p for i, p in enumerate(_setting_parts(run).values())},
            )
            for run in runs
        ]
    seen: dict[str, dict[str, list[str]]] = {}
    for label, parts in per_run:
        row = seen.setdefault(label, {})
        for k, v in parts.items():
            if v not in row.setdefault(k, []):
                row[k].append(v)
    return {label: " · ".join("/".join(vals) for vals in row.values()) or "–" for label, row in seen.items()}


def costs(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run: wall and training seconds (manifest.json), parameters and slices (metrics.json)."""
    rows = []
    for run in runs:
        cost = (run.metrics or {}).get("cost", {})
        man = run.manifest or {}
        rows.append(
            {
                "label": run.label,
                "method": run.method,
                "run": run.name,
                "scarcity": run.scarcity,
                "seed": run.seed,
                "wall_seconds": float(man.get("wall_seconds", float("nan"))),
                "train_seconds": float(man.get("train_seconds", float("nan"))),
                "parameters": int(cost.get("parameters", 0)),
                "trained_slices": int(cost.get("trained_slices", 0)),
                "device": man.get("device", ""),
                "threads": man.get("threads", 0),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "label",
            "method",
            "run",
            "scarcity",
            "seed",
            "wall_seconds",
            "train_seconds",
            "parameters",
            "trained_slices",
            "device",
            "threads",
        ],
    )


# ---------------------------------------------------------------------- aggregation

_CELL = ["label", "method", "context", "seen", "scarcity", "steps"]


def summarise(df: pd.DataFrame, metrics: Sequence[str] = METRICS, ci: bool = False) -> pd.DataFrame:
    """Per (label, context, scarcity, steps): mean, std and n of each metric over volumes × seeds,
    the training slices of the context and the runs behind the cell; ``ci`` adds the 95 % interval
    of the mean under the crossed seeds × volumes model (:mod:`.statistics`)."""
    if df.empty:
        return pd.DataFrame(columns=[*_CELL, "n", "seeds", "train_slices", "runs"])
    out = []
    for key, g in df.groupby(_CELL, sort=True, dropna=False):
        row = dict(zip(_CELL, key))
        row["n"] = len(g)
        row["seeds"] = g["seed"].nunique()
        row["train_slices"] = int(g["train_slices"].max())
        row["runs"] = ", ".join(sorted(g["run"].unique()))
        for m in metrics:
            vals = g[m].to_numpy(dtype=np.float64)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std())
            if ci:  # over seeds × volumes, volumes shared by the seeds
                row[f"{m}_lo"], row[f"{m}_hi"] = S.one_cell(seed_volume_matrix(g, m).to_numpy()).interval()
        out.append(row)
    return pd.DataFrame(out)


def resolve_reference(labels: Iterable[str], methods: dict[str, str], reference: str) -> str | None:
    """The label that ``reference`` names: a label itself, or the one label of that method."""
    labels = sorted(set(labels))
    if reference in labels:
        return reference
    of_method = [lab for lab in labels if methods.get(lab) == reference]
    if len(of_method) == 1:
        return of_method[0]
    if len(of_method) > 1:
        raise MrbenchError(f"--reference {reference!r} is ambiguous: {', '.join(of_method)}; name one of them")
    return None


def seed_volume_matrix(g: pd.DataFrame, metric: str) -> pd.DataFrame:
    """seeds × volumes of ``metric`` for one cell (mean if a (seed, volume) repeats).

    The same frame ``g.pivot_table(index="seed", columns="volume", values=metric,
    aggfunc="mean")`` gives (NaN values left out, all-NaN rows and columns dropped), in numpy:
    the pivot ran ~4–7 ms a call and the tables and report call it ~1000 times (issue 15)."""
    values = g[metric].to_numpy(dtype=np.float64)
    seeds, si = np.unique(g["seed"].to_numpy(), return_inverse=True)
    vols, vi = np.unique(g["volume"].to_numpy(), return_inverse=True)
    ok = ~np.isnan(values)
    sums = np.zeros((len(seeds), len(vols)))
    counts = np.zeros((len(seeds), len(vols)))
    np.add.at(sums, (si[ok], vi[ok]), values[ok])
    np.add.at(counts, (si[ok], vi[ok]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    out = pd.DataFrame(mean, index=pd.Index(seeds, name="seed"), columns=pd.Index(vols, name="volume"))
    return out.dropna(axis=0, how="all").dropna(axis=1, how="all")


def paired_matrix(x: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame | None:
    """``x − y`` for two seeds × volumes matrices of one metric, on the volumes both have.

    Rows: the seeds both have when they share two or more (or both are single-seed); else a
    single-seed side (a deterministic zero-filled run) is set against every seed of the other;
    else the seeds are paired in sorted order (independent seeds are exchangeable), as many
    as the smaller side has. None when no volume is shared."""
    vols = x.columns.intersection(y.columns)
    if len(vols) == 0:
        return None
    shared = x.index.intersection(y.index)
    if len(shared) >= 2 or (len(x) == 1 and len(y) == 1 and len(shared) == 1):
        d = x.loc[shared, vols].to_numpy() - y.loc[shared, vols].to_numpy()
        index = shared
    elif len(y) == 1 or len(x) == 1:
        d = x.loc[:, vols].to_numpy() - y.loc[:, vols].to_numpy()  # broadcasts the single row
        index = x.index if len(x) > 1 else y.index
    else:
        n = min(len(x), len(y))
        d = x.loc[:, vols].to_numpy()[:n] - y.loc[:, vols].to_numpy()[:n]
        index = pd.RangeIndex(n, name="rank")
    return pd.DataFrame(d, index=index, columns=vols)


def cell_estimate(d: pd.DataFrame) -> S.Estimate:
    """The crossed model's estimate (:func:`statistics.one_cell`) of a paired difference matrix."""
    return S.one_cell(d.to_numpy(), list(d.columns))


def paired_difference(x: pd.DataFrame, y: pd.DataFrame, resolve: float | None = None) -> dict | None:
    """``x − y`` (:func:`paired_matrix`): the mean, its 95 % interval under the crossed seeds ×
    volumes model (docs/design.md §6), its standard error, df, two-sided p, minimum detectable
    difference (80 % power) and how many seeds and volumes stand behind it — with ``resolve``,
    also ``seeds_needed``: the seeds that would detect a difference of that size (NaN: a
    single seed, or more than 100); None when no volume is shared."""
    d = paired_matrix(x, y)
    if d is None or d.size == 0:
        return None
    e = cell_estimate(d)
    lo, hi = e.interval()
    out = {
        "delta": e.delta,
        "lo": lo,
        "hi": hi,
        "se": e.se,
        "df": e.df,
        "p": e.p_two_sided(),
        "mde": e.mde(),
        "seeds": e.seeds,
        "volumes": e.volumes,
    }
    if resolve is not None:
        out["seeds_needed"] = float(S.seeds_to_resolve(e, resolve) or float("nan"))
    return out


def interval_verdict(lo: float, hi: float, metric: str, words=("better", "worse", "tie")) -> str:
    """``better`` / ``worse`` when the interval excludes 0 in the metric's good / bad
    direction, else ``tie`` — a difference within the seed and volume noise."""
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    if sign * lo > 0 and sign * hi > 0:
        return words[0]
    if sign * lo < 0 and sign * hi < 0:
        return words[1]
    return words[2]


VERDICT_COLUMNS = [
    "label",
    "context",
    "scarcity",
    "steps",
    "delta",
    "lo",
    "hi",
    "se",
    "df",
    "p",
    "p_holm",
    "mde",
    "seeds",
    "volumes",
    "verdict",
]


def verdicts(df: pd.DataFrame, reference: str, metric: str, resolve: float | None = None) -> pd.DataFrame:
    """Every label against ``reference`` per (context, scarcity, steps): the paired difference
    of ``metric`` (label − reference) over seeds × volumes with its 95 % interval under the
    crossed model (:func:`paired_difference`) and the verdict (:func:`interval_verdict`). A
    difference smaller than the seed-to-seed and volume-to-volume noise is a tie, however the
    means order. ``p_holm``: the two-sided p Holm-corrected over the labels of one column
    (context × level × steps), the family of a paper table's column — the tables' asterisks.

    Columns: :data:`VERDICT_COLUMNS`, and ``seeds_needed`` with ``resolve``
    (:func:`paired_difference`)."""
    rows = []
    cells = df.groupby(["label", "context", "scarcity", "steps"], sort=True)
    ref_cells = {k[1:]: g for k, g in cells if k[0] == reference}
    for (label, context, scarcity, steps), g in cells:
        ref = ref_cells.get((context, scarcity, steps))
        if label == reference or ref is None:
            continue
        diff = paired_difference(seed_volume_matrix(g, metric), seed_volume_matrix(ref, metric), resolve)
        if diff is None:
            continue
        rows.append(
            {
                "label": label,
                "context": context,
                "scarcity": scarcity,
                "steps": steps,
                **diff,
                "verdict": interval_verdict(diff["lo"], diff["hi"], metric),
            }
        )
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS + (["seeds_needed"] if resolve is not None else []))
    for _, idx in out.groupby(["context", "scarcity", "steps"]).groups.items():
        out.loc[idx, "p_holm"] = S.holm(out.loc[idx, "p"].to_numpy(dtype=np.float64))
    return out


def adaptation_gains(
    runs: Sequence[Run] | pd.DataFrame, metric: str = "psnr", df: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Whether test-time adaptation helps, per (label, unseen context, level): ``metric``
    after each run's chosen step count minus at 0 steps, paired by seed and volume, with the
    verdicts' 95 % interval — ``helps`` / ``hurts`` when it excludes 0, else ``within
    noise`` — and the rule × steps each seed chose on seen validation (the records'
    ``adaptation`` column). ``runs``: runs or their :func:`records`; ``df``: the records, when
    the caller has them already.

    ``gain_max`` (with ``lo_max``, ``hi_max``) is the same difference at the largest step
    count evaluated: what more adaptation would have done on the test set — a diagnostic
    that was not used for choosing; NaN when the runs were scored at the chosen count only
    (``eval.curve`` off, the default).

    Columns: label, context, scarcity, choices, gain, lo, hi, seeds, volumes, verdict,
    max_steps, gain_max, lo_max, hi_max."""
    df = (runs if isinstance(runs, pd.DataFrame) else records(runs)) if df is None else df
    unseen = df[~df["seen"] & df["chosen_steps"].notna()]
    chosen_by: dict[tuple, set] = {}
    for (label, level, choice), _ in df.groupby(["label", "scarcity", "adaptation"]):
        if choice:
            chosen_by.setdefault((label, level), set()).add(choice)
    rows = []
    for (label, context, level), g in unseen.groupby(["label", "context", "scarcity"]):
        if (label, level) not in chosen_by:
            continue  # nothing adapts (zero-filled)
        zero = seed_volume_matrix(g[g["steps"] == 0], metric)
        gain = paired_difference(seed_volume_matrix(g[g["steps"] == g["chosen_steps"]], metric), zero)
        k = int(g["steps"].max())
        curve = bool((g["steps"] > g["chosen_steps"]).any())  # scored past the choice: the diagnostic curve
        most = paired_difference(seed_volume_matrix(g[g["steps"] == k], metric), zero) if curve else None
        if gain is None or (curve and most is None):
            continue
        most = most or {"delta": float("nan"), "lo": float("nan"), "hi": float("nan")}
        rows.append(
            {
                "label": label,
                "context": context,
                "scarcity": int(level),
                "choices": ", ".join(sorted(chosen_by[(label, level)])),
                "gain": gain["delta"],
                "lo": gain["lo"],
                "hi": gain["hi"],
                "seeds": gain["seeds"],
                "volumes": gain["volumes"],
                "verdict": interval_verdict(gain["lo"], gain["hi"], metric, ("helps", "hurts", "within noise")),
                "max_steps": k,
                "gain_max": most["delta"],
                "lo_max": most["lo"],
                "hi_max": most["hi"],
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "label",
            "context",
            "scarcity",
            "choices",
            "gain",
            "lo",
            "hi",
            "seeds",
            "volumes",
            "verdict",
            "max_steps",
            "gain_max",
            "lo_max",
            "hi_max",
        ],
    )


def at_compared_steps(df: pd.DataFrame) -> pd.DataFrame:
    """The records a table or report compares: seen contexts, and unseen ones at each run's
    adaptation step count chosen on seen validation (their ``steps`` set to :data:`CHOSEN`),
    or — runs without a choice — at the context's largest step count."""
    chosen = ~df["seen"] & df["chosen_steps"].notna()
    most = df["steps"] == df.groupby("context")["steps"].transform("max")
    keep = df["seen"] | (chosen & (df["steps"] == df["chosen_steps"])) | (~df["seen"] & ~chosen & most)
    out = df[keep].copy()
    out.loc[chosen[keep], "steps"] = CHOSEN
    return out


#: the ``steps`` of an unseen cell read at each run's chosen step count
CHOSEN = -1


#: a cell is *not converged* when doubling the budget moved its mean PSNR by more than this
#: (or than the half-width of its 95 % interval, when that is smaller)
CONVERGENCE_DB = 0.2


def convergence(df: pd.DataFrame, read: dict[str, int] | None = None) -> pd.DataFrame:
    """For runs of a budget ladder (``[sweep] budgets``): per (label, context, scarcity, steps)
    read at budget B (``read[label]``, default the label's largest), the change of mean PSNR
    when the budget doubles — from B to 2B where a 2B rung exists (is B enough?), else from B/2
    to B (was it still learning into B?) — and whether it stays within min(:data:`CONVERGENCE_DB`,
    the half-width of the cell's 95 % interval at B, crossed model) (``converged``): a move
    larger than either would change what the cell says. NaN / True without such a rung.

    The change is read on the seeds both rungs ran (a rung may run fewer seeds than the grid to
    save time): seed s at B and at 2B start from the same initialisation and see the same data
    order, so the paired change is free of the seed-to-seed spread that a mean over 5 seeds
    against a mean over 3 would carry (rungs with no seed in common fall back to unpaired means).
    The threshold's interval is the cell's own, all its seeds.

    Columns: label, context, scarcity, steps, budget, compared (the other rung), change_db,
    threshold, converged."""
    rows = []
    for (label, context, scarcity, steps), g in df.groupby(["label", "context", "scarcity", "steps"]):
        budgets = set(int(b) for b in g["budget"].unique())
        top = int(read.get(label, max(budgets))) if read else max(budgets)
        if top not in budgets:
            continue
        other = 2 * top if 2 * top in budgets else top // 2 if 0 < top // 2 < top else 0
        rung = other in budgets and other != top
        change, threshold = float("nan"), CONVERGENCE_DB
        if rung:
            pair = g[g["budget"].isin([top, other])]
            both = set(pair.loc[pair["budget"] == top, "seed"]) & set(pair.loc[pair["budget"] == other, "seed"])
            pair = pair[pair["seed"].isin(both)] if both else pair  # disjoint seeds: unpaired means
            means = pair.groupby("budget")["psnr"].mean()
            change = float(means[max(top, other)] - means[min(top, other)])
            lo, hi = S.one_cell(seed_volume_matrix(g[g["budget"] == top], "psnr").to_numpy()).interval()
            if np.isfinite(hi - lo):
                threshold = min(CONVERGENCE_DB, (hi - lo) / 2)
        rows.append(
            {
                "label": label,
                "context": context,
                "scarcity": scarcity,
                "steps": steps,
                "budget": top,
                "compared": other if rung else 0,
                "change_db": change,
                "threshold": threshold,
                "converged": bool(not abs(change) > threshold),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["label", "context", "scarcity", "steps", "budget", "compared", "change_db", "threshold", "converged"],
    )


def win_rates(summary: pd.DataFrame, reference: str, metric: str, steps: int | None = None) -> dict[str, float]:
    """Share of unseen (context, scarcity) cells where each label's mean beats the reference's.

    ``steps``: the adaptation step count compared (default: the largest each cell has)."""
    unseen = summary[~summary["seen"].astype(bool)]
    if unseen.empty:
        return {}
    if steps is None:
        unseen = unseen[unseen["steps"] == unseen.groupby(["context"])["steps"].transform("max")]
    else:
        unseen = unseen[unseen["steps"] == steps]
    ref = unseen[unseen["label"] == reference].set_index(["context", "scarcity"])[f"{metric}_mean"]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    rates = {}
    for label, g in unseen.groupby("label"):
        if label == reference:
            continue
        g = g.set_index(["context", "scarcity"])[f"{metric}_mean"]
        common = g.index.intersection(ref.index)
        if len(common):
            rates[label] = float(np.mean(sign * (g.loc[common] - ref.loc[common]) > 0))
    return rates


def order_labels(labels: Iterable[str], methods: dict[str, str]) -> list[str]:
    """Zero-filled ("no learning") first, then the registry's method order, then by name."""
    from ..methods import METHODS  # lazy for start-up speed: `mrbench table` needs no torch until here

    rank = {name: i for i, name in enumerate(["zero-filled", *[m for m in METHODS if m != "zero-filled"]])}
    return sorted(set(labels), key=lambda lab: (rank.get(methods.get(lab, ""), len(rank)), lab))


# ---------------------------------------------------------------------- summary CSV (baselines)

SUMMARY_COLUMNS = ["label", "method", "context", "seen", "scarcity", "steps", "train_slices", "n", "seeds"] + [
    f"{m}_{s}" for m in METRICS for s in ("mean", "std")
]


def write_summary_csv(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    """The long-form summary (one row per cell): what ``baselines/`` holds and ``--baselines`` reads."""

    atomic.write_text(path, summary.reindex(columns=SUMMARY_COLUMNS).to_csv(index=False, float_format="%.6g"))


def read_baselines(directory: str | os.PathLike) -> pd.DataFrame:
    """Every ``summary.csv`` below ``directory``, with a ``source`` column naming its folder."""
    root = Path(directory)
    if not root.is_dir():
        raise MrbenchError(f"--baselines {root}: not a directory")
    files = sorted(root.rglob("summary.csv"))
    if not files:
        raise MrbenchError(f"--baselines {root}: no summary.csv below it")
    frames = []
    for f in files:
        try:
            frame = pd.read_csv(f)
        except Exception as exc:
            raise MrbenchError(f"{f}: not a readable CSV ({exc})") from None
        missing = [c for c in ("label", "context", "seen", "scarcity", "steps", "psnr_mean") if c not in frame.columns]
        if missing:
            raise MrbenchError(
                f"{f}: missing column(s) {', '.join(missing)} (expected a summary.csv written by mrbench)"
            )
        frame["source"] = str(f.parent.relative_to(root)) if f.parent != root else root.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
