"""ISMRMRD raw data (``.h5``, the vendor-neutral format; Inati et al., MRM 2017) via ``ismrmrd``.

A file is one scan; its subject is ``subjectInformation/patientID`` (or ``{subject}`` of
``--pattern``, or the file name), its contrast ``measurementInformation/protocolName`` mapped
by ``--contrast`` (or ``{contrast}``). Cartesian 2-D acquisitions only: each readout is placed
at ``kspace_encode_step_1`` of its ``slice``; noise, navigator, phase-correction and
calibration-only readouts are skipped, averages averaged, and only contrast, repetition, set
and phase 0 are kept (the others are reported). The sequence parameters and field strength
come from the header (``sequenceParameters``, ``acquisitionSystemInformation``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .base import Importer, Source, fail
from .raw import RawScan, to_fastmri

_SKIP_FLAGS = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA",
               "ACQ_IS_PARALLEL_CALIBRATION", "ACQ_IS_DUMMYSCAN_DATA", "ACQ_IS_RTFEEDBACK_DATA",
               "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA", "ACQ_IS_PHASE_STABILIZATION",
               "ACQ_IS_PHASE_STABILIZATION_REFERENCE")


def _first(value):
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def header_parameters(header) -> dict:
    """ACQUISITION_FIELDS (+ sequence_type) of a parsed ISMRMRD header; None where absent."""
    seq = header.sequenceParameters
    system = header.acquisitionSystemInformation
    out = {
        "TR": _first(seq.TR) if seq else None,
        "TE": _first(seq.TE) if seq else None,
        "TI": _first(seq.TI) if seq else None,
        "flipAngle_deg": _first(seq.flipAngle_deg) if seq else None,
        "systemFieldStrength_T": system.systemFieldStrength_T if system else None,
    }
    out = {k: (float(v) if v is not None else None) for k, v in out.items()}
    if seq is not None and seq.sequence_type:
        out["sequence_type"] = str(seq.sequence_type)
    return out


class IsmrmrdImporter(Importer):
    name = "ismrmrd"
    package = "ismrmrd"
    suffixes = (".h5", ".mrd")

    def _open(self, path: Path):
        ismrmrd = self.require()
        try:
            dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
            xml = dset.read_xml_header()
            header = ismrmrd.xsd.CreateFromDocument(xml.decode() if isinstance(xml, bytes) else xml)
        except Exception as exc:
            raise fail(path, f"not a readable ISMRMRD file ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        return ismrmrd, dset, header

    def discover(self, src: Path, files: list[Path], layout) -> list[Source]:
        sources = []
        for path in (p for p in files if p.suffix.lower() in self.suffixes):
            found = layout.match(path.relative_to(src).as_posix())
            if found is None:
                continue
            _, dset, header = self._open(path)
            dset.close()
            subject, part = found
            info = header.subjectInformation
            subject = subject or (info.patientID if info is not None and info.patientID else path.stem)
            measurement = header.measurementInformation
            protocol = measurement.protocolName if measurement is not None and measurement.protocolName else "MR"
            contrast = layout.contrast(part if part is not None else protocol)
            if contrast is None:
                self.notes.append(f"{path.name}: skipped, protocol {protocol!r} matches no --contrast")
                continue
            sources.append(Source(subject=str(subject), contrast=contrast, paths=(path,), params=header_parameters(header)))
        return sources

    def load(self, source: Source):
        path = source.paths[0]
        ismrmrd, dset, header = self._open(path)
        try:
            return self._read(ismrmrd, dset, header, source, path)
        finally:
            dset.close()

    def _read(self, ismrmrd, dset, header, source: Source, path: Path):
        enc = header.encoding[0]
        if enc.trajectory is not None and str(getattr(enc.trajectory, "value", enc.trajectory)).lower() != "cartesian":
            raise fail(path, f"trajectory {enc.trajectory} is not Cartesian; only Cartesian data imports")
        ex, ey = enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y
        rx, ry = enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y
        lim = enc.encodingLimits
        if lim.kspace_encoding_step_2 is not None and (lim.kspace_encoding_step_2.maximum or 0) > 0:
            raise fail(path, "is a 3-D acquisition (kspace_encoding_step_2 > 0); only 2-D multi-slice imports")
        step1 = lim.kspace_encoding_step_1
        center = int(step1.center) if step1 is not None and step1.center is not None else ey // 2
        maximum = int(step1.maximum) if step1 is not None and step1.maximum is not None else ey - 1
        n_slices = (int(lim.slice.maximum) + 1) if lim.slice is not None and lim.slice.maximum is not None else 1
        # readout oversampling: the encoded field of view over the recon one (siemens_to_ismrmrd writes 2)
        fov_x = enc.encodedSpace.fieldOfView_mm.x / max(enc.reconSpace.fieldOfView_mm.x, 1e-9)
        skip = [getattr(ismrmrd, f) for f in _SKIP_FLAGS]
        sums: dict = {}
        counts: defaultdict = defaultdict(int)
        dropped = 0
        n = dset.number_of_acquisitions()
        if n == 0:
            raise fail(path, "holds no acquisitions")
        for i in range(n):
            acq = dset.read_acquisition(i)
            if any(acq.is_flag_set(f) for f in skip):
                continue
            idx = acq.idx
            if idx.contrast or idx.repetition or idx.set or idx.phase:
                dropped += 1
                continue
            data = np.asarray(acq.data, dtype=np.complex64)  # (coils, samples)
            if data.shape[1] != ex:
                raise fail(path, f"readout {i} has {data.shape[1]} samples, the header's encodedSpace x is {ex}")
            key = (int(idx.slice), int(idx.kspace_encode_step_1))
            if not 0 <= key[1] <= maximum or not 0 <= key[0] < n_slices:
                raise fail(path, f"readout {i}: slice {key[0]} line {key[1]} outside the encoding limits")
            sums[key] = sums.get(key, 0) + data
            counts[key] += 1
        if not sums:
            raise fail(path, "holds no imaging readouts")
        coils = next(iter(sums.values())).shape[0]
        left = ey // 2 - center
        kspace = np.zeros((n_slices, coils, ex, ey), dtype=np.complex64)
        acquired = np.zeros(ey, dtype=bool)
        for (slc, line), total in sums.items():
            kspace[slc, :, :, left + line] = total / counts[(slc, line)]
            acquired[left + line] = True
        if dropped:
            self.notes.append(f"{path.name}: {dropped} readout(s) of other contrasts/repetitions/sets/phases not imported")
        scan = RawScan(
            kspace=kspace, acquired=acquired, recon=(rx, ry), center=center, maximum=maximum,
            oversampling=max(1.0, round(fov_x, 3)), params=dict(source.params),
            attrs={"source_file": path.name, "source_format": "ISMRMRD"},
        )
        return to_fastmri(scan, self.options, str(path))
