"""Tissue parameters, pulse sequences and signal equations (1.5 T).

Tissue values (T1, T2 in ms, PD relative) are the classic 1.5 T parameters
used by the BrainWeb simulator: Kwan, Evans & Pike, "MRI simulation-based
evaluation of image-processing and classification methods", IEEE TMI 18(11),
1999, and Aubert-Broche et al., "Twenty new digital brain phantoms for
creation of validation image data bases", IEEE TMI 25(11), 2006:

======  ======  =====  =====
tissue  T1      T2     PD
======  ======  =====  =====
CSF     2569    329    1.00
GM       833     83    0.86
WM       500     70    0.77
fat      350     70    1.00
======  ======  =====  =====

Assumption: T2* is not part of that table; we take ``T2* = T2 / 2`` for every
tissue (a typical 1.5 T ratio for brain; it only affects gradient-echo
contrasts).

Signal equations (steady state, perfect spoiling, TE ≪ T1):

* spin echo:            ``S = PD·(1 − e^(−TR/T1))·e^(−TE/T2)``
* inversion recovery:   ``S = PD·|1 − 2e^(−TI/T1) + e^(−TR/T1)|·e^(−TE/T2)``
* spoiled gradient echo ``S = PD·sinα·(1 − E1)/(1 − cosα·E1)·e^(−TE/T2*)``,
  ``E1 = e^(−TR/T1)``

Named contrasts (:data:`NAMED_CONTRASTS`): AXT1 (SE 500/15), AXT2 (SE
4000/100), AXPD (SE 4000/15), AXFLAIR (IR, TR 9000, TE 100, TI nulling CSF).
The FLAIR inversion time solves ``1 − 2e^(−TI/T1) + e^(−TR/T1) = 0`` for CSF:
``TI = −T1_csf·ln((1 + e^(−TR/T1_csf))/2)`` ≈ 1704 ms.

:func:`resolve_contrast` turns a config entry (a name or a dict) into a
``(name, Sequence)`` pair; dicts define *unseen* contrasts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from mrbench.errors import MrbenchError

T2STAR_OVER_T2 = 0.5


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters (ms) and proton density (relative)."""

    t1: float
    t2: float
    pd: float
    t2star: float


def _tissue(t1: float, t2: float, pd: float) -> Tissue:
    return Tissue(t1=t1, t2=t2, pd=pd, t2star=T2STAR_OVER_T2 * t2)


TISSUES: dict[str, Tissue] = {
    "csf": _tissue(2569.0, 329.0, 1.00),
    "gm": _tissue(833.0, 83.0, 0.86),
    "wm": _tissue(500.0, 70.0, 0.77),
    "fat": _tissue(350.0, 70.0, 1.00),
}

SEQUENCE_KINDS = ("se", "ir", "gre")


def _positive_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number (ms or degrees), got {value!r}")


@dataclass(frozen=True)
class Sequence:
    """A pulse sequence: ``kind`` in ``se | ir | gre``; times in ms, ``flip`` in degrees."""

    kind: str
    tr: float
    te: float
    ti: float | None = None
    flip: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SEQUENCE_KINDS:
            raise ValueError(f"unknown sequence kind {self.kind!r}; expected one of {', '.join(SEQUENCE_KINDS)}")
        _positive_finite("tr", self.tr)
        _positive_finite("te", self.te)
        if self.te >= self.tr:
            raise ValueError(f"te ({self.te}) must be shorter than tr ({self.tr})")
        if self.kind == "ir":
            if self.ti is None:
                raise ValueError("inversion recovery ('ir') needs ti")
            _positive_finite("ti", self.ti)
            if self.ti >= self.tr:
                raise ValueError(f"ti ({self.ti}) must be shorter than tr ({self.tr})")
        elif self.ti is not None:
            raise ValueError(f"ti is only used by 'ir' sequences, not {self.kind!r}")
        if self.kind == "gre":
            if self.flip is None:
                raise ValueError("spoiled gradient echo ('gre') needs flip (degrees)")
            _positive_finite("flip", self.flip)
            if self.flip > 180:
                raise ValueError(f"flip must be in (0, 180] degrees, got {self.flip}")
        elif self.flip is not None:
            raise ValueError(f"flip is only used by 'gre' sequences, not {self.kind!r}")

    def signal(self, t1, t2, pd, t2star=None) -> np.ndarray:
        """Steady-state magnitude signal; numpy arrays broadcast.

        ``t2star`` is only used by ``gre`` (defaults to ``T2STAR_OVER_T2·t2``).
        """
        t1 = np.asarray(t1, dtype=np.float64)
        t2 = np.asarray(t2, dtype=np.float64)
        pd = np.asarray(pd, dtype=np.float64)
        e1 = np.exp(-self.tr / t1)
        if self.kind == "se":
            return pd * (1.0 - e1) * np.exp(-self.te / t2)
        if self.kind == "ir":
            return pd * np.abs(1.0 - 2.0 * np.exp(-self.ti / t1) + e1) * np.exp(-self.te / t2)
        t2s = T2STAR_OVER_T2 * t2 if t2star is None else np.asarray(t2star, dtype=np.float64)
        a = math.radians(self.flip)
        return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * np.exp(-self.te / t2s)

    def tissue_signal(self, tissue: Tissue) -> float:
        return float(self.signal(tissue.t1, tissue.t2, tissue.pd, tissue.t2star))


