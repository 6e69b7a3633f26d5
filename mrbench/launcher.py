"""Starting a sweep's run processes from a preloaded server instead of a fresh interpreter.

A sweep (and so the demo) runs every cell as its own ``mrbench run …`` process, so that a
crashing run cannot take the others down. A fresh ``python -m mrbench`` spends ~3.5 s on this
2-core VM before it trains anything: importing torch (1.9 s) and ``torch._dynamo``, which the
first ``torch.optim.Adam`` pulls in (1.3–2.1 s). Over the demo's 126 runs, two at a time, that
is ~4 minutes of a 15-minute target (issue 15).

:func:`launch` keeps the isolation and drops the import: a ``multiprocessing`` *forkserver*
imports torch, ``torch._dynamo`` and mrbench once; each run is a fresh process forked from it
(its own memory, exit status, signals and log file) that calls the CLI with the same
arguments the subprocess would have had. The forkserver has run no tensor operation, so no
OpenMP pool exists when it forks. ``MRBENCH_LAUNCH=subprocess`` (or a platform without the
forkserver start method) falls back to one ``python -m mrbench`` subprocess per run.
Either way the command is written at the top of the run's log, runnable as it stands.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
from pathlib import Path

#: imported once by the forkserver; every run process starts with them loaded
PRELOAD = ["torch", "torch._dynamo", "mrbench.cli", "mrbench.runner"]


def _forkserver():
    if os.environ.get("MRBENCH_LAUNCH", "forkserver") != "forkserver":
        return None
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _run_cli(argv: list[str], log: str, env: dict, status=None) -> None:
    """In the forked process: the run's environment, its log as stdout and stderr, then the
    CLI (whose ``sys.exit`` code becomes the process's exit status, and is sent on ``status``,
    see :func:`launch`)."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = ["mrbench", *argv]
    try:
        # `python -m mrbench` in this process: the launcher (a layer below the CLI) runs the CLI
        # module by name, never imports it (the forkserver has preloaded it, so this is instant)
        runpy.run_module("mrbench", run_name="__main__", alter_sys=False)
    except SystemExit as done:
        if status is not None:
            code = done.code
            status.send(code if isinstance(code, int) else (0 if code is None else 1))
        raise


def launch(command: list[str], log: Path, env: dict) -> int:
    """Run ``command`` (``[python, "-m", "mrbench", …]``) with its output appended to ``log``;
    its exit status (negative: killed by that signal, as ``subprocess`` reports it)."""
    ctx = _forkserver()
    if ctx is None or command[1:3] != ["-m", "mrbench"]:
        with open(log, "a") as f:
            return subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    # The forkserver relays each child's exit status over a pipe of its own; under load that
    # relay was seen to lose it (multiprocessing then reports 255 for a run that had finished and
    # written DONE: 1 in 8 sweeps with 4 test processes on 2 cores). The CLI's own exit code,
    # sent by the child on this pipe, is the status; the relayed one counts only when none came
    # (a run killed by a signal, or a crash outside the CLI).
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_cli, args=(command[3:], str(log), dict(env), send), daemon=False)
    proc.start()
    send.close()
    proc.join()
    try:
        return int(receive.recv()) if receive.poll() else proc.exitcode
    except EOFError:
        return proc.exitcode
    finally:
        receive.close()
