"""Experiments and sweeps: the grid methods × scarcity levels × seeds of one TOML file.

An experiment file is a run configuration (the sections ``mrbench run --config``
reads) plus a ``[sweep]`` table::

    [sweep]
    scarcity = [0, 1, 2]
    seeds = [0]
    methods = [
      "stl",                                              # a method with the file's settings
      { method = "mtl", name = "mtl-IIVV-dwa", set = ["model.blocks=IIVV", "mtl.weighting=dwa"] },
    ]

Each (entry, level, seed) *cell* is one run directory,
``<run.out>/<run.experiment>/<name>-s<N>-seed<S>`` (an entry without ``name``
keeps the default run name). Every cell's configuration is built and checked
before anything runs, so a typo fails at once, not an hour in.

:func:`run_sweep` skips cells with ``DONE``, resumes incomplete ones and runs
the rest as ``python -m mrbench run …`` subprocesses, ``jobs`` at a time with
``threads = cores / jobs`` each (a crashing run cannot take the others down;
its output is kept in ``<experiment>/logs/<run>.log``). Afterwards
:func:`check_slice_lists` compares the manifests' training slice-list hashes:
every run of one scarcity level must have trained on exactly the same slices.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic
from .config import SAMPLING, Config, load_config, read_experiment, training_suffix
from .errors import MrbenchError, RunLocked
from .launcher import launch
from .methods import METHODS
from .store import LOCK_HELD_ENV, RunStore, run_lock


@dataclass(frozen=True)
class Entry:
    """One ``[sweep].methods`` entry: a method and the overrides that make it a variant."""

    method: str
    name: str = ""
    overrides: tuple[str, ...] = ()
    scarcity: tuple[int, ...] = ()  # the levels this entry runs at ((): every [sweep] scarcity level)


@dataclass(frozen=True)
class Cell:
    entry: Entry
    scarcity: int
    seed: int
    sampling: str = ""  # a [sweep].sampling value, "" = the file's train.sampling
    budget: int = 0  # a [sweep].budgets value (the convergence ladder), 0 = the file's train.budget
    lr: float = 0.0  # a [sweep].lrs value (a learning-rate search, chosen on seen validation), 0 = the file's train.lr


@dataclass
class Experiment:
    path: Path
    entries: list[Entry]
    scarcity: list[int]
    seeds: list[int]
    overrides: tuple[str, ...] = ()  # sweep-wide --set items
    profile: str | None = None  # the file's [profile.<name>] every cell runs with
    configs: dict[Cell, Config] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        return list(self.configs)

    @property
    def directory(self) -> Path:
        """``<run.out>/<run.experiment>`` of the first cell (all cells share it, see load_experiment)."""
        cfg = next(iter(self.configs.values()))
        return Path(cfg.run.out) / cfg.run.experiment

    def command(self, cell: Cell, threads: int) -> list[str]:
        """The ``mrbench run`` command line of one cell."""
        cfg = self.configs[cell]
        sets = [*self.overrides, *cell.entry.overrides, *_axis_sets(cell), f"run.name={json.dumps(cfg.run_name)}"]
        cmd = [sys.executable, "-m", "mrbench", "run", cell.entry.method, "--config", str(self.path)]
        if self.profile:
            cmd += ["--profile", self.profile]
        for s in sets:
            cmd += ["--set", s]
        cmd += ["--scarcity", str(cell.scarcity), "--seed", str(cell.seed), "--resume", "--quiet"]
        if threads:
            cmd += ["--threads", str(threads)]
        return cmd


def _int_list(value, key: str) -> list[int]:
    value = value if isinstance(value, list) else [value]
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise MrbenchError(f"{key}: expected a list of whole numbers ≥ 0, got {value!r}")
    return sorted(set(value))


RUN_SUFFIX = re.compile(r"-s\d+-seed\d+$")


def _axis_sets(cell: Cell) -> list[str]:
    """The ``--set`` items a cell's sweep axes add (sampling rule, budget of the ladder,
    learning rate of the search)."""
    return (
        ([f"train.sampling={cell.sampling}"] if cell.sampling else [])
        + ([f"train.budget={cell.budget}"] if cell.budget else [])
        + ([f"train.lr={cell.lr!r}"] if cell.lr else [])
    )


def lr_suffix(lr: float) -> str:
    """The run-name part of a learning-rate search cell: ``-lr0.003``."""
    return f"-lr{lr:g}" if lr else ""


def _lr_list(value, key: str) -> list[float]:
    value = value if isinstance(value, list) else [value]
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in value):
        raise MrbenchError(f"{key}: expected learning rates in (0, 1), e.g. [1e-3, 3e-3, 1e-2], got {value!r}")
    return sorted(set(float(v) for v in value))


def _sampling_list(value, key: str) -> list[str]:
    """The task-sampling axis: rules every method of the grid is run with."""
    value = value if isinstance(value, list) else [value]
    if not value or any(v not in ("", *SAMPLING) for v in value):
        raise MrbenchError(f"{key}: expected a list of {', '.join(SAMPLING)}, got {value!r}")
    return list(dict.fromkeys(value))


def _entries(value, key: str) -> list[Entry]:
    if not isinstance(value, list) or not value:
        raise MrbenchError(f"{key}: expected a non-empty list of methods")
    out = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, dict):
            raise MrbenchError(f"{k}: expected a method name or a table {{method = ..., name = ..., set = [...]}}")
        extra = set(item) - {"method", "name", "set", "scarcity"}
        if extra:
            raise MrbenchError(f"{k}: unknown key(s) {', '.join(sorted(extra))} (valid: method, name, set, scarcity)")
        if not isinstance(item.get("method"), str):
            raise MrbenchError(f'{k}: needs method = "<name>"')
        name = item.get("name", "")
        if not isinstance(name, str) or "/" in name:
            raise MrbenchError(f"{k}.name: must be a plain string, got {name!r}")
        sets = item.get("set", [])
        if isinstance(sets, str):
            sets = [sets]
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise MrbenchError(f'{k}.set: expected a list of "key=value" strings')
        levels = _int_list(item["scarcity"], f"{k}.scarcity") if "scarcity" in item else []
        out.append(Entry(item["method"], name, tuple(sets), tuple(levels)))
    return out


def load_experiment(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    profile: str | None = None,
) -> Experiment:
    """Read an experiment file (with its ``[profile.<name>]`` merged in), expand its grid and
    build (and check) every cell's config; ``seeds`` replaces the file's ``[sweep] seeds``."""
    p = Path(path)
    values = read_experiment(p, profile, "experiment file")
    sweep = values.get("sweep", {})
    if not isinstance(sweep, dict):
        raise MrbenchError(f"{p}: [sweep] must be a table")
    extra = set(sweep) - {"scarcity", "seeds", "methods", "sampling", "budgets", "lrs"}
    if extra:
        raise MrbenchError(
            f"{p}: unknown key(s) in [sweep]: {', '.join(sorted(extra))} "
            "(valid: scarcity, seeds, methods, sampling, budgets, lrs)"
        )
    try:
        base = load_config(p, overrides, profile)  # file + sweep-wide overrides, checked once
        scarcity = _int_list(sweep.get("scarcity", [base.scarcity]), "sweep.scarcity")
        seeds = _int_list(list(seeds) if seeds is not None else sweep.get("seeds", [base.train.seed]), "sweep.seeds")
        entries = _entries(sweep.get("methods", [base.method]), "sweep.methods")
        samplings = _sampling_list(sweep.get("sampling", [""]), "sweep.sampling")
        budgets = _int_list(sweep["budgets"], "sweep.budgets") if "budgets" in sweep else [0]
        if "budgets" in sweep and min(budgets) < 1:
            raise MrbenchError("sweep.budgets: expected budgets > 0 (slices), e.g. [1200, 2400, 4800]")
        lrs = _lr_list(sweep["lrs"], "sweep.lrs") if "lrs" in sweep else [0.0]
    except MrbenchError as exc:
        msg = str(exc)
        raise MrbenchError(msg if msg.startswith(("config file", "--set")) else f"{p}: {msg}") from None
    exp = Experiment(p, entries, scarcity, seeds, tuple(overrides), profile)
    dirs: dict[Path, Cell] = {}
    cells = [
        (i, e, lv, sd, sm, b, lr)
        for i, e in enumerate(entries)
        for sm in samplings
        for b in budgets
        for lr in lrs
        for lv in scarcity
        for sd in seeds
    ]
    for entry in entries:
        if set(entry.scarcity) - set(scarcity):
            raise MrbenchError(
                f"{p}: sweep.methods entry {entry.name or entry.method}: scarcity {list(entry.scarcity)} "
                f"must be among the sweep's levels {scarcity}"
            )
    for i, entry, level, seed, sampling, budget, lr in cells:
        if entry.scarcity and level not in entry.scarcity:
            continue  # this entry runs at some of the levels only
        learned = getattr(METHODS.get(entry.method), "learned", True)  # an unknown name fails in load_config
        if (sampling != samplings[0] or budget != budgets[0] or lr != lrs[0]) and not learned:
            continue  # zero-filled trains nothing: one run, not one per rule, budget or lr
        cell = Cell(entry, level, seed, sampling, budget if learned else 0, lr if learned else 0.0)
        axis = _axis_sets(cell)
        try:
            cfg = load_config(
                p,
                [*overrides, *entry.overrides, *axis],
                profile,
                method=entry.method,
                scarcity=level,
                train={"seed": seed},
            )
        except MrbenchError as exc:
            raise MrbenchError(f"{p}: sweep.methods[{i}] ({entry.name or entry.method}): {exc}") from None
        if entry.name or cell.budget or cell.lr:
            stem = (
                entry.name + (training_suffix(cfg) if learned else "")
                if entry.name
                else RUN_SUFFIX.sub("", cfg.run_name)
            )
            cfg.run.name = f"{stem}{f'-b{cell.budget}' if cell.budget else ''}{lr_suffix(cell.lr)}-s{level}-seed{seed}"
        if cfg.run_dir in dirs:
            raise MrbenchError(
                f"{p}: sweep.methods[{i}] and another entry both write {cfg.run_dir}; give them distinct names"
            )
        if dirs and cfg.run_dir.parent != next(iter(dirs)).parent:
            raise MrbenchError(
                f"{p}: sweep.methods[{i}] changes run.out or run.experiment; a sweep writes one experiment"
            )
        dirs[cfg.run_dir] = cell
        exp.configs[cell] = cfg
    return exp


# ---------------------------------------------------------------------- running


@dataclass
class Outcome:
    cell: Cell
    run_dir: Path
    status: str  # done | failed | diverged | skipped
    seconds: float = 0.0
    message: str = ""
    resumed: bool = False


@dataclass
class SweepResult:
    outcomes: list[Outcome]
    wall_seconds: float
    slice_problems: list[str]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and not self.slice_problems

    def time_split(self) -> tuple[int, float, float]:
        """(runs, training seconds, evaluation seconds) over the runs this sweep finished, from
        their manifests (each run's own clock: ``train_seconds`` from start-up to the end of
        training, the rest of ``wall_seconds`` evaluation and writing) — where a sweep's time went."""
        runs, train, total = 0, 0.0, 0.0
        for o in self.outcomes:
            if o.status != "done":
                continue
            try:
                m = RunStore(o.run_dir).read_json("manifest.json")
                run_train, run_total = float(m["train_seconds"]), float(m["wall_seconds"])
            except (MrbenchError, KeyError, TypeError, ValueError):  # unreadable: left out of the sum
                continue
            train, total, runs = train + run_train, total + run_total, runs + 1
        return runs, train, total - train

    def shared_split(self) -> tuple[int, int, int]:
        """(phases loaded, their slices, slices trained) over the runs this sweep finished: what
        shared phases (:mod:`mrbench.shared_phases`) saved, from the manifests and metrics."""
        loaded = slices = trained = 0
        for o in self.outcomes:
            if o.status != "done":
                continue
            try:
                store = RunStore(o.run_dir)
                log = store.read_json("manifest.json").get("shared_phases", [])
                total = int(store.read_json("metrics.json").get("cost", {}).get("trained_slices", 0))
            except (MrbenchError, TypeError, ValueError):
                continue
            saved = sum(int(e["slices"]) for e in log if e.get("loaded"))
            loaded += sum(1 for e in log if e.get("loaded"))
            slices += saved
            trained += total - saved
        return loaded, slices, trained


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _failure_message(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("Error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return last[:300]


def _run_cell(exp: Experiment, cell: Cell, threads: int, env: dict) -> Outcome:
    """Run one cell in its own process under the run's lock, taken here before the log is
    opened: a cell another sweep (or Slurm task) is training is skipped untouched."""
    cfg = exp.configs[cell]
    try:
        with run_lock(cfg.run_dir):
            return _run_locked_cell(exp, cell, threads, {**env, LOCK_HELD_ENV: str(cfg.run_dir)})
    except RunLocked:
        return Outcome(cell, cfg.run_dir, "skipped", message="being trained by another process")


def _run_locked_cell(exp: Experiment, cell: Cell, threads: int, env: dict) -> Outcome:
    cfg = exp.configs[cell]
    store = RunStore(cfg.run_dir)
    if store.is_done() or store.is_diverged():  # finished by another sweep since this one listed its cells
        return Outcome(cell, cfg.run_dir, "skipped", message="DONE")
    resumed = store.checkpoint_path("last").exists()
    log = exp.directory / "logs" / f"{cfg.run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    command = exp.command(cell, threads)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(command) + "\n")
    returncode = launch(command, log, env)
    seconds = time.perf_counter() - t0
    if returncode == 0 and store.is_done():
        return Outcome(cell, cfg.run_dir, "done", seconds, resumed=resumed)
    if store.is_diverged():  # stored as diverged (exit 3): a result, not a failure of the sweep
        return Outcome(cell, cfg.run_dir, "diverged", seconds, _failure_message(log), resumed)
    return Outcome(
        cell, cfg.run_dir, "failed", seconds, f"exit {returncode}: {_failure_message(log)} (log: {log})", resumed
    )


def run_sweep(
    exp: Experiment,
    jobs: int = 1,
    *,
    threads: int = 0,
    report: Callable[[str], None] = lambda line: None,
) -> SweepResult:
    """Run every cell not yet DONE, ``jobs`` at a time; never stop on a failed run."""
    if jobs < 1:
        raise MrbenchError(f"--jobs must be ≥ 1, got {jobs}")
    threads = threads or max(1, cores() // jobs)
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    todo = []
    for cell, cfg in exp.configs.items():
        if RunStore(cfg.run_dir).is_done() or RunStore(cfg.run_dir).is_diverged():
            outcomes.append(Outcome(cell, cfg.run_dir, "skipped", message="DONE"))
        else:
            todo.append(cell)
    total = len(exp.configs)
    some = any(e.scarcity and len(e.scarcity) < len(exp.scarcity) for e in exp.entries)
    levels = f"{'≤ ' if some else ''}{len(exp.scarcity)} levels"
    report(
        f"{exp.path}: {total} runs ({len(exp.entries)} methods × {levels} × {len(exp.seeds)} seeds); "
        f"{total - len(todo)} already done, {len(todo)} to run, {jobs} at a time × {threads} threads"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    progress = Progress(len(todo), jobs, t0)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_cell, exp, cell, threads, env) for cell in todo]
        try:
            for fut in as_completed(futures):
                o = fut.result()
                outcomes.append(o)
                what = ("resumed, " if o.resumed else "") + f"{o.seconds:.0f} s"
                line = f"[{len(outcomes)}/{total}] {o.status:6s} {o.run_dir.name} ({what}) · {progress.finished(o)}"
                report(line + (f"\n    {o.message}" if o.status == "failed" else ""))
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            raise
    problems = check_slice_lists(exp)
    order = {cell: i for i, cell in enumerate(exp.configs)}
    outcomes.sort(key=lambda o: order[o.cell])
    return SweepResult(outcomes, time.perf_counter() - t0, problems)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class Progress:
    """The sweep's one progress figure: runs done of those to run, elapsed, and an ETA from the
    finished runs' own times — remaining runs × their mean time ÷ the runs in parallel. Plain
    text on each finished run (no terminal control codes), so it reads the same in a terminal
    and in a CI log."""

    def __init__(self, todo: int, jobs: int, t0: float):
        self.todo, self.jobs, self.t0 = todo, jobs, t0
        self.seconds: list[float] = []  # of the runs that trained (a run skipped as locked took none)
        self.done = 0

    def finished(self, outcome: Outcome) -> str:
        self.done += 1
        if outcome.status != "skipped":
            self.seconds.append(outcome.seconds)
        done, elapsed = self.done, time.perf_counter() - self.t0
        left = self.todo - done
        if not left or not self.seconds:
            return f"{done}/{self.todo} run, elapsed {_clock(elapsed)}"
        eta = left * (sum(self.seconds) / len(self.seconds)) / min(self.jobs, left)
        return f"{done}/{self.todo} run, elapsed {_clock(elapsed)}, ETA {_clock(eta)}"


def check_slice_lists(exp: Experiment) -> list[str]:
    """Compare the training slice-list hashes of all finished runs, per scarcity level and task.

    Returns one line per disagreement (empty when every level is consistent)."""
    seen: dict[tuple[int, str], dict[str, list[str]]] = {}
    for cell, cfg in exp.configs.items():
        store = RunStore(cfg.run_dir)
        if not store.manifest_path.exists():
            continue
        try:
            lists = store.read_json("manifest.json").get("training_slices", {})
        except MrbenchError:
            continue
        for task, entry in lists.items():
            seen.setdefault((cell.scarcity, task), {}).setdefault(entry.get("sha256", "?"), []).append(cfg.run_name)
    problems = []
    for (level, task), hashes in sorted(seen.items()):
        if len(hashes) > 1:
            groups = "; ".join(f"{h[:12]}: {', '.join(sorted(runs))}" for h, runs in sorted(hashes.items()))
            problems.append(f"scarcity {level}, task {task}: runs trained on different slices ({groups})")
    return problems


def slice_summary(exp: Experiment) -> str:
    """One line: how many runs per level share one slice list."""
    levels: dict[int, int] = {}
    for cell, cfg in exp.configs.items():
        if RunStore(cfg.run_dir).manifest_path.exists():
            levels[cell.scarcity] = levels.get(cell.scarcity, 0) + 1
    parts = ", ".join(f"level {lvl}: {n} runs" for lvl, n in sorted(levels.items()))
    return f"training slice lists identical per scarcity level ({parts})"


# ---------------------------------------------------------------------- slurm


@dataclass
class SlurmOptions:
    """What the generated array job asks the scheduler for (``mrbench sweep --executor slurm``)."""

    partition: str = ""
    time: str = ""  # e.g. 04:00:00
    mem: str = ""  # e.g. 16G
    gpus_per_run: int = 0  # > 0: --gres=gpu:N and train.device=cuda


def write_slurm(exp: Experiment, jobs: int, threads: int, opts: SlurmOptions | None = None) -> tuple[Path, Path]:
    """An sbatch array script with one ``mrbench run`` per not-yet-done cell.

    ``jobs`` caps how many array tasks run at once; each asks for ``threads`` CPUs and uses the
    allocation's own count (``SLURM_CPUS_PER_TASK``) as its torch threads. Paths are quoted
    (a space in a path is safe). Pre-emption: ``--requeue`` and SIGTERM two minutes before the
    end; the batch shell ``exec``s the run, so the signal reaches it, it checkpoints at the next
    step boundary and exits 143, and the requeued task resumes (every command has
    ``--resume``). Re-submitting while tasks run is safe too: each run is locked while trained."""
    opts = opts or SlurmOptions()
    todo = [c for c, cfg in exp.configs.items() if not RunStore(cfg.run_dir).is_done()]
    out = exp.directory / "slurm"
    commands = out / "commands.txt"
    script = out / "sweep.sbatch"
    extra = ["--set", "train.device=cuda"] if opts.gpus_per_run > 0 else []
    lines = []
    for c in todo:
        cmd = exp.command(c, threads=0) + extra
        lines.append(shlex.join(cmd) + f' --threads "${{SLURM_CPUS_PER_TASK:-{threads}}}"\n')
    atomic.write_text(commands, "".join(lines))
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name=mrbench-{exp.directory.name}",
        f"#SBATCH --array=0-{max(len(todo) - 1, 0)}%{jobs}",
        f"#SBATCH --cpus-per-task={threads}",
        f'#SBATCH --output="{out.resolve()}/%a.log"',
        "#SBATCH --requeue",
        "#SBATCH --signal=B:TERM@120",
    ]
    header += [f"#SBATCH --partition={opts.partition}"] if opts.partition else []
    header += [f"#SBATCH --time={opts.time}"] if opts.time else []
    header += [f"#SBATCH --mem={opts.mem}"] if opts.mem else []
    header += [f"#SBATCH --gres=gpu:{opts.gpus_per_run}"] if opts.gpus_per_run > 0 else []
    body = [
        f"cd {shlex.quote(str(Path.cwd()))}",
        f'line="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands.resolve()))})"',
        'eval "exec $line"',
        "",
    ]
    atomic.write_text(script, "\n".join(header + body))
    return script, commands


def submit_slurm(script: Path) -> str | None:
    """Submit with sbatch when it is installed; None otherwise."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return None
    proc = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MrbenchError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()