def flair_ti(tr: float, t1_null: float = TISSUES["csf"].t1) -> float:
    """Inversion time nulling a tissue of ``t1_null``: ``−T1·ln((1 + e^(−TR/T1))/2)``."""
    return -t1_null * math.log((1.0 + math.exp(-tr / t1_null)) / 2.0)


#: The field strength the tissue values are for (written to each file's header).
FIELD_STRENGTH_T = 1.5

NAMED_CONTRASTS: dict[str, Sequence] = {
    "AXT1": Sequence("se", tr=500.0, te=15.0),
    "AXT2": Sequence("se", tr=4000.0, te=100.0),
    "AXPD": Sequence("se", tr=4000.0, te=15.0),
    "AXFLAIR": Sequence("ir", tr=9000.0, te=100.0, ti=flair_ti(9000.0)),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DICT_KEYS = ("name", "sequence", "tr", "te", "ti", "flip")


def _valid_names() -> str:
    return ", ".join(NAMED_CONTRASTS)


def resolve_contrast(spec: str | Mapping[str, Any]) -> tuple[str, Sequence]:
    """Resolve a contrast config entry to ``(name, Sequence)``.

    * a string: a name in :data:`NAMED_CONTRASTS`, case-insensitive; returns
      the canonical upper-case name.
    * a dict ``{"name": "T1GRE", "sequence": "gre", "tr": 20, "te": 5,
      "flip": 30}`` (``"ti"`` for ``ir``): an unseen contrast; the name is
      returned as written (letters, digits, ``_ . -``). It may not reuse a
      built-in name with different parameters. A dict holding only ``name``
      is looked up like a string.

    Raises :class:`MrbenchError` naming the unknown name or offending key.
    """
    if isinstance(spec, str):
        key = spec.strip().upper()
        if key not in NAMED_CONTRASTS:
            raise MrbenchError(f"unknown contrast {spec!r}; valid names: {_valid_names()} (or a dict spec)")
        return key, NAMED_CONTRASTS[key]
    if not isinstance(spec, Mapping):
        raise MrbenchError(f"contrast must be a name or a dict, got {type(spec).__name__}: {spec!r}")
    unknown = [k for k in spec if k not in _DICT_KEYS]
    if unknown:
        raise MrbenchError(f"contrast spec has unknown key {unknown[0]!r}; allowed keys: {', '.join(_DICT_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise MrbenchError(
            f"contrast spec key 'name' must be a non-empty string of letters, digits, '_', '.', '-', got {name!r}"
        )
    if set(spec) == {"name"}:
        return resolve_contrast(name)
    kind = spec.get("sequence")
    if not isinstance(kind, str) or kind.strip().lower() not in SEQUENCE_KINDS:
        raise MrbenchError(
            f"contrast {name!r}: key 'sequence' must be one of {', '.join(SEQUENCE_KINDS)}, got {kind!r}"
        )
    kind = kind.strip().lower()
    needed = {"se": ("tr", "te"), "ir": ("tr", "te", "ti"), "gre": ("tr", "te", "flip")}[kind]
    for key in ("tr", "te", "ti", "flip"):
        if key in needed and key not in spec:
            raise MrbenchError(f"contrast {name!r}: sequence {kind!r} needs key {key!r}")
        if key not in needed and key in spec:
            raise MrbenchError(f"contrast {name!r}: key {key!r} is not used by sequence {kind!r}")
        if key in spec:
            try:
                _positive_finite(key, spec[key])
            except ValueError as e:
                raise MrbenchError(f"contrast {name!r}: key {key!r}: {e}") from None
    vals = {k: float(spec[k]) for k in needed}
    try:
        seq = Sequence(kind, **vals)
    except ValueError as e:  # relational checks (te < tr, ti < tr, flip <= 180)
        bad = str(e).split()[0]  # these messages start with the offending key
        raise MrbenchError(f"contrast {name!r}: key {bad!r}: {e}") from None
    builtin = NAMED_CONTRASTS.get(name.upper())
    if builtin is not None and builtin != seq:
        raise MrbenchError(
            f"contrast spec key 'name' {name!r} clashes with the built-in contrast {name.upper()}; pick another name"
        )
    return (name.upper() if builtin is not None else name), seq
