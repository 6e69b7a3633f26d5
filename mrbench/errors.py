"""User-facing errors.

A :class:`MrbenchError` is bad input the user can fix (a missing file, a wrong
option, a corrupt checkpoint). The CLI prints its message as one line and exits
with code 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class MrbenchError(Exception):
    """Bad input: the message names the file or option and what is wrong."""


class StorageError(MrbenchError):
    """A write failed (disk full, quota, read-only file system): one line naming the path, the
    operation and the free space; exit code 4. The file it was writing is untouched (atomic
    writes), so a run stays resumable from its last good checkpoint once there is room."""

    exit_code = 4


class RunLocked(MrbenchError):
    """Another process is training this run directory (it holds the run's lock): this one
    skips it, exit code 5. The lock is an OS file lock, released when its holder exits or
    crashes, so a stale lock never blocks a resume."""

    exit_code = 5


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message for a one-line error, shortened at a word
    boundary with an ellipsis (never cut mid-word); the exception's type if it has none."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " …"


class RunEnded(Exception):
    """Training ended before its budget was spent — stopped on purpose, by a signal, or by
    divergence. The one family the engine raises and the CLI reports; ``run_dir`` is the run
    directory, which holds the checkpoint (or the diverged record) to continue from."""

    exit_code = 1

    def __init__(self, message: str, run_dir):
        super().__init__(message)
        self.run_dir = run_dir


class RunDiverged(RunEnded):
    """Training diverged: a non-finite loss or gradient norm, or a loss ``train.divergence_factor``
    times its running median. ``info`` says where and why. Once the run is stored as *diverged*
    (its own status and exit code, 3 — not bad input, not a crash), tables and reports show the
    cell as diverged, never averaged; with ``train.on_divergence = "retry-lower-lr"`` the runner
    first retries at a lower lr."""

    exit_code = 3

    def __init__(self, info: dict, run_dir):
        where = f" in phase {info.get('phase')} after {info.get('slices')} slices" if info else ""
        super().__init__(
            f"{run_dir}: training diverged{where}: {info.get('reason', '?')} (lr {info.get('lr', float('nan')):g}); "
            'stored as diverged — lower train.lr, set train.on_divergence = "retry-lower-lr", or redo with --overwrite',
            run_dir,
        )
        self.info = info


class RunInterrupted(RunEnded):
    """SIGTERM or SIGINT stopped training at a step boundary after writing a checkpoint; the
    run resumes exactly with ``--resume`` (Slurm's requeue, Ctrl-C). Exit code 128 + signal
    (143 for SIGTERM, 130 for SIGINT), as a shell reports a process killed by it."""

    def __init__(self, signum: int, slices: int, run_dir):
        import signal as _signal

        name = _signal.Signals(signum).name
        super().__init__(f"{name} after {slices} slices: checkpointed at the step boundary in {run_dir}", run_dir)
        self.exit_code = 128 + signum
        self.signum, self.slices = signum, slices


class RunStopped(RunEnded):
    """A deliberate stop (``train.stop_after``): not an error; the run resumes from its last
    checkpoint. The CLI prints how to continue and exits 0."""

    exit_code = 0

    def __init__(self, slices: int, run_dir):
        super().__init__(f"stopped after {slices} slices (train.stop_after); the run resumes from {run_dir}", run_dir)
        self.slices = slices
