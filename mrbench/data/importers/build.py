"""Write an imported dataset: discover, check, split by subject, load, write — atomically.

Everything is written into a hidden staging folder beside ``--out`` and renamed onto it only
when every volume is written, so a failed import leaves nothing (docs/design.md §7). The
dataset's ``dataset.json`` records the source, the options, the split and, per volume, its
source files, shape and ``kspace_source``; subjects missing a contrast are listed there and
printed, never dropped silently. Subjects whose scans are undersampled (no target to score) all
go to train, where the self-supervised losses use them; the others are split by ``--split``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ... import atomic
from ...errors import MrbenchError
from ..fastmri_format import ACQUISITION_FIELDS, write_volume
from . import IMPORTERS, guess_format
from .base import ImportOptions, Source
from .layout import Layout, split_subjects


@dataclass
class ImportReport:
    out: Path
    format: str
    volumes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_params(args: tuple[str, ...]) -> dict:
    """``--params CONTRAST=tr:te:ti:flip[:B0]`` (ms, ms, ms, degrees, tesla; empty = unknown)."""
    out = {}
    for arg in args:
        name, sep, values = arg.partition("=")
        parts = values.split(":")
        if not sep or not name or not 4 <= len(parts) <= 5:
            raise MrbenchError(f"--params: expected CONTRAST=tr:te:ti:flip[:B0], got {arg!r}")
        numbers = []
        for key, text in zip(ACQUISITION_FIELDS, parts):
            try:
                numbers.append(float(text) if text.strip() else None)
            except ValueError:
                raise MrbenchError(f"--params {arg!r}: {key} must be a number (or empty), got {text!r}") from None
        out[name] = dict(zip(ACQUISITION_FIELDS, numbers))
    return out


def _files(src: Path) -> tuple[Path, list[Path]]:
    if src.is_file():
        return src.parent, [src]
    if not src.is_dir():
        raise MrbenchError(f"{src}: no such file or folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MrbenchError(f"{src}: the folder is empty")
    return src, files


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]+", "-", text).strip("-") or "x"


def plan(src: Path, fmt: str | None, layout: Layout, options: ImportOptions):
    """The importer and its sources, checked: the first half of :func:`import_dataset`."""
    root, files = _files(Path(src))
    fmt = fmt or guess_format(files)
    if fmt is None:
        raise MrbenchError(f"{src}: no file looks like NIfTI, DICOM, ISMRMRD or twix; pass --format")
    importer = IMPORTERS.lookup(fmt, "--format")(options)
    importer.require()
    sources = importer.discover(root, files, layout)
    found = {s.contrast for s in sources}
    unknown = [name for name in layout.contrasts if name not in found]
    if unknown and layout.contrasts:
        raise MrbenchError(
            f"--contrast {unknown[0]}={layout.contrasts[unknown[0]]}: no {fmt} volume under {src} matches it "
            f"(found: {', '.join(sorted(found)) or 'none'})"
        )
    if not sources:
        how = f" matching --pattern {layout.pattern!r}" if layout.pattern else ""
        raise MrbenchError(f"{src}: no {fmt} volumes found{how}")
    unknown = [name for name in options.params if name not in found]
    if unknown:
        raise MrbenchError(f"--params {unknown[0]}=…: no contrast {unknown[0]!r} in the data (found: {', '.join(sorted(found))})")
    seen: dict[tuple, Source] = {}
    for s in sources:
        if (s.subject, s.contrast) in seen:
            raise MrbenchError(
                f"{s.paths[0]}: subject {s.subject!r} has contrast {s.contrast} twice (also {seen[(s.subject, s.contrast)].paths[0]}); "
                "make --pattern or --contrast tell them apart"
            )
        seen[(s.subject, s.contrast)] = s
    return fmt, importer, sources


def import_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    layout: Layout | None = None,
    options: ImportOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``src`` into a new fastMRI-layout dataset at ``out`` (module docstring)."""
    layout = layout or Layout()
    options = options or ImportOptions()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MrbenchError(f"--out {out}: exists and is not empty; choose another folder or remove it")
    fmt, importer, sources = plan(Path(src), fmt, layout, options)
    report = ImportReport(out=out, format=fmt)
    by_subject: dict[str, list[Source]] = defaultdict(list)
    for s in sources:
        by_subject[s.subject].append(s)
    contrasts = sorted({s.contrast for s in sources})
    for subject, items in sorted(by_subject.items()):
        missing = sorted(set(contrasts) - {s.contrast for s in items})
        if missing:
            report.notes.append(f"subject {subject} has no {', '.join(missing)} (imported with {', '.join(sorted(s.contrast for s in items))})")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        scored: dict[str, bool] = {}  # subject → every volume has a target (can be validated / tested on)
        for subject, items in sorted(by_subject.items()):
            scored[subject] = _write_subject(importer, subject, items, staging / "pending", fmt, options, report)
            if progress:
                progress(len(items))
        # the split: subjects with targets by --split; undersampled-only subjects train (no target to score)
        split = split_subjects([s for s, ok in scored.items() if ok], options.split, options.seed) if any(scored.values()) else {}
        unscored = sorted(s for s, ok in scored.items() if not ok)
        split.update({s: "train" for s in unscored})
        if unscored:
            report.notes.append(f"{len(unscored)} subject(s) with undersampled scans only (no target) put in train: {', '.join(unscored)}")
        for v in report.volumes:
            v["split"] = split[v["subject"]]
            name = v.pop("name")
            v["file"] = f"{v['split']}/{name}"
            (staging / v["split"]).mkdir(exist_ok=True)
            os.replace(staging / "pending" / name, staging / v["file"])
        (staging / "pending").rmdir()
        report.notes.extend(importer.notes)
        atomic.write_json(staging / "dataset.json", {
            "generator": "mrbench data import",
            "format": fmt,
            "source": str(Path(src).resolve()),
            "layout": {"pattern": layout.pattern, "contrasts": layout.contrasts},
            "options": options.record(),
            "split": split,
            "volumes": report.volumes,
            "notes": report.notes,
        })
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _write_subject(importer, subject: str, items: list[Source], folder: Path, fmt: str, options: ImportOptions,
                   report: ImportReport) -> bool:
    """Load and write every contrast of one subject into ``folder``; True when all have targets.
    Contrasts of one subject must share slices and matrix (paired multi-contrast data)."""
    shapes, scored = {}, True
    for source in sorted(items, key=lambda s: s.contrast):
        vol = importer.load(source)
        shapes[source.contrast] = (tuple(vol.kspace.shape), source.paths[0])
        params = {**vol.params, **options.params.get(source.contrast, {})}
        params = {k: v for k, v in params.items() if v is not None}
        name = f"{_safe(source.contrast)}_{_safe(subject)}.h5"
        write_volume(
            folder / name, vol.kspace, vol.target, acquisition=source.contrast, patient_id=subject,
            extra_attrs={"generator": "mrbench data import", "source_format": fmt, **vol.attrs},
            header_params=params, mask=vol.mask, num_low_frequencies=vol.num_low_frequencies,
            recon_shape=vol.recon_shape, limits=vol.limits,
        )
        scored &= vol.target is not None
        report.volumes.append({
            "name": name, "subject": subject, "contrast": source.contrast, "sources": [str(p) for p in source.paths],
            "kspace": list(vol.kspace.shape), "target": vol.target is not None,
            "kspace_source": vol.attrs.get("kspace_source"), "params": params,
        })
    slices = {shape[0] for shape, _ in shapes.values()}
    matrices = {shape[-2:] for shape, _ in shapes.values()}
    if len(slices) > 1 or len(matrices) > 1:
        detail = ", ".join(f"{c} {'×'.join(map(str, s))} ({p.name})" for c, (s, p) in sorted(shapes.items()))
        raise MrbenchError(
            f"subject {subject}: its contrasts differ in shape ({detail}); pass --size and --slices "
            "so every contrast has the same slices"
        )
    return scored
