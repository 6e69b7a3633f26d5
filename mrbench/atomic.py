"""Atomic writes: a temporary file in the target directory, then ``os.replace``.

A crash mid-write never leaves a half-written file under the final name, and an
existing file is only replaced once its successor is complete (docs/design.md §7).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StorageError, first_line


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_mode())  # mkstemp makes 0600; written files get the usual umask mode
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise StorageError(storage_message(path, exc)) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def storage_message(path: Path, exc: BaseException) -> str:
    """``cannot write PATH: REASON (N MiB free on its file system); ...`` — one line."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free on its file system"
    except OSError:
        free = "free space unknown"
    reason = getattr(exc, "strerror", None) or first_line(exc)
    return f"cannot write {path}: {reason} ({free}); the previous file is intact — free space and rerun with --resume"


@functools.lru_cache(maxsize=1)
def _default_mode() -> int:
    """0666 minus the process umask (read once: os.umask can only be read by setting it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and paths appear in metrics and manifests
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
