"""``mrbench data synth``: write the built-in ``synth-brain`` dataset.

Subjects are split into train/val/test (one sixth each for val and test, at
least one), and every subject is simulated once for all contrasts (the same
anatomy under every sequence, as in a multi-contrast protocol). One
fastMRI-format file is written per (subject, contrast). The dataset is a pure
function of its parameters: the same parameters and seed give identical files,
and ``dataset.json`` records them so a second call with the same parameters is a
no-op (``mrbench demo`` relies on that).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ... import atomic
from ...errors import MrbenchError
from ..fastmri_format import write_volume
from .physics import FIELD_STRENGTH_T, Sequence, resolve_contrast
from .subject import simulate_subject

DEFAULT_CONTRASTS = ("AXT1", "AXT2", "AXPD", "AXFLAIR")


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines the generated files."""

    contrasts: tuple = DEFAULT_CONTRASTS  # names or dict specs (see physics.resolve_contrast)
    subjects: int = 12
    size: int = 128
    slices: int = 24
    coils: int = 1
    snr: float = 30.0
    seed: int = 0
    source: str = "mni"

    def __post_init__(self):
        if self.subjects < 3:
            raise MrbenchError(f"--subjects must be ≥ 3 (train, val and test need one each), got {self.subjects}")
        if not 16 <= self.size <= 1024:
            raise MrbenchError(f"--size must be in [16, 1024], got {self.size}")
        if not 1 <= self.slices <= 256:
            raise MrbenchError(f"--slices must be in [1, 256], got {self.slices}")
        if not 1 <= self.coils <= 64:
            raise MrbenchError(f"--coils must be in [1, 64], got {self.coils}")
        if not self.snr > 0:
            raise MrbenchError(f"--snr must be > 0, got {self.snr}")
        if self.source not in ("mni", "phantom"):
            raise MrbenchError(f"--source must be 'mni' or 'phantom', got {self.source!r}")
        if not self.contrasts:
            raise MrbenchError("--contrasts is empty")
        names = [resolve_contrast(c)[0] for c in self.contrasts]
        if len(set(names)) != len(names):
            raise MrbenchError(f"--contrasts names a contrast twice: {', '.join(names)}")

    def sequences(self) -> dict[str, Sequence]:
        return dict(resolve_contrast(c) for c in self.contrasts)

    def splits(self) -> list[str]:
        """Split of each subject: the last sixths are val and test."""
        n_hold = max(1, self.subjects // 6)
        n_train = self.subjects - 2 * n_hold
        return ["train"] * n_train + ["val"] * n_hold + ["test"] * n_hold

    def subject_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])

    def record(self) -> dict:
        d = asdict(self)
        d["contrasts"] = [c if isinstance(c, str) else dict(c) for c in self.contrasts]
        d["sequences"] = {k: asdict(v) for k, v in self.sequences().items()}
        d["format"] = 2  # 2: acquisition numbers in the ismrmrd_header (older data is rewritten)
        return d


#: ISMRMRD ``sequence_type`` of each synthetic sequence kind.
SEQUENCE_TYPES = {"se": "SpinEcho", "ir": "InversionRecovery", "gre": "GradientEcho"}


def header_parameters(seq: Sequence) -> dict:
    """The ``ismrmrd_header`` numbers of a synthetic contrast, as fastMRI's files carry them:
    TR, TE, TI (inversion recovery only) in ms, the flip angle (90° for the spin-echo
    families), the field strength the tissue values are for (:data:`FIELD_STRENGTH_T`) and
    the sequence type."""
    return {
        "TR": seq.tr,
        "TE": seq.te,
        "TI": seq.ti,
        "flipAngle_deg": seq.flip if seq.flip is not None else 90.0,
        "systemFieldStrength_T": FIELD_STRENGTH_T,
        "sequence_type": SEQUENCE_TYPES[seq.kind],
    }


def _file_name(contrast: str, subject: int) -> str:
    return f"synth_{contrast}_{subject:03d}.h5"


def _write_subject(spec: SynthSpec, out: Path, i: int, split: str) -> list[str]:
    sequences = spec.sequences()
    volumes = simulate_subject(
        sequences,
        seed=spec.subject_seed(i),
        size=spec.size,
        n_slices=spec.slices,
        coils=spec.coils,
        snr=spec.snr,
        source=spec.source,
    )
    written = []
    for contrast, vol in volumes.items():
        seq = sequences[contrast]
        kspace = vol.kspace
        path = out / split / _file_name(contrast, i)
        write_volume(
            path,
            kspace,
            vol.target,
            acquisition=contrast,
            patient_id=f"synth-s{spec.seed}-{i:03d}",
            extra_attrs={
                "generator": "mrbench synth-brain",
                "sequence": json.dumps(asdict(seq)),
                "snr": spec.snr,
            },
            header_params=header_parameters(seq),
        )
        written.append(str(path))
    return written


def synthesize(
    spec: SynthSpec,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Write the dataset; return False if an identical one is already there."""
    out = Path(out)
    record_path = out / "dataset.json"
    if is_up_to_date(spec, out):
        return False
    if record_path.exists():
        if not overwrite:
            raise MrbenchError(
                f"{out} already holds a synthetic dataset with other parameters; "
                "pass --overwrite or choose another --out"
            )
    elif out.exists() and any(out.rglob("*.h5")) and not overwrite:
        raise MrbenchError(f"{out} already holds .h5 files; pass --overwrite or choose another --out")
    if overwrite:
        for old_file in out.glob("*/synth_*.h5"):
            old_file.unlink()
        record_path.unlink(missing_ok=True)
    splits = spec.splits()
    if jobs > 1:
        # spawn, not fork: a forked child of a process that already ran torch ops can deadlock
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_write_subject, spec, out, i, s) for i, s in enumerate(splits)]
            for f in futures:
                f.result()
                if progress:
                    progress(1)
    else:
        for i, s in enumerate(splits):
            _write_subject(spec, out, i, s)
            if progress:
                progress(1)
    atomic.write_json(record_path, spec.record())  # last: marks the dataset complete
    return True


def is_up_to_date(spec: SynthSpec, out: str | os.PathLike) -> bool:
    """True when ``out`` holds the complete dataset of exactly these parameters."""
    out = Path(out)
    try:
        old = json.loads((out / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    names = spec.sequences()
    return old == spec.record() and all(
        (out / split / _file_name(c, i)).exists() for i, split in enumerate(spec.splits()) for c in names
    )
