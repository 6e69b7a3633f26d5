"""Shared phases: a training phase that is byte-for-byte the same in several cells of an
experiment is trained once and loaded by the others (issue 31: no identical work twice).

Which phases repeat: STL trains one network per task, one after another; its abundant task's
network sees the same slices at every scarcity level (only the scarce task's data shrink), so
at levels 1, 2, … the first phase repeats level 0's exactly. Transfer's pre-training on the
abundant task(s) repeats the same way. A phase's outcome — every network's weights after it,
the random states (torch's, the mask generator's), the validation history and the slices
used — is a pure function of

* the run's configuration without its scarcity level, its name and evaluation options
  (resume identity, :func:`mrbench.runner._identity`: operational keys left out), and
* for this phase and every phase before it: name, budget, learning rate, modules, sampling
  rule and, per task it trains on, the exact training slice list, the task's position in the
  training set and its validation volumes.

The chain of those is the phase's *key* (SHA-256); its outcome is the between-phase
checkpoint the engine writes anyway, kept as ``<experiment>/shared/<key>.pt``. A cell about to
start a phase from scratch takes ``<key>.lock`` (``flock``, blocking: a cell that needs a
phase another cell is training waits for it, then loads it), loads the outcome if one exists,
else trains the phase and publishes it (atomically). A process killed mid-phase releases the
lock; its own run resumes the phase from its own checkpoint, and a waiting cell trains it
itself. Only methods that opt in (``Method.shares_phases``) share, never under data-parallel
training, and ``train.share_phases = false`` turns it off. ``tests/test_shared_phases.py``
checks that a loaded phase gives the same metrics and weights as a trained one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import atomic
from .data.scarcity import slice_list, slice_list_hash

SHARED_DIR = "shared"


def phase_keys(identity: dict, phases: Sequence, train, val_tasks, train_tasks) -> list[str]:
    """The content key of each phase's outcome (module docstring): ``identity`` is the run's
    resume identity, ``train`` its training SliceDataset, ``val_tasks`` / ``train_tasks`` the
    experiment's validation and training TaskData."""
    base = {k: v for k, v in identity.items() if k not in ("scarcity", "run", "eval")}
    h = hashlib.sha256(json.dumps(base, sort_keys=True, default=str).encode()).hexdigest()
    keys = []
    for phase in phases:
        tasks = []
        for t in phase.tasks:
            items = train.task_items(t)
            tasks.append(
                {
                    "slices": slice_list_hash(slice_list(train_tasks[t].volumes)),
                    "first_item": int(items[0]) if len(items) else -1,
                    "val": sorted(str(getattr(v, "name", v)) for v in val_tasks[t].volumes),
                }
            )
        part = {
            "name": phase.name,
            "budget": phase.budget,
            "lr": phase.lr,
            "modules": list(phase.modules),
            "sampling": phase.sampling,
            "tasks": tasks,
        }
        h = hashlib.sha256((h + json.dumps(part, sort_keys=True, default=str)).encode()).hexdigest()
        keys.append(h)
    return keys


class SharedPhases:
    """The experiment's store of phase outcomes, ``<experiment>/shared/``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``<key>.lock`` (blocking); no lock where ``fcntl`` is missing."""
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{key}.lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def publish(self, key: str, checkpoint: Path) -> None:
        """Keep a copy of the between-phase checkpoint as the phase's outcome (atomic)."""
        with atomic.atomic_path(self.path(key)) as tmp:
            shutil.copyfile(checkpoint, tmp)


__all__ = ["SHARED_DIR", "SharedPhases", "phase_keys"]
