"""The ``mrbench`` command line (click).

Bad input never shows a traceback: a :class:`~mrbench.errors.MrbenchError`
anywhere below a command becomes one line ``Error: …`` on stderr and exit code 2
(click's own usage errors use the same code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import MrbenchError, RunDiverged, RunInterrupted, RunStopped


class _UserError(click.ClickException):
    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """A click group that turns MrbenchError into a one-line error with exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MrbenchError as exc:  # 2: bad input; 4: a write failed (StorageError)
            raise _UserError(str(exc), getattr(exc, "exit_code", 2)) from None


@click.group(cls=_Group)
@click.version_option(package_name="mrbench")
def main():
    """mrbench: which training regime reconstructs best, on seen and unseen MRI contexts."""


@main.group(cls=_Group)
def data():
    """Create and inspect fastMRI-format datasets."""


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _whole_numbers(option: str, value: str | None) -> list[int] | None:
    """A non-empty comma-separated list of whole numbers ≥ 0 (None stays None); else a one-line error."""
    if value is None:
        return None
    try:
        numbers = [int(s) for s in _csv(value)]
    except ValueError:
        raise MrbenchError(f"{option}: expected comma-separated whole numbers, got {value!r}") from None
    if not numbers:
        raise MrbenchError(f"{option}: give at least one number, got {value!r}")
    if any(n < 0 for n in numbers):
        raise MrbenchError(f"{option}: must be ≥ 0, got {value!r}")
    return numbers


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


@data.command("import")
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="A new (or empty) folder.")
@click.option(
    "--format", "fmt", default=None, help="nifti, dicom, ismrmrd or twix; guessed from the files when not given."
)
@click.option("--pattern", default=None, help="Path with {subject} and {contrast}, e.g. '{subject}-{contrast}.nii.gz'.")
@click.option("--layout", "preset", default=None, help="A named pattern: ixi or brats.")
@click.option(
    "--contrast",
    "contrast_args",
    multiple=True,
    metavar="NAME=MATCH",
    help="Contrast NAME is the part/SeriesDescription containing MATCH (=MATCH: equal); repeatable; selects.",
)
@click.option(
    "--split", "split_text", default="0.7,0.15,0.15", show_default=True, help="train,val,test fractions, by subject."
)
@click.option("--seed", default=0, show_default=True, type=int, help="The split's and the simulation's seed.")
@click.option(
    "--size", default=0, show_default=True, type=int, help="Magnitude sources: square matrix (0 = the source's)."
)
@click.option("--slices", default=0, show_default=True, type=int, help="Slices per volume from its centre (0 = all).")
@click.option(
    "--plane",
    default="axial",
    show_default=True,
    type=click.Choice(["axial", "coronal", "sagittal", "acquired"]),
    help="Slice orientation (acquired: the plane of the fewest slices).",
)
@click.option("--fit", default="resample", show_default=True, type=click.Choice(["resample", "crop"]))
@click.option("--frame", default=None, type=int, help="The frame of a 4-D volume.")
@click.option(
    "--phase/--no-phase", default=False, show_default=True, help="Magnitude sources: a smooth synthetic phase."
)
@click.option(
    "--coils",
    default=0,
    show_default=True,
    type=int,
    help="Magnitude: simulated coils (0 = single-coil); raw: SVD compression to N coils (0 = all).",
)
@click.option("--snr", default=None, type=float, help="Magnitude sources: add complex noise at this SNR.")
@click.option(
    "--params",
    "params_args",
    multiple=True,
    metavar="CONTRAST=TR:TE:TI:FLIP[:B0]",
    help="Sequence numbers (ms, ms, ms, degrees, T; empty = unknown) for sources without them; repeatable.",
)
@click.option("--quiet", is_flag=True)
def data_import(
    src,
    out,
    fmt,
    pattern,
    preset,
    contrast_args,
    split_text,
    seed,
    size,
    slices,
    plane,
    fit,
    frame,
    phase,
    coils,
    snr,
    params_args,
    quiet,
):
    """Import NIfTI, DICOM, ISMRMRD or Siemens twix files as a fastMRI-layout dataset."""
    from tqdm import tqdm

    from .data.importers.base import ImportOptions
    from .data.importers.build import import_dataset, parse_params
    from .data.importers.layout import Layout

    try:
        split = tuple(float(x) for x in _csv(split_text))
    except ValueError:
        raise MrbenchError(f"--split: expected three numbers train,val,test, got {split_text!r}") from None
    options = ImportOptions(
        size=size,
        slices=slices,
        plane=plane,
        fit=fit,
        frame=frame,
        phase=phase,
        coils=coils,
        snr=snr,
        seed=seed,
        split=split,
        params=parse_params(params_args),
    )
    layout = Layout.build(pattern, preset, contrast_args)
    with tqdm(desc="volumes", unit="vol", disable=quiet, file=sys.stderr) as bar:
        report = import_dataset(src, out, fmt=fmt, layout=layout, options=options, progress=bar.update)
    for note in report.notes:
        click.echo(f"note: {note}")
    counts = {}
    for v in report.volumes:
        counts[(v["split"], v["contrast"])] = counts.get((v["split"], v["contrast"]), 0) + 1
    kinds = sorted({v["kspace_source"] for v in report.volumes})
    summary = ", ".join(f"{split}/{c} {n}" for (split, c), n in sorted(counts.items()))
    click.echo(
        f"wrote {len(report.volumes)} {report.format} volumes to {out} ({summary}); k-space {' and '.join(kinds)}"
    )


