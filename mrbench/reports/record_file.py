"""A experiment's per-volume records as one compact file: what ``baselines/<experiment>/``
publishes so that anyone can recompute its tables and ledger rows (docs/design.md §7).

``records.csv.gz``: gzip-compressed CSV, one row per run × context × adaptation step count
× test volume, the columns of :data:`~mrbench.reports.results.RECORD_COLUMNS` (label, seed,
context, level, steps, volume, PSNR / SSIM / NMSE, budget and its rule, parameters, loss,
the adaptation chosen on seen validation, the row's setting text), floats written to full
precision so that a table made from the file equals the one made from the run directories.
Diverged runs have one row each with ``status = "diverged"`` and no metrics: tables name
them, never average them. ``mrbench table --save-records FILE`` writes it; ``mrbench table``
reads it in place of run directories (a file, or a directory holding ``records.csv.gz``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import atomic
from ..errors import MrbenchError
from . import results as R

NAME = "records.csv.gz"


def write_records(runs: Sequence[R.Run], diverged: Sequence[R.Run], path: str | os.PathLike) -> pd.DataFrame:
    """Write the records of ``runs`` (and one row per diverged run) to ``path``, atomically."""
    df = R.records(runs).assign(status="done")
    lost = pd.DataFrame(
        [
            {
                "label": r.label,
                "method": r.method,
                "run": r.name,
                "experiment": r.experiment,
                "scarcity": r.scarcity,
                "seed": r.seed,
                "status": "diverged",
            }
            for r in diverged
        ]
    )
    out = pd.concat([df, lost], ignore_index=True) if len(lost) else df
    buf = io.BytesIO()
    out.reindex(columns=[*R.RECORD_COLUMNS, "status"]).to_csv(
        buf, index=False, compression={"method": "gzip", "mtime": 0}
    )
    atomic.write_bytes(path, buf.getvalue())
    return out


def records_path(path: str | os.PathLike) -> Path | None:
    """The records file ``path`` names: the file itself, or ``records.csv.gz`` in a directory
    that holds no runs; None for run or experiment directories."""
    p = Path(path)
    if p.is_file() and p.name.endswith(".csv.gz"):
        return p
    if p.is_dir() and (p / NAME).is_file() and not any(p.rglob("config.json")):
        return p / NAME
    return None


def read_records(paths: Sequence[str | os.PathLike]) -> tuple[pd.DataFrame, list[R.Run]]:
    """The finished records and the diverged runs (as :class:`~mrbench.reports.results.Run`
    stand-ins: name, label, scarcity) of one or more records files."""
    frames = []
    for path in paths:
        p = records_path(path)
        if p is None:
            raise MrbenchError(f"{path}: not a records file (expected {NAME}, or a directory holding one)")
        try:
            frame = pd.read_csv(
                p,
                compression="gzip",
                keep_default_na=True,
                dtype={"volume": str, "adaptation": str, "setting": str, "loss": str, "kspace_source": str},
            )
        except Exception as exc:  # a truncated or foreign file: one line, not a traceback
            raise MrbenchError(f"{p}: not a readable records file ({exc})") from None
        for col in R.OPTIONAL_COLUMNS:
            if col not in frame.columns:
                frame[col] = ""
        missing = [c for c in R.RECORD_COLUMNS if c not in frame.columns]
        if missing:
            raise MrbenchError(
                f"{p}: missing column(s) {', '.join(missing)} (expected a records file written by mrbench)"
            )
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    status = df.pop("status") if "status" in df else pd.Series("done", index=df.index)
    lost = df[status == "diverged"]
    df = df[status != "diverged"].reset_index(drop=True)
    for col in ("adaptation", "setting", "loss", "mask", "budget_rule", "kspace_source"):
        df[col] = df[col].fillna("")
    df["seen"] = df["seen"].astype(bool)
    df["scarce"] = df["scarce"].astype(bool)
    for col in ("scarcity", "seed", "steps", "train_slices", "budget", "parameters"):
        df[col] = df[col].astype(int)
    diverged = [
        R.Run(
            Path(r.run),
            {
                "method": r.method,
                "scarcity": int(r.scarcity),
                "train": {"seed": int(r.seed)},
                "run": {"experiment": r.experiment},
            },
        )
        for r in lost.itertuples(index=False)
    ]
    return df, diverged


__all__ = ["NAME", "read_records", "records_path", "write_records"]
