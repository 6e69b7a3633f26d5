"""A real one-node Slurm (issue 14): munged, slurmctld and slurmd started by the test from
Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them), an array job submitted by
``mrbench sweep --executor slurm``, run to DONE, checked with ``mrbench sweep --check``, and
its metrics compared with the local executor's. Skipped where the daemons are missing or
cannot be started (not root, no ``runuser``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import tiny_run_settings, write_tiny_root

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "runuser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, seconds: float, what: str):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def slurm():
    """Environment variables of a running one-node cluster (SLURM_CONF); torn down after."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"no one-node Slurm here ({', '.join(missing) or 'not root'}); .ci/run installs slurm-wlm and munge"
        )
    root = Path(tempfile.mkdtemp(prefix="mrbench-slurm-", dir="/tmp"))
    root.chmod(0o755)
    munge = root / "munge"
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir()
    shutil.chown(munge, "munge", "munge")
    munge.chmod(0o755)
    sock = munge / "munge.socket"
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"
    started = subprocess.run(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            sbin("munged"),
            f"--socket={sock}",
            f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log",
            f"--seed-file={munge}/seed",
        ],
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"munged did not start: {started.stderr.strip()}")
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=mrbench-test",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                f"AuthInfo=socket={sock}",
                "CredType=cred/munge",
                f"StateSaveLocation={root}/state",
                f"SlurmdSpoolDir={root}/spool",
                f"SlurmctldPidFile={root}/slurmctld.pid",
                f"SlurmdPidFile={root}/slurmd.pid",
                f"SlurmctldLogFile={root}/log/slurmctld.log",
                f"SlurmdLogFile={root}/log/slurmd.log",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/builtin",
                "MpiDefault=none",
                "ReturnToService=2",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 2} RealMemory=2000 State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([sbin(daemon), "-f", str(conf)], env=env, check=True, capture_output=True)

        def idle():
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            return "idle" in out

        _wait(idle, 30, "the node never became idle")
    except (subprocess.CalledProcessError, TimeoutError) as exc:
        _teardown(root, env)
        pytest.skip(f"slurm did not start: {exc}")
    yield env
    _teardown(root, env)


def _teardown(root: Path, env: dict) -> None:
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
        try:
            os.kill(int((root / pid_file).read_text().split()[0]), 15)
        except (OSError, ValueError):
            pass
    time.sleep(1)
    shutil.rmtree(root, ignore_errors=True)


GRID = """
[run]
experiment = "exp"

[sweep]
seeds = [0, 1]
methods = ["zero-filled", { method = "stl", name = "stl-small", set = ["model.chans=4"] }]
"""


def _sweep(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mrbench", "sweep", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def _psnrs(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {
        ctx: {s: {v: x["psnr"] for v, x in e["volumes"].items()} for s, e in c["steps"].items()}
        for ctx, c in m["contexts"].items()
    }


def test_a_slurm_array_runs_the_sweep_to_done_like_the_local_executor(slurm, tmp_path):
    data = tmp_path / "data"
    write_tiny_root(data, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 3, "val": 1, "test": 1}, slices=3)
    f = tmp_path / "e.toml"
    f.write_text(GRID)
    sets = lambda out: sum((["--set", s] for s in tiny_run_settings(data, out, "train.budget=16")), [])
    cwd = Path(__file__).resolve().parents[1]  # the array's commands `cd` here and run this checkout's mrbench
    res = _sweep(
        [str(f), "--executor", "slurm", "--jobs", "2", "--threads", "1", *sets(tmp_path / "slurm")], slurm, cwd
    )
    assert res.returncode == 0, res.stdout + res.stderr
    exp = tmp_path / "slurm" / "exp"

    def drained():
        q = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True).stdout
        return not q.strip()

    _wait(drained, 300, "the array job did not finish in 5 minutes")
    runs = sorted(p.name for p in exp.iterdir() if (p / "config.json").exists())
    assert runs == [
        "stl-small-s0-seed0",
        "stl-small-s0-seed1",
        "zero-filled-none-s0-seed0",
        "zero-filled-none-s0-seed1",
    ]
    logs = "".join(p.read_text() for p in (exp / "slurm").glob("*.log"))
    assert all((exp / r / "DONE").exists() for r in runs), logs
    check = _sweep([str(f), "--check", *sets(tmp_path / "slurm")], slurm, cwd)
    assert check.returncode == 0 and "4 of 4 runs done" in check.stdout, check.stdout + check.stderr
    local = _sweep([str(f), "--jobs", "2", "--threads", "1", "--quiet", *sets(tmp_path / "local")], slurm, cwd)
    assert local.returncode == 0, local.stdout + local.stderr
    for r in runs:
        assert _psnrs(exp / r) == _psnrs(tmp_path / "local" / "exp" / r), r