@data.command("info")
@click.argument("directory", type=click.Path())
@click.option("--no-check", is_flag=True, help="Skip scanning every k-space value for NaN/Inf.")
def data_info(directory, no_check):
    """Contrasts, volumes, slices and shapes per split; checks every file."""
    from .data.index import scan

    index = scan(directory, check=not no_check)
    rows = index.summary()
    cols = ["split", "contrast", "volumes", "slices", "kspace", "coils", "target", "padded", "TR/TE/TI/flip B0 family"]
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))
    total = sum(r["volumes"] for r in rows)
    checked = "structure checked" if no_check else "all values checked"
    problems = index.training_problems()
    for note in index.notes():
        click.echo(f"note: {note}")
    for p in problems:
        click.echo(f"problem: {p}")
    if problems:
        raise MrbenchError(
            f"{directory}: {total} volumes ({checked}), but mrbench run would refuse it ({len(problems)} problem(s) above)"
        )
    click.echo(f"{total} volumes in {directory} ({checked}; usable by mrbench run)")


# ---------------------------------------------------------------------- runs


@main.command("run")
@click.argument("method")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML experiment/run file.")
@click.option("--profile", help="Merge the config file's [profile.NAME] over it (e.g. cpu).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.budget=500."
)
@click.option("--scarcity", type=int, help="Scarcity level N of the data.scarce tasks.")
@click.option("--seed", type=int, help="Run seed (train.seed).")
@click.option("--threads", type=int, help="torch CPU threads (train.threads; 0 = all cores).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="train.device")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from checkpoints/last.pt.")
@click.option("--overwrite", is_flag=True, help="Redo an existing run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(method, config_file, profile, overrides, scarcity, seed, threads, device, resume, overwrite, quiet):
    """Train METHOD, evaluate it and store the run (runs/<experiment>/<run>/)."""
    from .config import load_config
    from .runner import ALREADY_DONE, run

    extra = list(overrides)
    if seed is not None:
        extra.append(f"train.seed={seed}")
    if threads is not None:
        extra.append(f"train.threads={threads}")
    if device is not None:
        extra.append(f"train.device={device}")
    cfg = load_config(config_file, extra, profile, method=method, scarcity=scarcity)
    try:
        store, status = run(cfg, resume=resume, overwrite=overwrite, quiet=quiet)
    except RunDiverged as div:
        click.echo(f"Diverged: {div}", err=True)
        raise click.exceptions.Exit(RunDiverged.exit_code) from None
    except RunInterrupted as sig:
        click.echo(
            f"Interrupted: {sig}; continue with: {_resume_command(method, config_file, profile, extra, scarcity, quiet)}",
            err=True,
        )
        raise click.exceptions.Exit(sig.exit_code) from None
    except RunStopped as stop:
        again = _resume_command(method, config_file, profile, extra, scarcity, quiet)
        click.echo(f"{stop}; continue with: {again}")
        return
    if store is None:  # a torchrun rank other than 0: it trained beside rank 0, which reports
        return
    if status == ALREADY_DONE:
        click.echo(f"{store.path}: already done, nothing to run")
        return
    _print_metrics(store.read_json("metrics.json"), store.path)


def _resume_command(method, config_file, profile, overrides, scarcity, quiet) -> str:
    """The ``mrbench run`` command that continues this run: the same method, file, ``--set``
    items and level, with ``--resume`` and without ``train.stop_after`` (which would stop it again)."""
    import shlex

    cmd = ["mrbench", "run", method]
    if config_file:
        cmd += ["--config", str(config_file)]
    if profile:
        cmd += ["--profile", profile]
    for item in overrides:
        if not item.replace(" ", "").startswith("train.stop_after="):
            cmd += ["--set", item]
    if scarcity is not None:
        cmd += ["--scarcity", str(scarcity)]
    cmd += ["--resume"] + (["--quiet"] if quiet else [])
    return shlex.join(cmd)


def _print_metrics(metrics: dict, path) -> None:
    click.echo(f"{path}")
    choice = metrics.get("adaptation")
    if choice and choice.get("selected_on") == "seen-validation":
        lr = f" lr {choice['lr']:g}" if choice.get("lr") else ""
        click.echo(f"  adaptation chosen on seen validation: {choice['rule']}{lr}, {choice['steps']} steps (marked *)")
    for name, c in metrics["contexts"].items():
        for steps, res in sorted(c["steps"].items(), key=lambda kv: int(kv[0])):
            m, zf = res["mean"], res["zero_filled"]
            mark = "*" if not c["seen"] and c.get("chosen_steps") == int(steps) else ""
            tag = "seen" if c["seen"] else f"unseen, {steps} steps{mark}"
            click.echo(
                f"  {name:28s} ({tag:16s}) PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  NMSE {m['nmse']:.4f}"
                f"   (zero-filled {zf['psnr']:.2f} dB / {zf['ssim']:.4f})"
            )


@main.command("evaluate")
@click.argument("run_dir", type=click.Path())
@click.option("--contexts", type=click.Choice(["seen", "unseen", "all"]), default="all", show_default=True)
@click.option(
    "--adapt-steps",
    default=None,
    help="Comma-separated adaptation step counts for unseen contexts (0 always included).",
)
@click.option(
    "--support-sizes",
    default=None,
    help="Instead: unseen-context metrics against the support size (comma-separated, in eval.support_unit), "
    "for RUN_DIR or every finished run below it; stored in metrics.json, plotted by compare.",
)
def evaluate_cmd(run_dir, contexts, adapt_steps, support_sizes):
    """Evaluate a run's best checkpoint on the test volumes; rewrites metrics.json."""
    from .evaluation.trained import evaluate_run_dir

    if not Path(run_dir).is_dir():
        raise MrbenchError(f"run directory {run_dir} does not exist")
    sizes = _whole_numbers("--support-sizes", support_sizes)
    if sizes is not None:
        from .evaluation.trained import support_curves
        from .reports.results import load_runs

        if min(sizes) < 1:
            raise MrbenchError("--support-sizes: expected whole numbers ≥ 1, e.g. 1,2,4,8")
        for run in load_runs([run_dir]):
            if run.method == "zero-filled":
                continue
            support_curves(run.path, sizes)
            click.echo(f"{run.path}: support curves for {', '.join(map(str, sizes))}")
        return
    steps = _whole_numbers("--adapt-steps", adapt_steps)
    metrics = evaluate_run_dir(run_dir, contexts, steps)
    _print_metrics(metrics, run_dir)
    if steps is not None and not any(not c["seen"] for c in metrics["contexts"].values()):
        click.echo(
            "note: --adapt-steps has no effect: no unseen contexts configured (data.unseen in the run's config.json)"
        )


@main.command("ls")
@click.argument("runs_dir", default="runs", type=click.Path())
def ls_cmd(runs_dir):
    """Runs with status, method, scarcity and key metrics."""
    from .store import RunStore, read_json

    root = Path(runs_dir)
    if not root.is_dir():
        raise MrbenchError(f"runs directory {root} does not exist")
    rows = [["run", "status", "method", "scarcity", "seen PSNR", "seen SSIM", "unseen PSNR"]]
    for cfg_file in sorted(root.rglob("config.json")):
        store = RunStore(cfg_file.parent)
        try:
            cfg = read_json(cfg_file)
        except MrbenchError:
            continue
        seen = unseen = {}
        status = store.status()
        if store.metrics_path.exists():
            try:
                summary = read_json(store.metrics_path).get("summary", {})
                seen = summary.get("seen", {}).get("0", {})
                unseen_steps = summary.get("unseen", {})
                unseen = unseen_steps[max(unseen_steps, key=int)] if unseen_steps else {}
            except (MrbenchError, ValueError, AttributeError, KeyError, TypeError):
                status = "metrics.json unreadable (re-run `mrbench evaluate` on it)"
                seen = unseen = {}
        rows.append(
            [
                str(store.path.relative_to(root)),
                status,
                cfg.get("method", "?"),
                str(cfg.get("scarcity", "?")),
                f"{seen['psnr']:.2f}" if seen else "-",
                f"{seen['ssim']:.4f}" if seen else "-",
                f"{unseen['psnr']:.2f}" if unseen else "-",
            ]
        )
    if len(rows) == 1:
        click.echo(f"no runs in {root}")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------------- experiments


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


@main.command("sweep")
@click.argument("experiment_file", type=click.Path(dir_okay=False))
@click.option("--jobs", default=1, show_default=True, type=int, help="Runs in parallel (local executor).")
@click.option("--threads", default=0, type=int, help="torch threads per run (default: cores / jobs).")
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: subprocesses here; slurm: write (and submit, if sbatch exists) an array job.",
)
@click.option(
    "--profile",
    help="Merge the file's [profile.NAME] over it (e.g. cpu, gpu; several comma-separated, in order: cpu,ladder).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key in every run.")
