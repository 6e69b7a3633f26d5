"""NIfTI magnitude volumes (IXI, BraTS, any ``.nii``/``.nii.gz``) via nibabel.

A file is one (subject, contrast) volume; ``--pattern``/``--layout`` name them (without a
pattern the file's stem is the subject, and the contrast is the ``--contrast`` whose MATCH the
file name contains, or the one contrast ``MR``). NIfTI carries no sequence parameters: ``--params CONTRAST=tr:te:ti:flip`` supplies
them, else the header has none and conditioning on metadata refuses the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import MrbenchError
from .base import Importer, Source, fail
from .magnitude import canonical, fit, plane_slices, simulate_kspace


class NiftiImporter(Importer):
    name = "nifti"
    package = "nibabel"
    suffixes = (".nii", ".nii.gz")

    def discover(self, src: Path, files: list[Path], layout) -> list[Source]:
        sources = []
        for path in (p for p in files if p.name.endswith(self.suffixes)):
            rel = path.relative_to(src).as_posix()
            found = layout.match(rel)
            if found is None:
                continue
            subject, part = found
            stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
            if subject is None:
                subject = stem
            # without a {contrast} part, --contrast matches the file name; with neither, one contrast "MR"
            contrast = layout.contrast(part if part is not None else stem) if layout.contrasts or part else "MR"
            if contrast is None:
                continue
            sources.append(Source(subject=subject, contrast=contrast, paths=(path,)))
        return sources

    def load(self, source: Source):
        nib = self.require()
        path = source.paths[0]
        try:
            img = nib.load(str(path))
            index = self._frame(tuple(img.shape), path)
            data = np.asanyarray(img.dataobj[index])  # reads this frame only, not every frame of a 4-D file
        except MrbenchError:
            raise
        except Exception as exc:  # nibabel raises many types for a bad file
            raise fail(path, f"not a readable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        try:
            volume, voxel = canonical(data.astype(np.float32), img.affine)
        except MrbenchError as exc:
            raise fail(path, str(exc)) from None
        o = self.options
        stack, pixel = plane_slices(volume, voxel, o.plane, o.slices, str(path))
        stack = fit(stack, pixel, o.size, o.fit)
        extra = {"source_file": path.name, "source_shape": list(img.shape), "source_voxel_mm": [float(v) for v in voxel]}
        return simulate_kspace(stack, source, o, extra)

    def _frame(self, shape: tuple[int, ...], path: Path) -> tuple:
        """The index of the volume to read: everything of a 3-D file; of a 4-D (or higher) one the
        ``--frame``-th volume (needed when there is more than one; frames count over the extra axes)."""
        if len(shape) < 3:
            raise fail(path, f"is {len(shape)}-D {shape}; a volume needs 3 dimensions")
        extra = shape[3:]
        frames = int(np.prod(extra)) if extra else 1
        if not extra:
            return (Ellipsis,)
        frame = self.options.frame
        if frames > 1 and frame is None:
            raise fail(path, f"is {len(shape)}-D {shape} with {frames} frames; pass --frame N (0–{frames - 1})")
        frame = frame or 0
        if not 0 <= frame < frames:
            raise fail(path, f"--frame {frame}: the file has frames 0–{frames - 1}")
        return (slice(None),) * 3 + tuple(int(i) for i in np.unravel_index(frame, extra))
