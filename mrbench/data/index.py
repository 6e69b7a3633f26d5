"""Volume index: for a fastMRI-format directory, per split and contrast, which volumes.

A data root holds ``train/``, ``val/`` and ``test/`` sub-directories of ``.h5``
files (the layout ``mrbench data synth`` writes and fastMRI uses). A directory
with ``.h5`` files and no split sub-directories is indexed as a single split
named after the directory, so ``mrbench data info path/to/singlecoil_val``
shows real fastMRI folders too (and says, with exit code 2, that a run needs
the three splits: :meth:`VolumeIndex.training_problems`, the checks a run applies).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MrbenchError
from .fastmri_format import VolumeMeta, check_values, read_meta
from .fastmri_format import FAMILIES
from .index_cache import IndexCache, relative_names

SPLITS = ("train", "val", "test")


@dataclass
class VolumeIndex:
    root: Path
    volumes: dict[str, list[VolumeMeta]] = field(default_factory=dict)  # split -> sorted
    cache: IndexCache | None = field(default=None, repr=False, compare=False)

    @property
    def splits(self) -> list[str]:
        return list(self.volumes)

    def contrasts(self, split: str | None = None) -> list[str]:
        splits = [split] if split else self.splits
        return sorted({v.contrast for s in splits for v in self.volumes.get(s, [])})

    def select(self, split: str, contrast: str) -> list[VolumeMeta]:
        """Volumes of one contrast in one split; an unknown split/contrast is an error."""
        if split not in self.volumes:
            raise MrbenchError(
                f"{self.root}: no '{split}' split (found: {', '.join(self.splits) or 'none'})"
            )
        vols = [v for v in self.volumes[split] if v.contrast == contrast]
        if not vols:
            raise MrbenchError(
                f"contrast {contrast!r} is not in {self.root / split} "
                f"(contrasts there: {', '.join(self.contrasts(split)) or 'none'})"
            )
        return vols

    def training_problems(self) -> list[str]:
        """Why ``mrbench run`` would refuse this directory (empty if it would not): a run needs
        the ``train``, ``val`` and ``test`` splits, and every contrast in all three. ``data info``
        reports these; :func:`~mrbench.data.assemble.assemble` raises the first."""
        missing = [s for s in SPLITS if s not in self.volumes]
        if missing:
            return [
                f"{self.root}: no {', '.join(missing)} split (mrbench run needs {self.root}/train, /val and /test "
                f"with .h5 files; found: {', '.join(self.splits) or 'none'})"
            ]
        problems = []
        for c in self.contrasts():
            absent = [s for s in SPLITS if c not in self.contrasts(s)]
            if absent:
                problems.append(f"{self.root}: contrast {c} has no volume in {', '.join(absent)} (it cannot be a task)")
        return problems

    def notes(self) -> list[str]:
        """What ``data info`` reports beside the problems: the sizes, when there are several
        (batches then stack slices of one size: docs/guide.md, "Mixed sizes")."""
        sizes = shape_kinds([v for vols in self.volumes.values() for v in vols])
        if len(sizes) > 1:
            return [f"{len(sizes)} sizes, batched by size: " + "; ".join(f"{k}: {n} volumes" for k, n in sorted(sizes.items()))]
        return []

    def require_splits(self) -> None:
        """Raise the first missing-split problem (the one a run cannot work around)."""
        problems = self.training_problems()
        if problems and "split" in problems[0]:
            raise MrbenchError(problems[0])

    def summary(self) -> list[dict]:
        """One row per (split, contrast): volumes, slices, k-space shapes, coils, targets."""
        rows = []
        for split, vols in self.volumes.items():
            groups: dict[str, list[VolumeMeta]] = defaultdict(list)
            for v in vols:
                groups[v.contrast].append(v)
            for contrast in sorted(groups):
                g = groups[contrast]
                rows.append(
                    {
                        "split": split,
                        "contrast": contrast,
                        "volumes": len(g),
                        "slices": sum(v.num_slices for v in g),
                        "kspace": _fmt_set(f"{v.kspace_shape[0]}x{v.kspace_shape[1]}" for v in g),
                        "coils": _fmt_set(str(v.num_coils) for v in g),
                        "target": _fmt_set(
                            f"{v.target_shape[0]}x{v.target_shape[1]}" if v.target_shape else "none"
                            for v in g
                        ),
                        "padded": sum(v.padding_left > 0 or v.padding_right < v.kspace_shape[1] for v in g),
                        "TR/TE/TI/flip B0 family": _fmt_set(acquisition_text(v.acquisition) for v in g),
                    }
                )
        return rows


def acquisition_text(acquisition: tuple) -> str:
    """``500/15/-/90 1.5T se`` from a header's (TR, TE, TI, flip, B0, family); ``-`` where
    absent, ``none`` when the header has none of them (metadata conditioning would refuse it)."""

    if all(a is None for a in acquisition):
        return "none"
    *seq, b0 = ("-" if a is None else f"{a:g}" for a in acquisition[:5])
    family = acquisition[5] if len(acquisition) > 5 else None
    return "/".join(seq) + ("" if b0 == "-" else f" {b0}T") + ("" if family is None else f" {FAMILIES[int(family)]}")


def shape_key(v) -> tuple:
    """What slices must share to be stacked in one batch: coils, k-space size and the target's
    (or, without a target, the header's reconstruction) size."""
    return (v.num_coils, tuple(v.kspace_shape), tuple(v.target_shape or v.recon_size))


def shape_kinds(volumes) -> dict[str, int]:
    """``"HxW k-space → hxw target (C coils)"`` → number of volumes of that kind (a volume
    without a target counts with its header's reconstruction size: the shape its slices take)."""
    out: dict[str, int] = {}
    for v in volumes:
        h, w = v.target_shape or v.recon_size
        t = f"{h}x{w}"
        key = f"{v.kspace_shape[0]}x{v.kspace_shape[1]} k-space → {t}, {v.num_coils} coil(s)"
        out[key] = out.get(key, 0) + 1
    return out


def _fmt_set(items) -> str:
    vals = sorted(set(items))
    return ",".join(vals) if len(vals) <= 3 else f"{vals[0]},…({len(vals)} kinds)"


def _h5_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".h5", ".hdf5") and p.is_file())


def scan(root: str | os.PathLike, *, check: bool = False, cache: bool = True) -> VolumeIndex:
    """Index a data directory; ``check=True`` also scans every value for NaN/Inf.

    Every structural problem (not HDF5, truncated, no ``kspace``, wrong rank or
    dtype, no ``acquisition``) raises :class:`MrbenchError` naming the file. Header fields
    come from the on-disk cache (:mod:`~mrbench.data.index_cache`) for files unchanged since
    it was written (``cache=False``: read every header).
    """
    root = Path(root)
    if not root.exists():
        raise MrbenchError(f"data directory {root} does not exist (create it with 'mrbench data synth')")
    if not root.is_dir():
        raise MrbenchError(f"{root} is not a directory")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {root.name or "data": root}
    index = VolumeIndex(root=root)
    store = IndexCache(root) if cache else None
    seen: list[Path] = []
    for split, directory in split_dirs.items():
        files = _h5_files(directory)
        seen += files
        if files:
            index.volumes[split] = [store.meta(f, read_meta) if store else read_meta(f) for f in files]
            if check:
                for f in files:
                    check_values(f)
    if store is not None:
        store.save(keep=relative_names(root, seen))
        index.cache = store
    if not index.volumes:
        where = ", ".join(str(d) for d in split_dirs.values())
        raise MrbenchError(f"no .h5 files in {where}")
    return index