@click.option(
    "--seeds",
    default=None,
    help="Comma-separated seeds instead of the file's [sweep] seeds (e.g. 3,4 to add two seeds to a grid).",
)
@click.option("--partition", default="", help="slurm: #SBATCH --partition.")
@click.option("--time", "time_limit", default="", help="slurm: #SBATCH --time per run (e.g. 04:00:00).")
@click.option("--mem", default="", help="slurm: #SBATCH --mem per run (e.g. 16G).")
@click.option("--gpus-per-run", default=0, type=int, help="slurm: --gres=gpu:N and train.device=cuda.")
@click.option(
    "--check",
    is_flag=True,
    help="Run nothing: check the finished runs' training slice lists (e.g. after a Slurm array).",
)
@click.option("--quiet", is_flag=True, help="Only the summary.")
def sweep_cmd(
    experiment_file,
    jobs,
    threads,
    executor,
    profile,
    overrides,
    seeds,
    partition,
    time_limit,
    mem,
    gpus_per_run,
    check,
    quiet,
):
    """Run the grid methods × scarcity levels × seeds of EXPERIMENT_FILE ([sweep] table).

    Runs with DONE are skipped and incomplete ones resumed, so re-running a sweep
    after a crash finishes it without redoing work; --seeds 3,4 adds seeds to a finished
    grid without touching its runs."""
    from .sweep import cores, load_experiment, run_sweep, submit_slurm, write_slurm

    if jobs < 1:
        raise MrbenchError(f"--jobs must be ≥ 1, got {jobs}")
    if threads < 0:
        raise MrbenchError(f"--threads must be ≥ 0, got {threads}")
    exp = load_experiment(experiment_file, overrides, seeds=_whole_numbers("--seeds", seeds), profile=profile)
    if check:
        from .store import RunStore
        from .sweep import check_slice_lists, slice_summary

        problems = check_slice_lists(exp)
        done = sum(RunStore(cfg.run_dir).is_done() for cfg in exp.configs.values())
        click.echo(f"{exp.directory}: {done} of {len(exp.configs)} runs done")
        for line in problems:
            click.echo(f"  slice lists differ: {line}")
        if not problems:
            click.echo(f"  {slice_summary(exp)}")
        if problems:
            raise click.exceptions.Exit(1)
        return
    if gpus_per_run < 0:
        raise MrbenchError(f"--gpus-per-run must be ≥ 0, got {gpus_per_run}")
    if executor == "slurm":
        from .sweep import SlurmOptions

        opts = SlurmOptions(partition, time_limit, mem, gpus_per_run)
        script, commands = write_slurm(exp, jobs, threads or max(1, cores() // jobs), opts)
        submitted = submit_slurm(script)
        click.echo(
            f"wrote {script} and {commands}; " + (submitted or f"sbatch not found: submit with `sbatch {script}`")
        )
        return
    result = run_sweep(exp, jobs, threads=threads, report=(lambda line: None) if quiet else _echo_err)
    _print_sweep_summary(exp, result)
    if not result.ok:
        raise click.exceptions.Exit(1)


def _print_sweep_summary(exp, result) -> None:
    from .sweep import slice_summary

    diverged = result.count("diverged")
    click.echo(
        f"{exp.directory}: {result.count('done')} done, {result.count('failed')} failed, "
        + (f"{diverged} diverged, " if diverged else "")
        + f"{result.count('skipped')} skipped (already done) in {result.wall_seconds:.0f} s"
    )
    runs, train, evaluate = result.time_split()
    if runs:
        click.echo(
            f"  time in the {runs} finished runs: {train:.0f} s training, {evaluate:.0f} s evaluating "
            f"({100 * evaluate / max(train + evaluate, 1e-9):.0f} %; each run's own clock, summed)"
        )
    loaded, saved, trained = result.shared_split()
    if loaded:
        click.echo(
            f"  shared phases: {loaded} loaded from other cells instead of trained ({saved} slices, "
            f"{100 * saved / max(saved + trained, 1):.0f} % of the training the finished runs needed)"
        )
    for o in result.outcomes:
        if o.status == "failed":
            click.echo(f"  failed: {o.run_dir.name}: {o.message}")
    if result.slice_problems:
        for line in result.slice_problems:
            click.echo(f"  slice lists differ: {line}")
    else:
        click.echo(f"  {slice_summary(exp)}")


@main.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out", type=click.Path(dir_okay=False), help="HTML file (default: <experiment>/report.html, or report.html)."
)
@click.option(
    "--baselines", type=click.Path(), help="Directory of reference summary.csv files to overlay (e.g. baselines/)."
)
@click.option(
    "--reference", default=None, help="Method the heat map's gains are relative to (default: joint, when present)."
)
@click.option("--metric", type=click.Choice(["psnr", "ssim", "nmse"]), default="psnr", show_default=True)
@click.option("--title", default=None, help="Report title.")
def compare_cmd(paths, out, baselines, reference, metric, title):
    """Write one self-contained interactive HTML report (Bokeh) of the runs in PATHS
    (run directories or experiment directories), plus its summary.csv."""
    from .reports import results as R
    from .reports.compare import write_report

    runs = R.load_runs(paths)
    if not runs:
        raise MrbenchError(f"no finished runs (with DONE and metrics.json) in {', '.join(paths)}")
    base = R.read_baselines(baselines) if baselines else None
    if out is None:
        out = (
            Path(paths[0]) / "report.html"
            if len(paths) == 1 and not (Path(paths[0]) / "config.json").exists()
            else Path("report.html")
        )
    experiments = sorted({r.experiment for r in runs})
    path = write_report(
        runs,
        out,
        baselines=base,
        reference=reference or "joint",
        reference_required=reference is not None,
        metric=metric,
        title=title or f"mrbench: {', '.join(experiments)}",
    )
    click.echo(f"wrote {path} ({len(runs)} runs) and {Path(path).with_name('summary.csv')}")
    diverged = R.diverged_runs(paths)
    if diverged:
        click.echo(
            f"note: {len(diverged)} diverged run(s) not averaged in: {', '.join(sorted(r.name for r in diverged))}"
        )


@main.command("table")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md", show_default=True)
@click.option(
    "--reference", default=None, help="Method for the significance tests and win rates (default: joint, when present)."
)
@click.option("--metrics", default="psnr,ssim", show_default=True, help="Comma-separated: psnr, ssim, nmse.")
@click.option(
    "--steps", type=int, default=None, help="Adaptation steps shown for unseen contexts (default: the largest)."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option(
    "--claims",
    "claims_file",
    type=click.Path(dir_okay=False),
    help="Instead: the claims ledger of this experiment file's [[claims]] "
    "(supported / refuted / inconclusive / not assessable).",
)
@click.option(
    "--ladder",
    "ladders",
    multiple=True,
    type=click.Path(),
    help="With --claims: a budget ladder's runs (e.g. runs/demo-ladder); their 2x rungs gate the claims' cells.",
)
@click.option(
    "--resolve",
    type=float,
    default=None,
    metavar="DELTA",
    help="Also say how many seeds would detect a difference of DELTA (80 % power) in each verdict.",
)
@click.option(
    "--save-records",
    "save_records",
    type=click.Path(dir_okay=False),
    help="Also write the runs' per-volume records to this file (records.csv.gz: what baselines/ publishes).",
)
def table_cmd(paths, fmt, reference, metrics, steps, out, claims_file, ladders, resolve, save_records):
    """Paper-style table of the finished runs in PATHS (experiment or run directories, or
    records.csv.gz files / directories holding one, as baselines/ keeps them)."""
    from . import atomic
    from .reports import results as R
    from .reports.record_file import read_records, records_path, write_records
    from .reports.table import build_tables, render

    if resolve is not None and not resolve > 0:
        raise MrbenchError(f"--resolve must be a difference > 0 in the metric's units, got {resolve}")

    def load(where, save=None):
        """Records and diverged runs of run directories or of records files."""
        if where and all(records_path(p) for p in where):
            return read_records(where)
        if any(records_path(p) for p in where):
            raise MrbenchError("PATHS mixes records files and run directories; give one kind")
        runs = R.load_runs(where)
        if not runs:
            raise MrbenchError("no finished runs (directories with DONE and metrics.json) to tabulate")
        diverged = R.diverged_runs(where)
        if save:
            write_records(runs, diverged, save)
        return R.records(runs), diverged

    from .reports import claims as C

    claims = (
        C.read_claims(claims_file) if claims_file else None
    )  # a bad claims file is reported before the runs are read
    records, diverged = load(paths, save_records)
    if claims:
        ladder = load(ladders)[0] if ladders else None
        names = ", ".join(sorted(set(records["experiment"]))) or "?"
        table = C.ledger(claims, records, diverged, names, resolve=resolve, ladder=ladder)
        text = C.to_markdown(table) if fmt == "md" else table.to_csv(index=False)
        if out:
            atomic.write_text(out, text)
            click.echo(f"wrote {out}")
        else:
            click.echo(text, nl=False)
        return
    tables = build_tables(
        records,
        reference=reference or "joint",
        reference_required=reference is not None,
        metrics=_csv(metrics),
        steps=steps,
        diverged=diverged,
        resolve=resolve,
    )
    text = render(tables, fmt)
    if out:
        atomic.write_text(out, text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@main.command("demo")
@click.option("--jobs", default=0, type=int, help="Runs in parallel (default: one per core, one thread each).")
@click.option(
    "--out",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Runs root (writes <out>/demo-quick/; --profile full: <out>/demo/).",
)
@click.option(
    "--data",
    "data_root",
    default="data/synth-brain-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo's synth-brain lives (synthesised if missing).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key in every run (e.g. train.device=cuda).",
)
@click.option(
    "--seeds",
    default=None,
    help="Comma-separated seeds instead of the demo's 0,1,2 (e.g. 0 for a quick single-seed look).",
)
@click.option(
    "--profile",
    help="The demo file's [profile.NAME] (full: the 135-run grid, ~1 h; gpu: CUDA at a GPU budget; "
    "several comma-separated, e.g. full,gpu).",
)
@click.option("--quiet", is_flag=True)
def demo_cmd(jobs, out, data_root, overrides, seeds, profile, quiet):
    """The main job: synthesise the built-in data, train every method at scarcity levels
    0 (the scarcity claims' rows at 0 and 2; --profile full: the whole grid at 0–2), write
    <out>/demo-quick/report.html and print the table."""
    from .demo import run_demo

    if jobs < 0:
        raise MrbenchError(f"--jobs must be ≥ 0, got {jobs}")
    report = (lambda line: None) if quiet else _echo_err
    outcome = run_demo(
        out=out,
        data_root=data_root,
        jobs=jobs,
        overrides=overrides,
        report=report,
        seeds=_whole_numbers("--seeds", seeds),
        profile=profile,
    )
    click.echo(outcome.table_md, nl=False)
    _print_sweep_summary(outcome.experiment, outcome.sweep)
    click.echo(f"report: {outcome.report}\ntables: {', '.join(str(p) for p in outcome.table_files)}")
    click.echo(f"demo wall time: {outcome.seconds:.0f} s")
    if not outcome.sweep.ok:
        raise click.exceptions.Exit(1)
