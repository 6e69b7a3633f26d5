"""DICOM magnitude series (clinical exports) via pydicom.

Every MR image file under the source folder is read; files are grouped into series by
SeriesInstanceUID, the subject is PatientID (or ``{subject}`` of ``--pattern``) and the
contrast is the series' SeriesDescription (ProtocolName where empty) mapped by
``--contrast NAME=MATCH``. Within a series the slices of the most common
ImageOrientationPatient are kept (a tri-planar localiser keeps one plane, and says so),
ordered along their normal by ImagePositionPatient; the affine (LPS → RAS+) comes from those
two tags, PixelSpacing and the slice spacing. Sequence parameters come from the tags:
RepetitionTime, EchoTime, InversionTime, FlipAngle, MagneticFieldStrength, ScanningSequence.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ...errors import MrbenchError
from .base import Importer, Source, fail
from .magnitude import canonical, fit, plane_slices, simulate_kspace

#: files a DICOM export holds beside its images
_NOT_IMAGES = (".txt", ".md", ".json", ".csv", ".xml", ".html", ".pdf", ".png", ".jpg")
_NOT_IMAGE_NAMES = ("DICOMDIR", "README", "LICENSE", "COPYING")


def dicom_parameters(ds) -> dict:
    """The header numbers of one DICOM image, None where a tag is absent or empty."""

    def number(tag):
        value = ds.get(tag)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    scanning = ds.get("ScanningSequence")
    words = [scanning] if isinstance(scanning, str) else list(scanning or [])
    kind = "InversionRecovery" if "IR" in words else "GradientEcho" if "GR" in words else "SpinEcho" if "SE" in words else None
    out = {
        "TR": number("RepetitionTime"),
        "TE": number("EchoTime"),
        "TI": number("InversionTime"),
        "flipAngle_deg": number("FlipAngle"),
        "systemFieldStrength_T": number("MagneticFieldStrength"),
    }
    if kind:
        out["sequence_type"] = kind
    return out


class DicomImporter(Importer):
    name = "dicom"
    package = "pydicom"
    suffixes = (".dcm", ".ima")

    def discover(self, src: Path, files: list[Path], layout) -> list[Source]:
        pydicom = self.require()
        series: dict[str, list] = defaultdict(list)
        for path in files:
            if path.suffix.lower() in _NOT_IMAGES or path.stem.upper() in _NOT_IMAGE_NAMES or path.name.startswith("."):
                continue
            try:
                ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            except Exception as exc:
                raise fail(path, f"not a readable DICOM file ({type(exc).__name__})") from None
            if ds.get("Modality") != "MR" or "Rows" not in ds:
                self.notes.append(f"{path.relative_to(src)}: skipped (modality {ds.get('Modality', '?')}, not an MR image)")
                continue
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise fail(path, "is a multi-frame (enhanced) DICOM image; export the series as single-frame images")
            found = layout.match(path.relative_to(src).as_posix())
            if found is None:
                continue
            series[str(ds.get("SeriesInstanceUID", path.parent))].append((path, ds, found[0]))
        sources = []
        for uid, items in series.items():
            path, ds, subject = items[0]
            description = str(ds.get("SeriesDescription") or ds.get("ProtocolName") or f"series{ds.get('SeriesNumber', '')}")
            contrast = layout.contrast(description)
            if contrast is None:
                self.notes.append(f"series {description!r} ({len(items)} image(s)): skipped, no --contrast matches it")
                continue
            subject = subject or str(ds.get("PatientID") or path.parent.name)
            sources.append(Source(
                subject=subject, contrast=contrast, paths=tuple(p for p, _, _ in items), key=uid,
                params=dicom_parameters(ds),
            ))
        return sources

    def load(self, source: Source):
        pydicom = self.require()
        images = []
        for path in source.paths:
            try:
                ds = pydicom.dcmread(str(path))
                pixels = ds.pixel_array.astype(np.float32)
            except Exception as exc:
                raise fail(path, f"its pixel data cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
            pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
            images.append((path, ds, pixels))
        volume, affine, kept = self._stack(images, source)
        try:
            volume, voxel = canonical(volume, affine)
        except MrbenchError as exc:
            raise fail(source.paths[0], str(exc)) from None
        o = self.options
        stack, pixel = plane_slices(volume, voxel, o.plane, o.slices, f"{source.paths[0].parent} (series {source.contrast})")
        stack = fit(stack, pixel, o.size, o.fit)
        extra = {"source_file": source.paths[0].parent.name, "source_series": source.key, "source_images": kept}
        return simulate_kspace(stack, source, o, extra)

    def _stack(self, images, source: Source) -> tuple[np.ndarray, np.ndarray, int]:
        orientation = lambda ds: tuple(np.round(np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float), 3))
        counts = Counter(orientation(ds) for _, ds, _ in images)
        keep, _ = counts.most_common(1)[0]
        if len(counts) > 1:
            self.notes.append(
                f"series {source.contrast} of {source.subject}: {len(images) - counts[keep]} image(s) in other orientations dropped"
            )
        images = [im for im in images if orientation(im[1]) == keep]
        shapes = {im[2].shape for im in images}
        if len(shapes) > 1:
            raise fail(images[0][0].parent, f"series {source.contrast} mixes image shapes {sorted(shapes)}")
        row_dir, col_dir = np.asarray(keep[:3]), np.asarray(keep[3:])
        normal = np.cross(row_dir, col_dir)
        position = lambda ds: np.asarray(ds.get("ImagePositionPatient", [0, 0, 0]), float)
        images.sort(key=lambda im: float(position(im[1]) @ normal))
        first = images[0][1]
        spacing = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]  # (between rows, between columns)
        if len(images) > 1:
            steps = np.diff([float(position(ds) @ normal) for _, ds, _ in images])
            step = float(np.median(steps))
            if not step > 0:
                raise fail(images[0][0].parent, f"series {source.contrast}: two images at the same position")
        else:
            step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        # voxel (row i, column j, slice k) → LPS: origin + i·Δr·col_dir + j·Δc·row_dir + k·step·normal
        affine = np.eye(4)
        affine[:3, 0] = col_dir * spacing[0]
        affine[:3, 1] = row_dir * spacing[1]
        affine[:3, 2] = normal * step
        affine[:3, 3] = position(first)
        affine[:2] *= -1  # LPS → RAS
        volume = np.stack([px for _, _, px in images], axis=-1)  # (rows, columns, slices)
        return volume, affine, len(images)
