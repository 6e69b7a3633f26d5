"""``python -m mrbench.warm``: import every module mrbench (and its test suite) loads, once.

Why: ``pip install`` byte-compiles every file of every package it installs — for torch's
thousands of modules that is half of a fresh install's time (75–95 s → 36–46 s without,
issue 15). The Makefile installs with ``--no-compile`` and then runs this module with
bytecode writing on, so only the modules that are really imported get their ``.pyc``
(written once, 14–19 s on the 2-core VM), and later processes — every sweep run, test worker and CLI call —
start from bytecode even where ``PYTHONDONTWRITEBYTECODE`` is set.

Optional packages (the test extras, fastMRI's reader) are imported when present.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

from .launcher import PRELOAD

#: imported inside functions by mrbench (so not reached by importing its modules) or by the
#: tests, after what the sweep's forkserver preloads
LAZY = [
    *PRELOAD,
    "torch.func",
    "torch.distributed.run",
    "torch.utils.tensorboard",
    "scipy.stats",
    "bokeh.plotting",
    "bokeh.embed",
    "bokeh.models",
    "pandas",
    "h5py",
    "tqdm",
    "click.testing",
]

#: present only with the test extras; skipped when missing
OPTIONAL = ["pytest", "xdist", "fastmri.data.mri_data", "fastmri.models", "skimage.metrics"]


def modules() -> list[str]:
    """mrbench's own modules (the optional data converters that need extra packages excepted
    by :func:`warm` when their import fails), then :data:`LAZY` and :data:`OPTIONAL`."""
    import mrbench

    own = [
        m.name
        for m in pkgutil.walk_packages(mrbench.__path__, "mrbench.")
        if m.name != __name__ and not m.name.endswith("__main__")
    ]  # __main__ would run the CLI
    return own + LAZY + OPTIONAL


def warm() -> tuple[int, list[str]]:
    """Import :func:`modules`; the number imported and the names that could not be."""
    done, missing = 0, []
    for name in modules():
        try:
            importlib.import_module(name)
            done += 1
        except Exception:  # an optional dependency absent: nothing to warm
            missing.append(name)
    return done, missing


if __name__ == "__main__":
    start = time.perf_counter()
    n, missing = warm()
    note = f"; not importable here: {', '.join(missing)}" if missing else ""
    print(f"mrbench.warm: {n} modules imported in {time.perf_counter() - start:.1f} s{note}", file=sys.stderr)
