"""The run directory (docs/design.md §7).

```
<out>/<experiment>/<run>/
  config.json  manifest.json  checkpoints/{last,best}.pt  tb/  metrics.json
  previews.npz  DONE
```

``previews.npz`` holds one test slice per context (target, zero-filled,
reconstruction) for the report's reconstruction viewer, so ``mrbench compare``
never has to rebuild a network.

Every file is written under a temporary name and renamed into place. ``DONE``
is written last; a run without it is incomplete and is resumed or redone.
Checkpoints are loaded with ``torch.load(weights_only=True)``: they hold only
tensors and plain containers (RNG states of numpy are stored as JSON text).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from . import atomic
from .errors import MrbenchError, RunLocked, StorageError, first_line


def read_json(path: str | os.PathLike, missing_ok: bool = False) -> Any:
    """The one JSON reader of run files: the parsed value; None for a missing file when
    ``missing_ok``; otherwise a one-line MrbenchError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise MrbenchError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MrbenchError(f"{path} is not valid JSON ({exc})") from None


class RunStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def previews_path(self) -> Path:
        return self.path / "previews.npz"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def done_path(self) -> Path:
        return self.path / "DONE"

    def checkpoint_path(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    # state
    def exists(self) -> bool:
        return self.config_path.exists()

    def is_done(self) -> bool:
        return self.done_path.exists()

    @property
    def diverged_path(self) -> Path:
        return self.path / "DIVERGED"

    @property
    def retries_path(self) -> Path:
        return self.path / "retries.json"

    def is_diverged(self) -> bool:
        return self.diverged_path.exists()

    def mark_diverged(self) -> None:
        atomic.write_text(self.diverged_path, _now() + "\n")

    def status(self) -> str:
        if self.is_done():
            return "done"
        if self.is_diverged():
            return "diverged"
        if self.checkpoint_path("last").exists():
            return "incomplete"
        return "new" if not self.exists() else "started"

    # json files
    def write_json(self, name: str, obj: Any) -> None:
        atomic.write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            raise MrbenchError(f"{p} does not exist (is {self.path} a run directory?)")
        return read_json(p)

    def write_previews(self, previews: list[dict]) -> None:
        """``previews``: dicts with context, steps, volume, slice and target/zero_filled/pred
        (h, w) arrays; stored as stacked arrays (no pickles, loadable with allow_pickle=False)."""
        import numpy as np

        arrays = {
            "context": np.array([p["context"] for p in previews], dtype=str),
            "volume": np.array([p["volume"] for p in previews], dtype=str),
            "steps": np.array([p["steps"] for p in previews], dtype=np.int64),
            "slice": np.array([p["slice"] for p in previews], dtype=np.int64),
        }
        for key in ("target", "zero_filled", "pred"):
            arrays[key] = np.stack([np.asarray(p[key], dtype=np.float32) for p in previews])
        with atomic.atomic_path(self.previews_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

    def read_previews(self) -> list[dict]:
        """The entries written by :meth:`write_previews`; [] when the run has none."""
        import numpy as np

        if not self.previews_path.exists():
            return []
        try:
            with np.load(self.previews_path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:
            raise MrbenchError(f"{self.previews_path} is corrupt ({type(exc).__name__}: {exc})") from None
        keys = ("context", "volume", "steps", "slice", "target", "zero_filled", "pred")
        if any(k not in data for k in keys):
            raise MrbenchError(f"{self.previews_path} lacks one of {', '.join(keys)}")
        out = []
        for i in range(len(data["context"])):
            entry = {k: data[k][i] for k in keys}
            for k in ("context", "volume"):
                entry[k] = str(entry[k])
            for k in ("steps", "slice"):
                entry[k] = int(entry[k])
            out.append(entry)
        return out

    def mark_done(self) -> None:
        atomic.write_text(self.done_path, _now() + "\n")

    def clear_done(self) -> None:
        self.done_path.unlink(missing_ok=True)
        self.diverged_path.unlink(missing_ok=True)
        self.retries_path.unlink(missing_ok=True)

    # checkpoints
    def save_checkpoint(self, name: str, state: dict) -> None:
        """Atomically; the replaced ``last.pt`` is kept as ``last.prev.pt``, the fallback when a
        later ``last.pt`` turns out corrupt. torch.save's own write errors (a full disk shows as
        "basic_ios::clear: iostream error") become a one-line :class:`StorageError`."""
        path = self.checkpoint_path(name)
        with atomic.atomic_path(path) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as exc:
                raise StorageError(atomic.storage_message(path, exc)) from None
            if name == "last" and path.exists():
                os.replace(path, self.checkpoint_path("last.prev"))

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict:
        """The checkpoint; a corrupt ``last.pt`` falls back to ``last.prev.pt`` (one warning line
        on stderr), anything else corrupt is a one-line error naming the file and the way on."""
        try:
            return self._load(name, map_location)
        except MrbenchError as exc:
            prev = self.checkpoint_path("last.prev")
            if name != "last" or not prev.exists():
                raise
            state = self._load("last.prev", map_location)
            sys.stderr.write(f"warning: {first_line(exc)}; resuming from the previous checkpoint {prev}\n")
            return state

    def _load(self, name: str, map_location) -> dict:
        p = self.checkpoint_path(name)
        if not p.exists():
            raise MrbenchError(f"{p} does not exist")
        try:
            with warnings.catch_warnings():  # torch warns about foreign pickle protocols before failing
                warnings.simplefilter("ignore")
                return torch.load(p, map_location=map_location, weights_only=True)
        except Exception as exc:  # corrupt/truncated/foreign pickles all land here
            msg = first_line(exc)
            raise MrbenchError(
                f"checkpoint {p} is corrupt or not an mrbench checkpoint ({msg}); "
                f"start the run over with --overwrite (or delete {p.parent})"
            ) from None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_digest(path: Path, full_limit: int = 64 * 2**20) -> str:
    """SHA-256 of the file; files over ``full_limit`` bytes hash size + first and last MiB.

    Hashing hundreds of GB of real fastMRI data at every run would dominate
    small runs; the partial hash still detects a changed or swapped file.
    """
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
            return h.hexdigest()
        h.update(str(size).encode())
        h.update(f.read(2**20))
        f.seek(-(2**20), os.SEEK_END)
        h.update(f.read())
    return "partial:" + h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU as float32 kernels see it: its model name, family/model/stepping
    (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows) and the instruction set torch
    dispatches to. Kernels sum in another order on another CPU, so bitwise comparisons name it;
    a virtual machine may call two generations by one name ("AMD EPYC" with and without
    AVX-512), hence the numbers and the capability beside the name."""
    import torch

    name, ids = platform.processor() or platform.machine(), []
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        name = fields.get("model name", name)
        ids = [f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    except OSError:
        pass
    return f"{name} ({', '.join([*ids, torch.backends.cpu.get_cpu_capability()])})"


def environment() -> dict:
    """Versions, machine and threads, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("mrbench", "torch", "numpy", "h5py", "scipy"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


now = _now


#: set by a sweep to the run directory whose lock it holds for the child it starts
LOCK_HELD_ENV = "MRBENCH_RUN_LOCK_HELD"


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``<experiment>/.<run>.lock`` (``flock``, non-blocking) while a process trains the
    run: a second process — another sweep on the same experiment, a re-submitted Slurm task —
    gets :class:`RunLocked` instead of training the same cell twice in one directory. The OS
    releases the lock when the holder exits or crashes. A sweep takes the lock itself before it
    starts the cell's process (so a cell another sweep is training is skipped without
    touching its log) and tells the child through :data:`LOCK_HELD_ENV`."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    run_dir = Path(run_dir)
    if os.environ.get(LOCK_HELD_ENV) == str(run_dir):  # a sweep holds it for this child process
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f".{run_dir.name}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RunLocked(f"{run_dir} is being trained by another process (pid {holder}); skipped") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
