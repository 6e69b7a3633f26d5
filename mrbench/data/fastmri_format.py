"""Reading and writing fastMRI-format HDF5 volumes.

One on-disk format for everything mrbench trains on (docs/design.md §3):

* ``kspace``: complex64, ``(slices, H, W)`` single-coil or ``(slices, coils, H, W)``
  multi-coil, the phase-encoding direction last.
* ``reconstruction_esc`` (single-coil) or ``reconstruction_rss``: float32
  ``(slices, h, w)``, the centre crop of the magnitude (RSS) image.
* attributes ``acquisition``, ``max``, ``norm``, ``patient_id``.
* ``ismrmrd_header``: ISMRMRD XML. fastMRI's ``SliceDataset._retrieve_metadata``
  reads ``encoding/encodedSpace/matrixSize/{x,y,z}``,
  ``encoding/reconSpace/matrixSize/{x,y,z}`` and
  ``encoding/encodingLimits/kspace_encoding_step_1/{center,maximum}`` and
  derives ``padding_left = enc_y // 2 - center`` and
  ``padding_right = padding_left + maximum + 1``. Columns outside
  ``[padding_left, padding_right)`` are zero padding in real fastMRI files and
  are removed from every sampling mask.

  The acquisition numbers, where a file has them (fastMRI's files do; ``mrbench data synth``
  writes them): ``sequenceParameters/{TR, TE, TI, flipAngle_deg}`` (ms, degrees) and
  ``acquisitionSystemInformation/systemFieldStrength_T``, read into
  :attr:`VolumeMeta.acquisition` (None where absent) for metadata conditioning.

Files written by :func:`write_volume` carry exactly those header fields, so
fastMRI's own ``SliceDataset`` accepts them (tested when ``fastmri`` is
installed).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path
from ..errors import MrbenchError, first_line

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = ("reconstruction_esc", "reconstruction_rss")
#: The header's acquisition numbers, in the order of :attr:`VolumeMeta.acquisition`.
ACQUISITION_FIELDS = ("TR", "TE", "TI", "flipAngle_deg", "systemFieldStrength_T")
#: Sequence families, coded after the numbers in :attr:`VolumeMeta.acquisition`.
FAMILIES = ("se", "ir", "gre")
NO_ACQUISITION = (None,) * (len(ACQUISITION_FIELDS) + 1)
# words of ISMRMRD sequence_type strings, inversion recovery checked first (a "TurboInversionRecovery" is IR)
_FAMILY_WORDS = (("ir", ("inversion", "flair", "stir", "tir", "mprage")),
                 ("gre", ("flash", "gradient", "gre", "spgr", "fisp", "fl2d", "fl3d")),
                 ("se", ("spin", "tse", "turbo", "fse", "haste")))


@dataclass(frozen=True)
class VolumeMeta:
    """What the index needs to know about one file, read without loading k-space."""

    path: Path
    contrast: str
    num_slices: int
    num_coils: int  # 1 for single-coil files
    kspace_shape: tuple[int, int]  # (H, W)
    target_key: str | None
    target_shape: tuple[int, int] | None  # (h, w)
    padding_left: int
    padding_right: int
    recon_size: tuple[int, int]
    max_value: float | None
    patient_id: str
    stored_mask: bool = False  # the file is already undersampled: its own `mask` (fastMRI's test layout)
    stored_low: int = 0  # its `num_low_frequencies` attribute (the ACS lines of the stored mask)
    acquisition: tuple = NO_ACQUISITION  # ACQUISITION_FIELDS, then the FAMILIES index of sequence_type; None where absent
    kspace_source: str = ""  # attrs["kspace_source"] ("simulated from magnitude" for imported images), "synthetic", or ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def multicoil(self) -> bool:
        return self.num_coils > 1


# ----------------------------------------------------------------------------- header


def build_header(
    kspace_shape: tuple[int, int],
    recon_shape: tuple[int, int],
    acquisition: dict | None = None,
    *,
    limits: tuple[int, int] | None = None,
) -> str:
    """A minimal ISMRMRD header with the fields fastMRI parses.

    ``x`` is the read-out (H) and ``y`` the phase-encoding (W) size; the
    encoding limits say every phase-encoding column is acquired (no padding) unless
    ``limits = (center, maximum)`` of ``kspace_encoding_step_1`` say otherwise (a raw
    acquisition whose lines do not fill the encoded matrix: fastMRI's padding columns).
    ``acquisition``: :data:`ACQUISITION_FIELDS` (and ``sequence_type``) → value; written where
    the ISMRMRD schema puts them (field strength before ``encoding``, the sequence after).
    """
    h, w = kspace_shape
    rh, rw = recon_shape
    center, maximum = limits if limits is not None else (w // 2, w - 1)
    ns = ISMRMRD_NS
    acq = {k: v for k, v in (acquisition or {}).items() if v is not None}
    system = (
        f"<acquisitionSystemInformation><systemFieldStrength_T>{float(acq['systemFieldStrength_T'])!r}"
        "</systemFieldStrength_T></acquisitionSystemInformation>"
        if "systemFieldStrength_T" in acq else ""
    )
    seq = "".join(f"<{k}>{float(acq[k])!r}</{k}>" for k in ACQUISITION_FIELDS[:4] if k in acq)  # exact round trip
    if "sequence_type" in acq:
        seq += f"<sequence_type>{acq['sequence_type']}</sequence_type>"
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{ns}">'
        + system
        + "<encoding>"
        f"<encodedSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>{h}</x><y>{w}</y><z>1</z></fieldOfView_mm></encodedSpace>"
        f"<reconSpace><matrixSize><x>{rh}</x><y>{rw}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>{rh}</x><y>{rw}</y><z>1</z></fieldOfView_mm></reconSpace>"
        "<encodingLimits>"
        f"<kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum>"
        f"<center>{center}</center></kspace_encoding_step_1>"
        "</encodingLimits>"
        "</encoding>"
        + (f"<sequenceParameters>{seq}</sequenceParameters>" if seq else "")
        + "</ismrmrdHeader>"
    )


def _query(root: ET.Element, path: list[str]) -> str:
    xpath = "." + "".join(f"//m:{p}" for p in path)
    node = root.find(xpath, {"m": ISMRMRD_NS})
    if node is None or node.text is None:
        raise KeyError("/".join(path))
    return node.text


def parse_header(xml: bytes | str, kspace_width: int) -> tuple[int, int, tuple[int, int]]:
    """Return ``(padding_left, padding_right, recon_size)`` from an ISMRMRD header.

    Follows fastMRI's ``_retrieve_metadata`` exactly. Missing fields mean "no
    padding": the whole width is data.
    """
    root = ET.fromstring(xml)
    enc_y = int(_query(root, ["encoding", "encodedSpace", "matrixSize", "y"]))
    rec = (
        int(_query(root, ["encoding", "reconSpace", "matrixSize", "x"])),
        int(_query(root, ["encoding", "reconSpace", "matrixSize", "y"])),
    )
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    center = int(_query(root, lims + ["center"]))
    maximum = int(_query(root, lims + ["maximum"]))
    left = enc_y // 2 - center
    right = left + maximum + 1
    left = max(0, min(left, kspace_width))
    right = max(left, min(right, kspace_width))
    return left, right, rec


def sequence_family(sequence_type: str | None) -> int | None:
    """The :data:`FAMILIES` index a ``sequence_type`` names (``TurboSpinEcho`` → se,
    ``InversionRecovery`` / ``FLAIR`` → ir, ``Flash`` → gre), None when it names none. The
    numbers alone can mislead: fastMRI's spin-echo files carry a TI too."""
    text = (sequence_type or "").lower()
    for family, words in _FAMILY_WORDS:
        if any(w in text for w in words):
            return FAMILIES.index(family)
    return None


def parse_acquisition(xml: bytes | str) -> tuple:
    """:data:`ACQUISITION_FIELDS` from an ISMRMRD header as floats, then the family of its
    ``sequence_type``; None where absent (a field that is present but not a number is an error)."""
    root = ET.fromstring(xml)
    out = []
    for name in ACQUISITION_FIELDS:
        node = root.find(f".//m:{name}", {"m": ISMRMRD_NS})
        if node is None or node.text is None or not node.text.strip():
            out.append(None)
            continue
        try:
            out.append(float(node.text))
        except ValueError:
            raise ValueError(f"{name} is {node.text.strip()!r}, not a number") from None
    kind = root.find(".//m:sequence_type", {"m": ISMRMRD_NS})
    out.append(sequence_family(kind.text if kind is not None else None))
    return tuple(out)


# ----------------------------------------------------------------------------- reading


def _fail(path: Path, what: str) -> MrbenchError:
    return MrbenchError(f"{path}: {what}")


def read_meta(path: str | os.PathLike) -> VolumeMeta:
    """Open a file and validate its structure (not its values); raise MrbenchError if bad."""
    path = Path(path)
    try:
        hf = h5py.File(path, "r")
    except OSError as exc:
        raise _fail(path, f"not a readable HDF5 file ({_short(exc)})") from None
    with hf:
        if "kspace" not in hf:
            raise _fail(path, "has no 'kspace' dataset")
        ks = hf["kspace"]
        if not np.issubdtype(ks.dtype, np.complexfloating):
            raise _fail(path, f"'kspace' has dtype {ks.dtype}, expected complex64")
        if ks.ndim not in (3, 4):
            raise _fail(
                path,
                f"'kspace' has rank {ks.ndim} {tuple(ks.shape)}, expected (slices, H, W) "
                "or (slices, coils, H, W)",
            )
        if ks.shape[0] == 0 or min(ks.shape) == 0:
            raise _fail(path, f"'kspace' is empty {tuple(ks.shape)}")
        num_coils = ks.shape[1] if ks.ndim == 4 else 1
        h, w = int(ks.shape[-2]), int(ks.shape[-1])
        target_key = next((k for k in TARGET_KEYS if k in hf), None)
        # multi-coil data is scored against the RSS target when both exist
        if ks.ndim == 4 and "reconstruction_rss" in hf:
            target_key = "reconstruction_rss"
        target_shape = None
        if target_key is not None:
            t = hf[target_key]
            if t.ndim != 3 or t.shape[0] != ks.shape[0]:
                raise _fail(
                    path,
                    f"'{target_key}' has shape {tuple(t.shape)}, expected ({ks.shape[0]}, h, w)",
                )
            target_shape = (int(t.shape[1]), int(t.shape[2]))
        attrs = hf.attrs
        contrast = attrs.get("acquisition", None)
        if contrast is None:
            raise _fail(path, "has no 'acquisition' attribute (the contrast)")
        if isinstance(contrast, bytes):
            contrast = contrast.decode()
        if "ismrmrd_header" in hf:
            try:
                xml = hf["ismrmrd_header"][()]
                left, right, recon = parse_header(xml, w)
                acquisition = parse_acquisition(xml)
            except (ET.ParseError, KeyError, ValueError) as exc:
                raise _fail(path, f"unreadable 'ismrmrd_header' ({_short(exc)})") from None
        else:
            left, right, recon = 0, w, target_shape or (h, w)
            acquisition = NO_ACQUISITION
        max_value = float(attrs["max"]) if "max" in attrs else None
        patient = attrs.get("patient_id", path.stem)
        if isinstance(patient, bytes):
            patient = patient.decode()
        stored_mask = "mask" in hf
        if stored_mask and tuple(hf["mask"].shape) not in ((w,), (h, w)):
            raise _fail(path, f"'mask' has shape {tuple(hf['mask'].shape)}, expected ({w},) or ({h}, {w})")
        stored_low = int(attrs.get("num_low_frequencies", 0))
        kspace_source = _text(attrs.get("kspace_source", ""))
        if not kspace_source and _text(attrs.get("generator", "")).startswith("mrbench synth"):
            kspace_source = "synthetic"
    return VolumeMeta(
        path=path,
        contrast=str(contrast),
        num_slices=int(ks.shape[0]),
        num_coils=int(num_coils),
        kspace_shape=(h, w),
        target_key=target_key,
        target_shape=target_shape,
        padding_left=left,
        padding_right=right,
        recon_size=tuple(recon),
        max_value=max_value,
        patient_id=str(patient),
        stored_mask=stored_mask,
        stored_low=stored_low,
        acquisition=acquisition,
        kspace_source=kspace_source,
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_values(path: str | os.PathLike, chunk_slices: int = 4) -> None:
    """Scan every k-space (and target) value for NaN/Inf, a few slices at a time."""
    path = Path(path)
    with h5py.File(path, "r") as hf:
        for key in ("kspace", *TARGET_KEYS):
            if key not in hf:
                continue
            ds = hf[key]
            for start in range(0, ds.shape[0], chunk_slices):
                block = ds[start : start + chunk_slices]
                if not np.isfinite(block).all():
                    bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
                    raise _fail(path, f"'{key}' has NaN/Inf values (first in slice {bad})")


def read_mask(meta: VolumeMeta) -> np.ndarray:
    """The (H, W) 0/1 sampling mask an already undersampled file carries (``stored_mask``)."""
    with h5py.File(meta.path, "r") as hf:
        m = np.asarray(hf["mask"][()], dtype=np.float32)
    h, w = meta.kspace_shape
    return np.broadcast_to(m if m.ndim == 2 else m[None, :], (h, w)).copy()


def read_volume(meta: VolumeMeta) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``(kspace (S, C, H, W) complex64, target (S, h, w) float32 | None)``.

    Single-coil k-space gets a coil axis of length 1 so every consumer sees one layout.
    """
    try:
        with h5py.File(meta.path, "r") as hf:
            kspace = np.asarray(hf["kspace"][()], dtype=np.complex64)
            target = (
                np.asarray(hf[meta.target_key][()], dtype=np.float32) if meta.target_key else None
            )
    except OSError as exc:
        raise _fail(meta.path, f"cannot be read ({_short(exc)})") from None
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    if not np.isfinite(kspace).all():
        raise _fail(meta.path, "'kspace' has NaN/Inf values")
    return kspace, target


# ----------------------------------------------------------------------------- writing


def write_volume(
    path: str | os.PathLike,
    kspace: np.ndarray,
    target: np.ndarray | None,
    *,
    acquisition: str,
    patient_id: str,
    extra_attrs: dict | None = None,
    header_params: dict | None = None,
    mask: np.ndarray | None = None,
    num_low_frequencies: int = 0,
    recon_shape: tuple[int, int] | None = None,
    limits: tuple[int, int] | None = None,
) -> None:
    """Write one fastMRI-format volume atomically.

    ``kspace`` is ``(S, H, W)`` (single-coil, target stored as
    ``reconstruction_esc``) or ``(S, C, H, W)`` (multi-coil, target stored as
    ``reconstruction_rss``). ``max`` and ``norm`` follow fastMRI: the volume
    target's maximum and L2 norm. ``header_params``: the header's acquisition numbers (:func:`build_header`).

    fastMRI's test layout (an undersampled acquisition): ``target=None`` with its ``mask``
    ``(W,)`` and ``num_low_frequencies``; ``recon_shape`` then gives the header's reconSpace.
    ``limits``: the header's ``kspace_encoding_step_1`` (center, maximum), when not every column is data.
    """
    kspace = np.asarray(kspace, dtype=np.complex64)
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must be 3-D or 4-D, got {kspace.shape}")
    if target is None and mask is None:
        raise ValueError("a volume without a target must carry its sampling mask (fastMRI's test layout)")
    if target is not None:
        target = np.asarray(target, dtype=np.float32)
        recon_shape = target.shape[-2:]
    key = "reconstruction_esc" if kspace.ndim == 3 else "reconstruction_rss"
    header = build_header(kspace.shape[-2:], recon_shape or kspace.shape[-2:], header_params, limits=limits)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as hf:
            hf.create_dataset("kspace", data=kspace)
            if target is not None:
                hf.create_dataset(key, data=target)
                hf.attrs["max"] = float(target.max())
                hf.attrs["norm"] = float(np.linalg.norm(target))
            if mask is not None:
                hf.create_dataset("mask", data=np.asarray(mask, dtype=bool))
                hf.attrs["num_low_frequencies"] = int(num_low_frequencies)
            hf.create_dataset("ismrmrd_header", data=header.encode())
            hf.attrs["acquisition"] = acquisition
            hf.attrs["patient_id"] = patient_id
            for k, v in (extra_attrs or {}).items():
                hf.attrs[k] = v


def _short(exc: BaseException) -> str:
    return first_line(exc)
