"""What every importer shares: the options, one source volume, one imported volume.

``mrbench data import`` (docs/design.md §3.4) turns files of another format into the
fastMRI layout mrbench trains on. An importer finds the volumes under the source folder
(:meth:`Importer.discover`, one :class:`Source` per (subject, contrast)) and loads each into
an :class:`Imported` volume; :mod:`.build` splits the subjects and writes the files.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import MrbenchError

#: what ``attrs["kspace_source"]`` says of a volume whose k-space was made from a magnitude image
SIMULATED = "simulated from magnitude"
#: ... and of one that holds the scanner's own samples
MEASURED = "measured"


@dataclass(frozen=True)
class ImportOptions:
    """The command line of ``mrbench data import`` minus the paths (recorded in dataset.json)."""

    size: int = 0  # magnitude sources: the square matrix written; 0 = the source's own (padded square)
    slices: int = 0  # slices per volume, from the volume's centre; 0 = all
    plane: str = "axial"  # magnitude sources: the slice orientation
    fit: str = "resample"  # magnitude sources: resample | crop to `size`
    frame: int | None = None  # the frame of a 4-D volume
    phase: bool = False  # magnitude sources: a smooth synthetic phase
    coils: int = 0  # magnitude: simulated coils (0/1 = single-coil); raw: SVD coil compression to N (0 = all)
    snr: float | None = None  # magnitude sources: complex noise at this SNR (None = none added)
    seed: int = 0  # the split and the simulation draws
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    params: dict = field(default_factory=dict)  # contrast → {TR, TE, TI, flipAngle_deg[, systemFieldStrength_T]}

    def __post_init__(self):
        if self.size and not 8 <= self.size <= 1024:
            raise MrbenchError(f"--size must be 0 (the source's) or in [8, 1024], got {self.size}")
        if self.slices < 0:
            raise MrbenchError(f"--slices must be ≥ 0 (0 = all), got {self.slices}")
        if self.plane not in PLANES:
            raise MrbenchError(f"--plane: unknown plane {self.plane!r}; valid: {', '.join(PLANES)}")
        if self.fit not in ("resample", "crop"):
            raise MrbenchError(f"--fit: unknown fit {self.fit!r}; valid: crop, resample")
        if not 0 <= self.coils <= 64:
            raise MrbenchError(f"--coils must be in [0, 64], got {self.coils}")
        if self.snr is not None and not self.snr > 0:
            raise MrbenchError(f"--snr must be > 0, got {self.snr}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            raise MrbenchError(f"--split must be three fractions ≥ 0 that sum to 1 (train,val,test), got {self.split}")

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


PLANES = ("axial", "coronal", "sagittal", "acquired")


@dataclass(frozen=True)
class Source:
    """One volume to import: a subject's scan of one contrast (one file, or a DICOM series)."""

    subject: str
    contrast: str
    paths: tuple[Path, ...]
    key: str = ""  # the importer's handle inside the files (a DICOM SeriesInstanceUID)
    params: dict = field(default_factory=dict)  # acquisition numbers read while discovering


@dataclass
class Imported:
    """One volume in the fastMRI layout, ready to write.

    ``kspace`` ``(S, H, W)`` single-coil or ``(S, C, H, W)``, phase encoding last; ``target``
    the RSS image (None for an undersampled acquisition, which carries ``mask`` instead).
    """

    kspace: np.ndarray
    target: np.ndarray | None
    params: dict  # ACQUISITION_FIELDS (+ sequence_type) → value; None where unknown
    attrs: dict
    mask: np.ndarray | None = None
    num_low_frequencies: int = 0
    recon_shape: tuple[int, int] | None = None
    limits: tuple[int, int] | None = None  # kspace_encoding_step_1 (center, maximum)


class Importer:
    """One source format. Subclasses set the class attributes and the two methods."""

    name: ClassVar[str] = ""
    package: ClassVar[str] = ""  # the Python package the format needs (from the `import` extra)
    suffixes: ClassVar[tuple[str, ...]] = ()  # file-name endings that name the format (guessing)

    def __init__(self, options: ImportOptions):
        self.options = options
        self.notes: list[str] = []  # what discover/load skipped or changed, printed after the import

    def discover(self, src: Path, files: list[Path], layout) -> list[Source]:
        """Every volume among ``files`` (sorted, under the folder ``src``); ``layout``
        (:class:`.layout.Layout`) names subject and contrast from their paths relative to ``src``."""
        raise NotImplementedError

    def load(self, source: Source) -> Imported:
        raise NotImplementedError

    @classmethod
    def require(cls):
        """The format's package, or the one-line error naming the extra that installs it."""
        try:
            return importlib.import_module(cls.package)
        except ImportError:
            raise MrbenchError(
                f"--format {cls.name} needs the Python package {cls.package!r}: pip install 'mrbench[import]'"
            ) from None


def fail(path: Path | str, what: str) -> MrbenchError:
    """The importers' one-line error: the file, then the problem."""
    return MrbenchError(f"{path}: {what}")
