"""Siemens raw data (twix ``.dat``, VB and VD/VE) via ``twixtools``.

The last measurement of a file is the imaging scan (earlier ones are adjustments). Its image
readouts are mapped by ``twixtools.map_twix`` to ``(…, Sli, Ave, Lin, Cha, Col)``; segments
and averages are averaged, the first echo, repetition, set and cardiac phase kept; lines
land at their ``Lin`` counter (centre line from the header's ``CenterLin``). Sequence numbers
from the protocol (``MeasYaps``): ``alTR[0]``, ``alTE[0]``, ``alTI[0]`` (only when an inversion
pulse is on), ``adFlipAngleDegree[0]`` (µs → ms), the field strength from
``Dicom.flMagneticFieldStrength``, the sequence family from ``Dicom.tScanningSequence``. The
subject is the file's stem (twix files carry no usable patient id once anonymised) unless a
``--pattern`` names it; the contrast is the protocol name mapped by ``--contrast``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Importer, Source, fail
from .raw import RawScan, to_fastmri

#: Siemens' sPrepPulses.ucInversion: 1 slice-selective, 2 non-selective, 4 off
_INVERSION_ON = (1, 2)
_SEQUENCES = {"IR": "InversionRecovery", "GR": "GradientEcho", "SE": "SpinEcho", "EP": "EchoPlanar"}


def _number(values, scale: float = 1.0):
    v = values[0] if isinstance(values, (list, tuple)) and values else values
    return float(v) * scale if isinstance(v, (int, float)) else None


def twix_parameters(hdr: dict) -> dict:
    """ACQUISITION_FIELDS (+ sequence_type) from a twix header (``read_twix(...)[-1]["hdr"]``)."""
    yaps, dicom = hdr.get("MeasYaps", {}), hdr.get("Dicom", {})
    inversion = yaps.get("sPrepPulses", {}).get("ucInversion")
    b0 = dicom.get("flMagneticFieldStrength") or yaps.get("sProtConsistencyInfo", {}).get("flNominalB0")
    out = {
        "TR": _number(yaps.get("alTR"), 1e-3),
        "TE": _number(yaps.get("alTE"), 1e-3),
        "TI": _number(yaps.get("alTI"), 1e-3) if inversion in _INVERSION_ON else None,
        "flipAngle_deg": _number(yaps.get("adFlipAngleDegree")),
        "systemFieldStrength_T": float(b0) if isinstance(b0, (int, float)) else None,
    }
    words = str(dicom.get("tScanningSequence", "")).replace("\\", " ").split()
    family = next((_SEQUENCES[w] for w in ("IR", "GR", "SE", "EP") if w in words), None)
    if family:
        out["sequence_type"] = family
    return out


class TwixImporter(Importer):
    name = "twix"
    package = "twixtools"
    suffixes = (".dat",)

    def _read(self, path: Path, data: bool = True):
        """The file's imaging scan; ``data=False`` parses the headers only (discovery)."""
        twixtools = self.require()
        try:
            scans = twixtools.read_twix(str(path), parse_data=data, parse_pmu=data, parse_geometry=data, verbose=False)
            return twixtools, scans[-1]
        except Exception as exc:
            raise fail(path, f"not a readable Siemens twix file ({type(exc).__name__})") from None

    def discover(self, src: Path, files: list[Path], layout) -> list[Source]:
        sources = []
        for path in (p for p in files if p.suffix.lower() == ".dat"):
            found = layout.match(path.relative_to(src).as_posix())
            if found is None:
                continue
            _, scan = self._read(path, data=False)
            hdr = scan["hdr"]
            subject, part = found
            protocol = str(hdr.get("MeasYaps", {}).get("tProtocolName") or hdr.get("Dicom", {}).get("tProtocolName") or "MR")
            contrast = layout.contrast(part if part is not None else protocol)
            if contrast is None:
                self.notes.append(f"{path.name}: skipped, protocol {protocol!r} matches no --contrast")
                continue
            sources.append(Source(subject=subject or path.stem, contrast=contrast, paths=(path,), params=twix_parameters(hdr)))
        return sources

    def load(self, source: Source):
        path = source.paths[0]
        twixtools, scan = self._read(path)
        mapped = twixtools.map_twix(scan)
        if "image" not in mapped:
            raise fail(path, "holds no image readouts")
        image = mapped["image"]
        image.flags["remove_os"] = False  # removed in raw.to_fastmri, the same way for every format
        image.flags["average"]["Ave"] = True
        image.flags["average"]["Seg"] = True
        dims = list(image.dims)
        shape = dict(zip(dims, image.shape))
        if shape.get("Par", 1) > 1:
            raise fail(path, f"is a 3-D acquisition ({shape['Par']} partitions); only 2-D multi-slice imports")
        data = np.asarray(image[:], dtype=np.complex64)
        index = tuple(slice(None) if d in ("Sli", "Lin", "Cha", "Col") else 0 for d in dims)
        kept = [d for d in dims if d in ("Sli", "Lin", "Cha", "Col")]
        dropped = [f"{d} {shape[d]}" for d in dims if d not in ("Sli", "Lin", "Cha", "Col", "Ave", "Seg") and shape[d] > 1]
        if dropped:
            self.notes.append(f"{path.name}: only the first of {', '.join(dropped)} imported")
        data = data[index]  # (Sli, Lin, Cha, Col)
        data = np.transpose(data, [kept.index(d) for d in ("Sli", "Cha", "Col", "Lin")])  # readout H, lines W
        hdr = scan["hdr"]
        meas = hdr.get("Meas", {})
        lines = data.shape[-1]
        center = int(scan["mdb"][0].mdh.CenterLin) if scan.get("mdb") else lines // 2
        columns = data.shape[-2]
        os_factor = float(meas.get("flReadoutOSFactor") or 2.0)
        base = int(hdr.get("MeasYaps", {}).get("sKSpace", {}).get("lBaseResolution") or round(columns / os_factor))
        # the encoded matrix (iPEFTLength) may hold more columns than lines were measured (partial
        # Fourier): line l sits at column width // 2 − CenterLin + l, the rest are fastMRI's padding
        width = max(int(meas.get("iPEFTLength") or lines), lines)
        left = width // 2 - center
        if left < 0 or left + lines > width:
            raise fail(path, f"centre line {center} of {lines} does not fit the encoded {width} lines")
        kspace = np.zeros(data.shape[:-1] + (width,), dtype=np.complex64)
        kspace[..., left : left + lines] = data
        acquired = np.abs(kspace).sum(axis=(0, 1, 2)) > 0
        scan_ = RawScan(
            kspace=kspace, acquired=acquired, recon=(base, width),
            center=center, maximum=lines - 1, oversampling=os_factor, params=dict(source.params),
            attrs={"source_file": path.name, "source_format": "Siemens twix"},
        )
        return to_fastmri(scan_, self.options, str(path))
