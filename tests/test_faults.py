"""Faults a long sweep meets (issue 21), each with a clear outcome: divergence first —
a non-finite or exploding loss stops the run, which is stored as *diverged* (exit 3),
named by ls, tables and sweeps, and never averaged into a result."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import set_args, tiny_run_settings

from mrbench.cli import main
from mrbench.config import load_config
from mrbench.engine import check_divergence
from mrbench.reports import results as R
from mrbench.reports.table import build_tables, render
from mrbench.runner import execute
from mrbench.store import RunStore


@pytest.fixture(scope="module")
def data_root(three_contrast_root):
    return three_contrast_root


def test_divergence_rules():
    assert check_divergence(float("nan"), 1.0, [], 100) == "non-finite loss nan"
    assert "non-finite gradient" in check_divergence(0.1, math.inf, [0.1], 100)
    assert "running median" in check_divergence(50.0, 1.0, [0.1, 0.2, 0.3], 100)
    assert check_divergence(0.5, 1.0, [0.1, 0.2, 0.3], 100) is None  # a noisy step is not divergence
    assert check_divergence(50.0, 1.0, [0.1], 0) is None  # the factor rule off
    # an ordinary loss that rose from near zero (equivariant imaging on MoDL in the demo: 0.0004 → 0.044)
    assert check_divergence(0.044, 1.0, [0.0004] * 20, 100) is None


def test_a_diverging_run_is_stored_as_diverged_with_exit_3_and_never_averaged(data_root, tmp_path):
    r = CliRunner()
    base = tiny_run_settings(data_root, tmp_path, "train.budget=16")
    assert r.invoke(main, ["run", "joint", "--quiet", *set_args(base)]).exit_code == 0
    bad = base + ["train.lr=1000", "train.grad_clip=0", "train.seed=1"]
    res = r.invoke(main, ["run", "joint", "--quiet", *set_args(bad)])
    assert res.exit_code == 3 and "training diverged" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed1"
    store = RunStore(run_dir)
    assert store.status() == "diverged" and not store.is_done()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged"]["slices"] > 0 and m["contexts"] == {}
    ls = r.invoke(main, ["ls", str(tmp_path)])
    assert any("joint-varnet-s0-seed1" in line and "diverged" in line for line in ls.output.splitlines())
    again = r.invoke(main, ["run", "joint", "--quiet", "--resume", *set_args(bad)])
    assert again.exit_code == 3  # resuming a diverged run says so; --overwrite redoes it
    runs = R.load_runs([tmp_path / "default"])
    assert [run.name for run in runs] == ["joint-varnet-s0-seed0"]  # the diverged one is not averaged in
    md = render(build_tables(runs, metrics=["psnr"], diverged=R.diverged_runs([tmp_path / "default"])), "md")
    assert "diverged (stored as such, not averaged in): joint-varnet-s0-seed1" in md


def test_retry_lower_lr_records_the_lr_it_ended_with(data_root, tmp_path, monkeypatch):
    import mrbench.engine as engine

    calls = {"n": 0}
    real = engine.check_divergence

    def first_step_diverges(loss, grad_norm, history, factor):
        calls["n"] += 1
        return "injected divergence" if calls["n"] == 1 else real(loss, grad_norm, history, factor)

    monkeypatch.setattr(engine, "check_divergence", first_step_diverges)
    cfg = load_config(
        None,
        tiny_run_settings(
            data_root, tmp_path, "train.budget=16", "train.lr=2e-3", "train.on_divergence=retry-lower-lr"
        ),
        method="joint",
    )
    store = execute(cfg, quiet=True)
    m = store.read_json("metrics.json")
    assert store.is_done() and m["lr_final"] == pytest.approx(2e-4)
    assert len(m["retries"]) == 1 and m["retries"][0]["reason"] == "injected divergence"
    assert store.read_json("config.json")["train"]["lr"] == 2e-3  # the configuration asked for stays


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_diverged_cell(data_root, tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(
        textwrap.dedent("""
        [run]
        experiment = "exp"
        [sweep]
        methods = [{ method = "joint", name = "wild", set = ["train.lr=1000", "train.grad_clip=0"] }, "stl"]
        """)
    )
    sets = set_args(tiny_run_settings(data_root, tmp_path / "runs", "train.budget=16"))
    res = CliRunner().invoke(main, ["sweep", str(exp), "--quiet", *sets])
    assert res.exit_code == 0, res.output
    assert "1 done, 0 failed, 1 diverged" in res.output
    assert "time in the 1 finished runs:" in res.output  # the diverged run is not counted


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(damage, data_root, tmp_path, capsys):
    """Issue 21: the previous good checkpoint is kept; a truncated or garbled last.pt resumes
    from it with one warning line, to the metrics of an uninterrupted run."""
    from mrbench.errors import RunStopped

    full = execute(
        load_config(None, tiny_run_settings(data_root, tmp_path / "a", "train.val_every=8"), method="joint"), quiet=True
    )
    cfg = load_config(
        None, tiny_run_settings(data_root, tmp_path / "b", "train.val_every=8", "train.stop_after=24"), method="joint"
    )
    with pytest.raises(RunStopped):
        execute(cfg, quiet=True)
    store = RunStore(cfg.run_dir)
    last, prev = store.checkpoint_path("last"), store.checkpoint_path("last.prev")
    assert prev.exists()
    data = last.read_bytes()
    last.write_bytes(data[:100] if damage == "truncated" else bytes(b ^ 0x5A for b in data))
    cfg.train.stop_after = 0
    execute(cfg, resume=True, quiet=True)
    err = capsys.readouterr().err
    assert (
        "warning:" in err
        and "previous checkpoint" in err
        and len([line for line in err.splitlines() if "warning" in line]) == 1
    )
    assert store.read_json("metrics.json")["contexts"] == full.read_json("metrics.json")["contexts"]


def test_disk_full_while_checkpointing_is_one_line_exit_4_and_resumable(data_root, tmp_path, monkeypatch):
    """Issue 21: torch.save's raw 'iostream error' on a full disk becomes one line naming the
    file and the free space (exit 4); the last good checkpoint is intact and resumes."""
    import torch

    import mrbench.store as store_mod

    real_save, calls = torch.save, {"n": 0}

    def full_disk_on_third(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . unexpected pos 6208 vs 6094: basic_ios::clear: iostream error"
            )
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(store_mod.torch, "save", full_disk_on_third)
    sets = tiny_run_settings(data_root, tmp_path, "train.val_every=8")
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 4, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "cannot write" in line and "MiB free" in line and "--resume" in line
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed0"
    assert not list(run_dir.rglob(".*.tmp"))  # no partial file
    monkeypatch.setattr(store_mod.torch, "save", real_save)
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", "--resume", *set_args(sets)])
    assert res.exit_code == 0 and RunStore(run_dir).is_done()


@pytest.mark.parametrize(
    "site", ["config.json", "manifest.json", "best.pt", "last.pt", "metrics.json", "previews.npz", "DONE"]
)
def test_disk_full_at_every_write_site_is_one_line_exit_4_and_a_resume_finishes(site, data_root, tmp_path, monkeypatch):
    """Issue 21, the fault-injection suite: ENOSPC at each file a run writes (every write goes
    through mrbench.atomic: a temporary file renamed into place) — one line naming the file and
    the free space, exit 4, no partial file left, and ``--resume`` afterwards finishes the run."""
    import errno
    import os

    import mrbench.atomic as atomic_mod

    real_replace, hits = os.replace, []

    def full_disk(src, dst, *a, **k):
        if Path(dst).name == site and not hits:
            hits.append(dst)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(atomic_mod.os, "replace", full_disk)
    sets = tiny_run_settings(data_root, tmp_path, "train.val_every=8")
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert hits and res.exit_code == 4, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "cannot write " in line and site in line and "No space left" in line
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed0"
    assert not list(tmp_path.rglob(".*.tmp"))  # no partial file anywhere
    monkeypatch.setattr(atomic_mod.os, "replace", real_replace)
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", "--resume", *set_args(sets)])
    assert res.exit_code == 0, res.output
    assert RunStore(run_dir).is_done() and "psnr" in json.dumps(RunStore(run_dir).read_json("metrics.json"))


@pytest.mark.slow
def test_disk_full_on_a_real_small_tmpfs(data_root, tmp_path):
    """The fault as a user meets it: run.out on a 3 MB tmpfs. Needs mount rights (root in a
    container with CAP_SYS_ADMIN); skipped where the tmpfs cannot be mounted."""
    import os
    import shutil
    import subprocess
    import sys

    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        sets = tiny_run_settings(data_root, mnt, "train.val_every=8", "model.chans=32")
        res = subprocess.run(
            [sys.executable, "-m", "mrbench", "run", "joint", "--quiet", *set_args(sets)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert res.returncode == 4, res.stderr
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "MiB free" in err
        assert not list(mnt.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_nan_in_a_training_file_is_one_line_exit_2_and_no_run_directory(tmp_path):
    """Issue 21, a real bad file: NaN in one training volume's k-space is found when the
    volume is read — one line naming the file, exit 2, no traceback, nothing left behind."""
    import h5py
    from conftest import write_tiny_root

    root = tmp_path / "d"
    write_tiny_root(root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 2, "val": 1, "test": 1}, slices=2)
    victim = sorted((root / "train").glob("*AXT1*.h5"))[0]
    with h5py.File(victim, "r+") as f:
        k = f["kspace"][()]
        k[1, 3, 3] = complex(float("nan"), 0.0)
        f["kspace"][...] = k
    sets = tiny_run_settings(root, tmp_path / "runs", "train.budget=16")
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and victim.name in res.output and "NaN" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "runs" / "default" / "joint-varnet-s0-seed0").exists()


def test_bad_input_found_late_leaves_no_half_made_run_directory(data_root, tmp_path, monkeypatch):
    """Issue 21: an error after the run directory was started but before any checkpoint
    removes what the run made, so the next run on repaired data starts clean."""
    import mrbench.runner as runner
    from mrbench.errors import MrbenchError

    def nan_found(*a, **k):
        raise MrbenchError("train/tiny_AXT1_000.h5: kspace holds NaN")

    monkeypatch.setattr(runner.Trainer, "fit", nan_found)
    import threading

    def writers():
        return {t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()}

    cfg = load_config(None, tiny_run_settings(data_root, tmp_path), method="joint")
    before = writers()
    with pytest.raises(MrbenchError, match="NaN"):
        execute(cfg, quiet=True)
    assert not cfg.run_dir.exists()
    assert writers() <= before  # the run's TensorBoard writer was closed, not left writing into the removed directory
    monkeypatch.undo()
    assert execute(cfg, quiet=True).is_done()  # the repaired start needs no --overwrite


def test_sigterm_checkpoints_at_the_step_boundary_exits_143_and_resumes_exactly(data_root, tmp_path, monkeypatch):
    """Issue 21: SIGTERM (Slurm pre-emption) mid-interval checkpoints at the next step and
    exits 143 with the resume command; the resumed run ends with the uninterrupted metrics."""
    import os
    import signal

    import mrbench.engine as engine

    before = signal.getsignal(signal.SIGTERM)
    sets = tiny_run_settings(data_root, tmp_path / "b", "train.val_every=16")
    full = execute(
        load_config(None, tiny_run_settings(data_root, tmp_path / "a", "train.val_every=16"), method="joint"),
        quiet=True,
    )
    real_log, calls = engine.Trainer._log_step, {"n": 0}

    def term_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_log(self, *a, **k)

    monkeypatch.setattr(engine.Trainer, "_log_step", term_on_third)
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 143, res.output
    assert "SIGTERM after 12 slices" in res.output and "--resume" in res.output and "Traceback" not in res.output
    run_dir = tmp_path / "b" / "default" / "joint-varnet-s0-seed0"
    assert RunStore(run_dir).load_checkpoint("last")["used"] == 12  # not the last periodic checkpoint (0)
    monkeypatch.setattr(engine.Trainer, "_log_step", real_log)
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", "--resume", *set_args(sets)])
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "metrics.json").read_text())["contexts"] == full.read_json("metrics.json")["contexts"]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is only there while training


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_run_process_resumes_to_the_uninterrupted_metrics(sig, data_root, tmp_path):
    """Issue 21: a real `mrbench run` process killed once its first checkpoint exists —
    SIGTERM (Slurm) exits 143 after a step-boundary checkpoint, kill -9 leaves the periodic
    one — then `--resume` ends with the metrics of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = tiny_run_settings(data_root, tmp_path / "k", "train.budget=96", "train.val_every=8")
    ref = execute(
        load_config(
            None, tiny_run_settings(data_root, tmp_path / "r", "train.budget=96", "train.val_every=8"), method="joint"
        ),
        quiet=True,
    )
    cmd = [sys.executable, "-m", "mrbench", "run", "joint", "--quiet", *set_args(sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "k" / "default" / "joint-varnet-s0-seed0" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert not (last.parent.parent / "DONE").exists()  # killed mid-run (evaluation alone outlasts the poll)
    if sig == "SIGTERM" and proc.returncode != -15:  # -15: it arrived during evaluation, outside training
        assert proc.returncode == 143 and "SIGTERM" in out and "--resume" in out, out
    else:
        assert proc.returncode == -9
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    store = RunStore(tmp_path / "k" / "default" / "joint-varnet-s0-seed0")
    assert store.read_json("metrics.json")["contexts"] == ref.read_json("metrics.json")["contexts"]


def test_a_run_being_trained_elsewhere_is_skipped_with_exit_5(data_root, tmp_path):
    """Issue 14, locks: while one process holds a run's lock, another process gets one line and
    exit 5 and touches nothing; a sweep counts the cell as skipped. The lock is the OS's, so it
    dies with its holder."""
    import fcntl

    sets = tiny_run_settings(data_root, tmp_path, "train.budget=8")
    run_dir = tmp_path / "default" / "joint-varnet-s0-seed0"
    run_dir.parent.mkdir(parents=True)
    with open(run_dir.parent / ".joint-varnet-s0-seed0.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
        assert res.exit_code == 5 and "being trained by another process (pid 4242)" in res.output
        assert len(res.output.strip().splitlines()) == 1 and not run_dir.exists()
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])  # released: it runs
    assert res.exit_code == 0 and RunStore(run_dir).is_done()


@pytest.mark.slow
def test_two_concurrent_sweeps_train_every_cell_exactly_once(data_root, tmp_path):
    """Two `mrbench sweep` processes on one experiment at once: every cell is trained by one of
    them (its log says so once), the other skips it; both end with every cell DONE."""
    import subprocess
    import sys

    exp = tmp_path / "e.toml"
    exp.write_text(
        textwrap.dedent("""
        [run]
        experiment = "twice"
        [sweep]
        seeds = [0, 1, 2]
        methods = ["joint"]
    """)
    )
    sets = tiny_run_settings(data_root, tmp_path / "runs", "train.budget=48")
    cmd = [
        sys.executable,
        "-m",
        "mrbench",
        "sweep",
        str(exp),
        "--jobs",
        "1",
        "--threads",
        "1",
        "--quiet",
        *set_args(sets),
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    done = sum(int(o.split(" done,")[0].rsplit(" ", 1)[-1]) for o in outs)
    assert done == 3, outs  # each cell trained once, by one of the two sweeps
    for seed in range(3):
        assert RunStore(tmp_path / "runs" / "twice" / f"joint-varnet-s0-seed{seed}").is_done()


def test_bf16_is_refused_on_a_cpu_without_bf16_before_anything_is_written(data_root, tmp_path, monkeypatch):
    """Issue 14/15: mixed precision needs a GPU or a CPU with bfloat16 instructions (emulated
    bf16 is slower than fp32); elsewhere one line, exit 2, no run directory."""
    monkeypatch.setattr("mrbench.distributed.cpu_bf16_supported", lambda: False)
    sets = tiny_run_settings(data_root, tmp_path, "train.precision=bf16", "train.device=cpu")
    res = CliRunner().invoke(main, ["run", "joint", "--quiet", *set_args(sets)])
    assert res.exit_code == 2 and "train.precision = bf16 needs a CUDA device or a CPU with bfloat16" in res.output
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").iterdir())


@pytest.mark.skipif(
    not __import__("mrbench.distributed").distributed.cpu_bf16_supported(), reason="CPU without bfloat16"
)
def test_bf16_trains_on_a_cpu_with_bf16(data_root, tmp_path):
    """Autocast is really applied (the metrics move) and harmless (they move by < 1 dB)."""
    psnr = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(
            None,
            tiny_run_settings(data_root, tmp_path / precision, f"train.precision={precision}", "train.device=cpu"),
            method="joint",
        )
        contexts = execute(cfg, quiet=True).read_json("metrics.json")["contexts"]
        psnr[precision] = {n: c["steps"]["0"]["mean"]["psnr"] for n, c in contexts.items()}
    assert psnr["bf16"] != psnr["fp32"]
    for name, value in psnr["fp32"].items():
        assert abs(psnr["bf16"][name] - value) < 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_bf16_trains_on_a_gpu(data_root, tmp_path):
    cfg = load_config(
        None, tiny_run_settings(data_root, tmp_path, "train.precision=bf16", "train.device=cuda"), method="joint"
    )
    store = execute(cfg, quiet=True)
    assert store.is_done() and all(
        math.isfinite(c["steps"]["0"]["mean"]["psnr"]) for c in store.read_json("metrics.json")["contexts"].values()
    )
