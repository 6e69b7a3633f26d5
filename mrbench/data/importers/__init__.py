"""``mrbench data import``: other formats → fastMRI-layout datasets (docs/design.md §3.4).

One importer per format in :data:`IMPORTERS`; adding a format is one module and one line.
"""

from __future__ import annotations

from pathlib import Path

from ...registry import Registry
from .base import Importer, ImportOptions
from .dicom import DicomImporter
from .ismrmrd_raw import IsmrmrdImporter
from .nifti import NiftiImporter
from .twix import TwixImporter

IMPORTERS: Registry[type[Importer]] = Registry("format", {
    "nifti": NiftiImporter,
    "dicom": DicomImporter,
    "ismrmrd": IsmrmrdImporter,
    "twix": TwixImporter,
})


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def guess_format(files: list[Path]) -> str | None:
    """The format most files name by their ending (a DICOM file by its ``DICM`` preamble)."""
    votes: dict[str, int] = {}
    for path in files:
        name = path.name.lower()
        fmt = next((n for n, cls in IMPORTERS.items() if name.endswith(cls.suffixes)), None)
        if fmt is None and _is_dicom(path):
            fmt = "dicom"
        if fmt is not None:
            votes[fmt] = votes.get(fmt, 0) + 1
    return max(votes, key=votes.get) if votes else None


__all__ = ["IMPORTERS", "ImportOptions", "Importer", "guess_format"]
