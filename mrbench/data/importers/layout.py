"""Which file is which subject and contrast, and which subjects go to which split.

A ``--pattern`` names the parts of a path relative to the source folder with ``{subject}``
and ``{contrast}`` (``*`` for anything within one path component); a pattern without ``/``
matches the file name alone. ``--contrast NAME=MATCH`` renames (and selects) contrasts: a
file's ``{contrast}`` part, or a DICOM series' SeriesDescription, that contains MATCH
(case-insensitive) is contrast NAME. The split is by subject (:func:`split_subjects`), so
every contrast of a subject lands in the same split and paired contrasts stay paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ...errors import MrbenchError

#: ``--layout`` presets: the public multi-contrast sets' file names, and what they hold besides images
PRESETS = {
    # IXI: IXI002-Guys-0828-T1.nii.gz (folders IXI-T1/, IXI-T2/, IXI-PD/); MRA and DTI are not contrasts here
    "ixi": {"pattern": "{subject}-{contrast}.nii.gz", "contrasts": {"T1": "T1", "T2": "T2", "PD": "PD"}},
    # BraTS 2020/21: BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz (_t1ce, _t2, _flair; _seg is a label map)
    "brats": {
        "pattern": "{subject}/{subject}_{contrast}.nii.gz",
        "contrasts": {"T1": "=t1", "T1CE": "=t1ce", "T2": "=t2", "FLAIR": "=flair"},
    },
}


@dataclass(frozen=True)
class Layout:
    """How names map to subjects and contrasts. ``contrasts``: NAME → MATCH (a substring,
    case-insensitive; ``=text`` for an exact match); empty = every contrast under its own name."""

    pattern: str | None = None
    contrasts: dict = field(default_factory=dict)

    @classmethod
    def build(cls, pattern: str | None, preset: str | None, contrast_args: tuple[str, ...]) -> "Layout":
        mapping: dict[str, str] = {}
        if preset is not None:
            if preset not in PRESETS:
                raise MrbenchError(f"--layout: unknown layout {preset!r}; valid: {', '.join(sorted(PRESETS))}")
            if pattern is not None:
                raise MrbenchError("--layout and --pattern: give one (a layout is a named pattern)")
            pattern = PRESETS[preset]["pattern"]
            mapping.update(PRESETS[preset]["contrasts"])
        if contrast_args:
            mapping = {}
        for arg in contrast_args:
            name, sep, match = arg.partition("=")
            if not sep or not name.strip() or not match.strip():
                raise MrbenchError(f"--contrast: expected NAME=MATCH, got {arg!r}")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+-]*", name.strip()):
                raise MrbenchError(f"--contrast {arg!r}: NAME must be letters, digits, '+' or '-'")
            mapping[name.strip()] = match.strip()
        if pattern is not None:
            _compile(pattern)  # the error now, not per file
        return cls(pattern=pattern, contrasts=mapping)

    def match(self, relative: str) -> tuple[str | None, str | None] | None:
        """``(subject, contrast part)`` of a path relative to the source (None: not matched).
        Without a pattern every file matches with neither known."""
        if self.pattern is None:
            return None, None
        target = relative if "/" in self.pattern else relative.rsplit("/", 1)[-1]
        m = _compile(self.pattern).fullmatch(target)
        if m is None:
            return None
        groups = m.groupdict()
        return groups.get("subject"), groups.get("contrast")

    def contrast(self, text: str | None) -> str | None:
        """The contrast NAME that ``text`` (a ``{contrast}`` part, a SeriesDescription) is;
        without ``--contrast``, ``text`` itself; None when a mapping exists and none matches."""
        if text is None:
            return None
        if not self.contrasts:  # the text itself, as a name a config can hold
            return re.sub(r"[^A-Za-z0-9+]+", "-", text.strip()).strip("-") or None
        low = text.strip().lower()
        for name, match in self.contrasts.items():
            if match.startswith("="):
                if low == match[1:].lower():
                    return name
            elif match.lower() in low:
                return name
        return None


def _compile(pattern: str) -> re.Pattern:
    if "{subject}" not in pattern:
        raise MrbenchError(f"--pattern {pattern!r}: needs a {{subject}} placeholder")
    out, seen = "", set()
    for token in re.split(r"(\{subject\}|\{contrast\}|\*)", pattern):
        if token in ("{subject}", "{contrast}"):
            name = token[1:-1]
            out += f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+)"
            seen.add(name)
        elif token == "*":
            out += "[^/]*?"
        elif "{" in token or "}" in token:
            raise MrbenchError(f"--pattern {pattern!r}: unknown placeholder in {token!r} (valid: {{subject}}, {{contrast}})")
        else:
            out += re.escape(token)
    return re.compile(out)


def split_subjects(subjects: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """subject → train/val/test: a seeded permutation of the sorted subjects, cut at the
    fractions (val and test rounded, at least one each when there are ≥ 3 subjects and
    their fraction is > 0); the same subjects and seed always give the same split."""
    subjects = sorted(set(subjects))
    n = len(subjects)
    order = np.random.default_rng(seed).permutation(n)
    counts = []
    for frac in fractions[1:]:
        k = int(round(frac * n))
        counts.append(max(k, 1) if frac > 0 and n >= 3 else k)
    n_val, n_test = counts
    if n_val + n_test >= n and fractions[0] > 0:
        raise MrbenchError(
            f"--split {','.join(f'{f:g}' for f in fractions)}: {n} subject(s) leave none for training; "
            "import more subjects or change --split"
        )
    split = {}
    for rank, i in enumerate(order):
        split[subjects[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split
