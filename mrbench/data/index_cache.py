"""The volume index cached on disk, so opening a large dataset a second time takes seconds.

Opening 5,000 fastMRI volumes means opening 5,000 HDF5 headers (and, for a run's manifest,
hashing part of every file). Both depend only on the file, so ``<root>/.mrbench-index.json``
keeps, per file (path relative to the root): its size and modification time (ns), the header
fields :class:`~mrbench.data.fastmri_format.VolumeMeta` holds, and its digest once computed. An
entry is used only while size and mtime are unchanged; a changed, added or removed file costs
one header read. The cache is a convenience, never a source of truth: an unreadable or
foreign cache is ignored and rebuilt, a read-only data directory simply goes uncached, and
writes are atomic (two runs of a sweep writing at once leave one complete cache).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .. import atomic
from ..errors import MrbenchError
from .fastmri_format import VolumeMeta

CACHE_NAME = ".mrbench-index.json"
VERSION = 3  # 2: VolumeMeta.acquisition; 3: its sequence family
_TUPLES = ("kspace_shape", "target_shape", "recon_size", "acquisition")


def _meta_to_dict(meta: VolumeMeta) -> dict:
    d = asdict(meta)
    d.pop("path")
    return d


def _meta_from_dict(d: dict, path: Path) -> VolumeMeta:
    d = dict(d)
    for k in _TUPLES:
        if d.get(k) is not None:
            d[k] = tuple(d[k])
    return VolumeMeta(path=path, **d)


class IndexCache:
    """Header fields and digests of a data root's files, keyed by (size, mtime)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / CACHE_NAME
        self.entries: dict[str, dict] = {}
        self.dirty = False
        self.hits = self.misses = 0
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") == VERSION and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError, AttributeError):
            pass  # no cache yet, or an unreadable one: rebuilt

    def _entry(self, path: Path) -> dict:
        """The file's entry, emptied if the file changed since it was written."""
        st = path.stat()
        rel = relative_name(self.root, path)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        e = self.entries.get(rel)
        if not e or e.get("size") != stamp["size"] or e.get("mtime_ns") != stamp["mtime_ns"]:
            e = self.entries[rel] = stamp
        return e

    def meta(self, path: Path, read: Callable[[Path], VolumeMeta]) -> VolumeMeta:
        e = self._entry(path)
        if "meta" in e:
            try:
                self.hits += 1
                return _meta_from_dict(e["meta"], path)
            except TypeError:  # fields changed between versions
                self.hits -= 1
        self.misses += 1
        meta = read(path)
        e["meta"] = _meta_to_dict(meta)
        self.dirty = True
        return meta

    def digest(self, path: Path, compute: Callable[[Path], str]) -> str:
        e = self._entry(path)
        if "digest" not in e:
            e["digest"] = compute(path)
            self.dirty = True
        return e["digest"]

    def save(self, keep: set[str] | None = None) -> None:
        """Write the cache if it changed (dropping entries not in ``keep``, the files that still
        exist); a data directory that cannot be written is left uncached."""
        if keep is not None:
            stale = set(self.entries) - keep
            if stale:
                for rel in stale:
                    del self.entries[rel]
                self.dirty = True
        if not self.dirty:
            return
        try:
            atomic.write_text(self.path, json.dumps({"version": VERSION, "files": self.entries}))
            self.dirty = False
        except (OSError, MrbenchError):  # a read-only or full data directory: no cache
            pass


def relative_name(root: Path, path: Path) -> str:
    """A file's cache key: its path relative to the data root (absolute if outside it)."""
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path.resolve())


def relative_names(root: Path, files: list[Path]) -> set[str]:
    return {relative_name(root, f) for f in files}
