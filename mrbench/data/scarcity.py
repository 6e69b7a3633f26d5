"""Scarcity levels: nested, seeded subsets of a task's training volumes.

Level N keeps ``floor(n / 2^N)`` of the ``n`` training volumes (docs/design.md §1). The
volumes are put in one seeded order per (task, seed) and level N takes a prefix of
it, so level N+1 ⊂ level N and two processes computing the same level get the same
list. Rather than ``max(1, floor(n / 2^N))``, mrbench refuses a level where the
floor is 0 (the level "leaves no volume") instead of silently repeating the
one-volume level, so every accepted level really halves the data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence, TypeVar

import numpy as np

from ..errors import MrbenchError
from .fastmri_format import VolumeMeta

T = TypeVar("T")


def max_level(n: int) -> int:
    """The highest level that keeps at least one of ``n`` volumes."""
    return int(np.floor(np.log2(n))) if n > 0 else -1


def scarcity_subset(volumes: Sequence[VolumeMeta], level: int, seed: int, task: str) -> list[VolumeMeta]:
    """The training volumes of ``task`` kept at scarcity ``level`` (sorted by file name)."""
    if level < 0:
        raise MrbenchError(f"scarcity level must be ≥ 0, got {level}")
    vols = sorted(volumes, key=lambda v: v.name)
    n = len(vols)
    keep = n // (2**level)
    if keep < 1:
        raise MrbenchError(
            f"scarcity level {level} leaves no training volume of {task} "
            f"({n} volume{'s' if n != 1 else ''}; the highest level is {max_level(n)})"
        )
    digest = hashlib.sha256(f"{seed}|{task}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(n)
    return sorted((vols[i] for i in order[:keep]), key=lambda v: v.name)


def slice_list(volumes: Sequence[VolumeMeta]) -> list[tuple[str, int]]:
    """Every (file name, slice index) of the volumes, in a canonical order."""
    return sorted((v.name, s) for v in volumes for s in range(v.num_slices))


def slice_list_hash(slices: Sequence[tuple[str, int]]) -> str:
    """SHA-256 of the canonical JSON of a slice list (recorded in run manifests)."""
    text = json.dumps([list(s) for s in sorted(slices)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
