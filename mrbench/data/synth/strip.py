"""A PNG strip of one subject's contrasts (the picture the README shows)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ... import atomic
from ..fastmri_format import read_meta, read_volume


def render_strip(files: list[str | os.PathLike], out: str | os.PathLike, slice_idx: int | None = None) -> Path:
    """Middle slice (or ``slice_idx``) of each file's target, side by side, labelled.

    Each panel is scaled to its own 99.5th percentile, as a radiologist's
    window would be; the label is the file's ``acquisition``.
    """
    from PIL import Image, ImageDraw

    panels = []
    for f in files:
        meta = read_meta(f)
        _, target = read_volume(meta)
        s = meta.num_slices // 2 if slice_idx is None else slice_idx
        img = target[s]
        img = np.clip(img / max(float(np.percentile(img, 99.5)), 1e-12), 0, 1)
        pil = Image.fromarray((img * 255).astype(np.uint8), mode="L").convert("RGB")
        pil = pil.resize((max(256, pil.width), max(256, pil.height)), Image.Resampling.BICUBIC)
        ImageDraw.Draw(pil).text((6, 4), meta.contrast, fill=(255, 220, 0))
        panels.append(pil)
    gap = 4
    strip = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), max(p.height for p in panels)))
    x = 0
    for p in panels:
        strip.paste(p, (x, 0))
        x += p.width + gap
    out = Path(out)
    with atomic.atomic_path(out) as tmp:
        strip.save(tmp, format="PNG")
    return out
