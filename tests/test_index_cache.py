"""The on-disk index cache (issue 14): a second scan reads no header, a changed file is
re-read alone, a broken cache or a read-only directory costs nothing but time, and a run's
file digests are computed once per file version."""

from __future__ import annotations

import json
import os

import pytest
from conftest import write_tiny_root

import mrbench.data.index as index_mod
from mrbench.data.index import scan
from mrbench.data.index_cache import CACHE_NAME, VERSION, IndexCache


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "d"
    write_tiny_root(r, contrasts=("AXT1", "AXT2"), per_split={"train": 3, "val": 1, "test": 1}, slices=2)
    return r


def counting(monkeypatch):
    calls = []
    real = index_mod.read_meta

    def read(path):
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(index_mod, "read_meta", read)
    return calls


def test_second_scan_reads_no_header_and_gives_the_same_index(root, monkeypatch):
    calls = counting(monkeypatch)
    first = scan(root)
    assert len(calls) == 10 and (root / CACHE_NAME).exists()
    calls.clear()
    second = scan(root)
    assert calls == [] and second.volumes == first.volumes
    assert scan(root, cache=False).volumes == first.volumes and len(calls) == 10


def test_a_changed_file_is_read_again_alone_and_a_removed_one_is_dropped(root, monkeypatch):
    scan(root)
    calls = counting(monkeypatch)
    victim = sorted((root / "train").glob("*.h5"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    gone = sorted((root / "val").glob("*.h5"))[0]
    gone.unlink()
    idx = scan(root)
    assert calls == [victim.name]
    files = json.loads((root / CACHE_NAME).read_text())["files"]
    assert len(files) == 9 and not any(k.endswith(gone.name) for k in files)
    assert gone.name not in {v.name for vols in idx.volumes.values() for v in vols}


def test_a_broken_cache_is_ignored_and_rebuilt(root, monkeypatch):
    (root / CACHE_NAME).write_text("{ not json")
    calls = counting(monkeypatch)
    scan(root)
    assert len(calls) == 10 and json.loads((root / CACHE_NAME).read_text())["version"] == VERSION


def test_a_directory_that_cannot_be_written_is_indexed_without_a_cache(root, monkeypatch):
    from mrbench.data import index_cache
    from mrbench.errors import StorageError

    def refuse(path, text):
        raise StorageError(f"{path}: read-only file system")

    monkeypatch.setattr(index_cache.atomic, "write_text", refuse)
    assert scan(root).volumes and not (root / CACHE_NAME).exists()


def test_digests_are_computed_once_per_file_version(root):
    f = sorted((root / "train").glob("*.h5"))[0]
    calls = []

    def compute(path):
        calls.append(path)
        return "d" + str(len(calls))

    cache = IndexCache(root)
    assert cache.digest(f, compute) == "d1" and cache.digest(f, compute) == "d1"
    cache.save()
    assert IndexCache(root).digest(f, compute) == "d1" and len(calls) == 1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert IndexCache(root).digest(f, compute) == "d2"
