"""The ``mrbench`` command line (click).

Bad input never shows a traceback: a :class:`~mrbench.errors.MrbenchError`
anywhere below a command becomes one line ``Error: …`` on stderr and exit code 2
(click's own usage errors use the same code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import MrbenchError


class _UserError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """A click group that turns MrbenchError into a one-line error with exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MrbenchError as exc:
            raise _UserError(str(exc)) from None


@click.group(cls=_Group)
@click.version_option(package_name="mrbench")
def main():
    """mrbench: which training regime reconstructs best, on seen and unseen MRI contexts."""


@main.group(cls=_Group)
def data():
    """Create and inspect fastMRI-format datasets."""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_contrast_arg(text: str):
    """``AXT1`` or ``NAME:kind:tr=..:te=..[:ti=..][:flip=..]`` (a new contrast)."""
    parts = text.split(":")
    if len(parts) == 1:
        return parts[0]
    spec: dict = {"name": parts[0], "sequence": parts[1]}
    for p in parts[2:]:
        key, sep, val = p.partition("=")
        if not sep:
            raise MrbenchError(f"--contrasts: {text!r}: expected key=value after the sequence kind, got {p!r}")
        try:
            spec[key] = float(val)
        except ValueError:
            raise MrbenchError(f"--contrasts: {text!r}: {key} must be a number, got {val!r}") from None
    return spec


@data.command("synth")
@click.option("--out", default="data/synth-brain", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--contrasts",
    default="AXT1,AXT2,AXPD,AXFLAIR",
    show_default=True,
    help="Comma-separated names, or new contrasts as NAME:se|ir|gre:tr=MS:te=MS[:ti=MS][:flip=DEG].",
)
@click.option("--subjects", default=12, show_default=True, type=int, help="Split 2/3 train, 1/6 val, 1/6 test.")
@click.option("--size", default=128, show_default=True, type=int, help="Matrix size (square).")
@click.option("--slices", default=24, show_default=True, type=int, help="Axial slices per volume.")
@click.option("--coils", default=1, show_default=True, type=int, help="1 = single-coil; >1 simulates sensitivities.")
@click.option("--snr", default=30.0, show_default=True, type=float, help="Mean brain signal / noise std.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--source", default="mni", show_default=True, type=click.Choice(["mni", "phantom"]))
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in --out.")
@click.option("--quiet", is_flag=True)
def data_synth(out, contrasts, subjects, size, slices, coils, snr, seed, source, jobs, overwrite, quiet):
    """Write the built-in physics-based multi-contrast brain (synth-brain)."""
    from tqdm import tqdm

    from .data.synth.build import SynthSpec, is_up_to_date, synthesize
    from .data.synth.strip import render_strip

    spec = SynthSpec(
        contrasts=tuple(_parse_contrast_arg(c) for c in _csv(contrasts)),
        subjects=subjects,
        size=size,
        slices=slices,
        coils=coils,
        snr=snr,
        seed=seed,
        source=source,
    )
    if jobs < 1:
        raise MrbenchError(f"--jobs must be ≥ 1, got {jobs}")
    if is_up_to_date(spec, out):
        click.echo(f"{out}: up to date (same parameters)")
        return
    with tqdm(total=subjects, desc="subjects", unit="subj", disable=quiet, file=sys.stderr) as bar:
        synthesize(spec, out, overwrite=overwrite, jobs=jobs, progress=bar.update)
    test_files = sorted(Path(out, "test").glob(f"synth_*_{len(spec.splits()) - 1:03d}.h5"))
    order = {name: i for i, name in enumerate(spec.sequences())}
    test_files.sort(key=lambda p: order.get(p.stem.split("_")[1], 99))
    strip = render_strip(test_files, Path(out) / "contrasts.png")
    n_files = subjects * len(spec.sequences())
    click.echo(f"wrote {n_files} volumes to {out} (train/val/test); contrast strip: {strip}")


@data.command("info")
@click.argument("directory", type=click.Path())
@click.option("--no-check", is_flag=True, help="Skip scanning every k-space value for NaN/Inf.")
def data_info(directory, no_check):
    """Contrasts, volumes, slices and shapes per split; checks every file."""
    from .data.index import scan

    index = scan(directory, check=not no_check)
    rows = index.summary()
    cols = ["split", "contrast", "volumes", "slices", "kspace", "coils", "target", "padded"]
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))
    total = sum(r["volumes"] for r in rows)
    checked = "structure checked" if no_check else "all values checked"
    click.echo(f"{total} volumes in {directory} ({checked})")
