"""One run end to end: data → method → engine → evaluation → run store.

:func:`run` (and :func:`execute`, its store alone) is what ``mrbench run`` calls: check the data
and the device, take the run's lock, resume or start, train with the one retry loop
(:func:`fit_with_retries`, rank 0 and the other torchrun ranks alike), evaluate
(:func:`mrbench.evaluation.trained.evaluate`) and write the run directory. It does not know
which method runs: methods come from :data:`mrbench.methods.METHODS`. Device selection lives in
:mod:`mrbench.distributed`; evaluating a stored run (``mrbench evaluate``) in
:mod:`mrbench.evaluation.trained`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from . import distributed
from .config import Config, config_from_dict
from .data.assemble import ExperimentData, assemble
from .data.dataset import SliceDataset, VolumeStore
from .data.index import shape_kinds
from .engine import Trainer
from .errors import MrbenchError, RunDiverged, RunEnded
from .evaluation.trained import evaluate
from .losses import LOSSES, self_supervised
from .methods import METHODS, build_method
from .shared_phases import SHARED_DIR, SharedPhases, phase_keys
from .store import RunStore, environment, file_digest, now, run_lock


def _progress_bar(total: int, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="slice", disable=quiet, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(n: int, info: dict) -> None:
        if info.get("resumed"):
            bar.n = n
            bar.refresh()
            return
        if "loss" in info:  # before update(), which draws: the bar shows this step's phase
            bar.set_postfix(phase=info["phase"], loss=f"{info['loss']:.4f}", refresh=False)
        bar.update(n)

    return bar, update


def check_loss_fits_data(cfg: Config, data) -> None:
    """Refuse, before anything is written, what the loss cannot use: validation and test
    volumes always need a target (they are scored); training and support volumes need one only
    where the supervised loss trains on them — a self-supervised loss (``train.loss``, or
    ``train.ssl_loss`` on the ``data.self_supervised`` tasks) trains on undersampled scans alone,
    but recomputes measurements with A = M F, which needs single-coil data."""

    scored = [v for group in (data.val, data.test, data.unseen_test) for t in group for v in t.volumes]
    no_target = [v for v in scored if v.target_key is None]
    if no_target:
        raise MrbenchError(
            f"{no_target[0].path}: has no target, and validation and test volumes are scored against one"
        )
    all_ssl = not LOSSES[cfg.train.loss].supervised
    ssl_tasks = set(cfg.data.self_supervised)
    trained = [(v, all_ssl or t.context.contrast in ssl_tasks) for t in data.train for v in t.volumes]
    trained += [(v, all_ssl) for t in data.unseen_support for v in t.volumes]  # adaptation uses train.loss
    bare = [v for v, ssl in trained if not ssl and v.target_key is None]
    if bare:
        ssl_names = ", ".join(n for n, c in LOSSES.items() if not c.supervised)
        raise MrbenchError(
            f'{bare[0].path}: has no target; train.loss = "sup" needs one (a self-supervised loss — {ssl_names} — '
            "trains on undersampled scans alone: train.loss, or data.self_supervised = [its contrast])"
        )
    multi = [v for v, ssl in trained if ssl and v.num_coils > 1] + (
        [v for v in scored if v.num_coils > 1] if all_ssl else []
    )
    if multi:
        key = (
            f"train.loss = {cfg.train.loss!r}"
            if all_ssl
            else f"train.ssl_loss = {cfg.train.ssl_loss!r} (data.self_supervised)"
        )
        raise MrbenchError(
            f"{key}: the self-supervised losses need single-coil data, but {multi[0].path} has "
            f"{multi[0].num_coils} coils (use the supervised loss for it)"
        )


#: what :func:`run` reports: trained and stored now, or found finished (nothing run)
DONE, ALREADY_DONE = "done", "already done"


def execute(cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> RunStore | None:
    """Train, evaluate and store one run; return its store (None on a torchrun rank other
    than 0). :func:`run` also says whether anything was run."""
    return run(cfg, resume=resume, overwrite=overwrite, quiet=quiet)[0]


def run(
    cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False
) -> tuple[RunStore | None, str | None]:
    """Train, evaluate and store one run (under its lock, :func:`run_lock`): ``(store, status)``,
    status :data:`DONE` or :data:`ALREADY_DONE` (a resume of a run finished earlier, e.g. by
    another sweep). Under ``torchrun`` (:mod:`mrbench.distributed`) rank 0 does this and the
    other ranks only train beside it (``(None, None)``). Training that ends early raises the
    :class:`~mrbench.errors.RunEnded` family (stopped, interrupted, diverged)."""
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)  # bad data before run-dir state
    check_loss_fits_data(cfg, data)
    METHODS[cfg.method].check_data(cfg, data)
    device = distributed.select_device(
        cfg.train.device, cfg.train.precision
    )  # impossible: said before anything is written
    check_data_parallel(cfg, data)
    group = distributed.from_env(cuda=device.type == "cuda")
    if group is None:
        with run_lock(cfg.run_dir):
            return _execute(cfg, data, resume, overwrite, quiet)
    try:
        if not group.is_main:
            _follow(cfg, data, group)
            return None, None
        plan = _Plan(group)
        try:
            with run_lock(cfg.run_dir):
                return _execute(cfg, data, resume, overwrite, quiet, plan)
        finally:
            plan.send(train=False)  # an early return or an error: the other ranks stop too
    finally:
        distributed.close(group)


def check_data_parallel(cfg: Config, data: ExperimentData) -> None:
    """Under torchrun, refuse (one line, on every rank, before the group is joined) what data
    parallelism cannot do: methods with their own episode steps, batches that do not split
    (volumes of several sizes make one-size batches of uneven length)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return

    kinds = shape_kinds([v for t in data.train for v in t.volumes])
    if len(kinds) > 1:
        raise MrbenchError(
            f"{cfg.data.root}: training volumes of {len(kinds)} sizes; data-parallel runs need one "
            "(one-size batches would split unevenly); run it in one process"
        )
    if not METHODS[cfg.method].data_parallel:
        raise MrbenchError(
            f"method {cfg.method!r} is not data-parallel yet (its steps draw their own episodes and take "
            "autograd.grad per task); run it in one process, or torchrun one of: "
            + ", ".join(n for n, c in METHODS.items() if c.data_parallel and c.learned)
        )
    for key, value in (("train.batch", cfg.train.batch), ("train.budget", cfg.train.budget)):
        if value % world:
            raise MrbenchError(
                f"{key} = {value} must be a multiple of the {world} processes (each trains an equal share)"
            )


class _Plan:
    """Rank 0 tells the other ranks, once, whether to train and from where."""

    def __init__(self, group):
        self.group, self.sent = group, False

    def send(self, train: bool, resume: bool = False, retries: int = 0) -> None:
        if not self.sent:
            self.sent = True
            self.group.broadcast_object({"train": train, "resume": resume, "retries": retries})


def fit_with_retries(
    cfg: Config, data: ExperimentData, device, volumes, resume_state, attempts: int, trainer_for, on_diverged=None
):
    """The one retry loop (rank 0 and the other ranks alike): build the method at
    ``train.lr × 0.1^attempts``, train it (resuming from ``resume_state``), and with
    ``train.on_divergence = "retry-lower-lr"`` start again from scratch at a tenth of the lr,
    at most :data:`MAX_RETRIES` times. ``trainer_for(method, train, run_cfg)`` makes the
    trainer; ``on_diverged(info, retrying)`` hears of each divergence. Returns ``(trainer,
    method, run_cfg)``; a divergence past the retries re-raises :class:`RunDiverged`."""
    while True:
        run_cfg = _with_lr(cfg, cfg.train.lr * 0.1**attempts)
        train = SliceDataset(
            data.train, train=True, seed=cfg.train.seed, store=volumes, targets_optional=self_supervised(cfg)
        )
        method = build_method(run_cfg, data, device)
        trainer = trainer_for(method, train, run_cfg)
        try:
            if method.learned:
                with _stop_on_signals(trainer):
                    trainer.fit(resume_state)
            return trainer, method, run_cfg
        except RunDiverged as div:
            attempts += 1
            retrying = cfg.train.on_divergence == "retry-lower-lr" and attempts <= MAX_RETRIES
            if on_diverged is not None:
                on_diverged(div.info, retrying)
            if not retrying:
                raise
            resume_state = None


def _follow(cfg: Config, data: ExperimentData, group) -> None:
    """A rank other than 0: train in lockstep with rank 0 (same retries), write nothing."""
    plan = group.broadcast_object(None)
    if not plan["train"]:
        return
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    device = distributed.rank_device(cfg.train.device, cfg.train.precision, group)
    store = RunStore(cfg.run_dir)
    resume_state = store.load_checkpoint("last") if plan["resume"] else None
    volumes = VolumeStore.from_config(cfg.data)

    def trainer_for(method, train, run_cfg):
        return Trainer(method, train, None, run_cfg.train, store, device, group=group)

    try:
        fit_with_retries(cfg, data, device, volumes, resume_state, plan["retries"], trainer_for)
    except RunEnded:  # rank 0 reports it
        pass


def _execute(cfg: Config, data: ExperimentData, resume: bool, overwrite: bool, quiet: bool, plan=None):
    store = RunStore(cfg.run_dir)
    if store.exists() and not (resume or overwrite):
        raise MrbenchError(f"run directory {store.path} exists; pass --resume to continue it or --overwrite to redo it")
    resume_state = None
    if resume and store.config_path.exists():
        if _identity(_normalised(store.read_json("config.json"))) != _identity(cfg.recorded()):
            raise MrbenchError(
                f"{store.config_path}: the run was started with another configuration; --resume needs the same one "
                "(or --overwrite to redo it)"
            )
        if store.is_done():
            return store, ALREADY_DONE  # finished earlier (e.g. by another sweep): nothing run now
        if store.is_diverged():
            raise RunDiverged(store.read_json("metrics.json").get("diverged", {}), store.path)
        if store.checkpoint_path("last").exists():
            resume_state = store.load_checkpoint("last")
    if overwrite and store.exists():
        store.clear_done()
    retries = store.read_json("retries.json") if resume and store.retries_path.exists() else []
    fresh = not store.path.exists()
    try:
        return _train_and_store(cfg, store, data, resume_state, retries, quiet, plan), DONE
    except MrbenchError:
        # a start that failed before any checkpoint leaves nothing half-made behind
        if fresh and not store.checkpoint_path("last").exists() and not store.is_diverged():
            shutil.rmtree(store.path, ignore_errors=True)
        raise


def _train_and_store(
    cfg: Config, store: RunStore, data: ExperimentData, resume_state, retries: list, quiet: bool, plan=None
) -> RunStore:
    """Train (resuming from ``resume_state``), evaluate and write the run directory.
    ``plan``: data parallel (rank 0), told to the other ranks before training starts."""
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    group = plan.group if plan is not None else None
    device = distributed.rank_device(cfg.train.device, cfg.train.precision, group)
    started = now()
    t0 = time.perf_counter()
    store.write_json("config.json", cfg.recorded())
    manifest = _manifest(cfg, data, device, started)
    store.write_json("manifest.json", manifest)
    volumes = VolumeStore.from_config(cfg.data)
    val = SliceDataset(data.val, train=False, store=volumes)
    bars = []

    def trainer_for(method, train, run_cfg):
        bar, update = _progress_bar(cfg.train.budget if method.learned else 0, quiet)
        bars.append(bar)
        trainer = Trainer(method, train, val, run_cfg.train, store, device, writer, update, group=group)
        if method.learned and method.shares_phases and cfg.train.share_phases and group is None:
            trainer.shared = SharedPhases(store.path.parent / SHARED_DIR)
            trainer.phase_keys = phase_keys(_identity(run_cfg.recorded()), method.phases(), train, data.val, data.train)
        return trainer

    def on_diverged(info, retrying):
        retries.append(info)
        if retrying:
            store.write_json("retries.json", retries)  # a resume continues at the lowered lr

    # closed on every way out: a failed run's flush thread must not outlive a directory the caller removes
    with _writer(store) as writer:
        if plan is not None:
            plan.send(train=True, resume=resume_state is not None, retries=len(retries))
        try:
            trainer, method, run_cfg = fit_with_retries(
                cfg, data, device, volumes, resume_state, len(retries), trainer_for, on_diverged
            )
        except RunDiverged as div:
            diverged = {"run": cfg.run_name, "method": cfg.method, "status": "diverged", "diverged": div.info}
            store.write_json("metrics.json", {**diverged, "retries": retries, "contexts": {}})
            store.mark_diverged()
            raise
        finally:
            for bar in bars:
                bar.close()
        train_seconds = time.perf_counter() - t0
        previews: list[dict] = []
        metrics = evaluate(method, cfg, data, device, volumes, writer=writer, previews=previews)
    if retries:
        metrics["retries"] = retries  # the lr each attempt diverged at; the run ended at run_cfg's
        metrics["lr_final"] = run_cfg.train.lr
    # metrics.json is a pure function of config + data (the determinism test compares it
    # byte for byte); timings live in manifest.json
    metrics["history"] = trainer.history
    metrics["cost"] = {
        "budget_slices": cfg.train.budget if method.learned else 0,
        "trained_slices": trainer.total_used,
        "parameters": method.num_parameters(),
    }
    store.write_json("metrics.json", metrics)
    store.write_previews(previews)
    manifest["finished"] = now()
    manifest["wall_seconds"] = round(time.perf_counter() - t0, 2)  # this process only (resumes add up)
    manifest["train_seconds"] = round(train_seconds, 2)
    manifest["threads"] = torch.get_num_threads()
    if trainer.shared_log:
        manifest["shared_phases"] = trainer.shared_log  # loaded: trained once by another cell, not here
    store.write_json("manifest.json", manifest)
    store.mark_done()
    return store


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """While training: SIGTERM and SIGINT ask the trainer to checkpoint at the next step
    boundary and stop (a second signal kills as usual). Only the main thread can install
    handlers; elsewhere (a library caller's worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        trainer.stop_signal = signum
        for s, h in previous.items():  # a second signal acts at once
            signal.signal(s, h)

    for s in (signal.SIGTERM, signal.SIGINT):
        previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: train.on_divergence = "retry-lower-lr": restarts at lr/10, lr/100 before the run is stored as diverged
MAX_RETRIES = 2


def _with_lr(cfg: Config, lr: float) -> Config:
    """``cfg`` with another ``train.lr`` (config.json keeps the one asked for)."""
    if lr == cfg.train.lr:
        return cfg
    out = copy.deepcopy(cfg)
    out.train.lr = lr
    return out


# operational keys: they may change between an interrupted run and its resumption
_OPERATIONAL = (
    "stop_after",
    "threads",
    "device",
    "workers",
    "share_phases",
)  # how, not what: a run may resume with others


def _normalised(stored: dict) -> dict:
    """A stored config.json as this version writes it: keys added since get their defaults and
    the sections of plug-ins the run does not use are dropped (config.json files written before
    issue 32 held every plug-in's), so a run started before either change still resumes."""
    try:
        return config_from_dict(stored).recorded()
    except MrbenchError:
        return stored


def _identity(cfg: dict) -> dict:
    train = {k: v for k, v in cfg["train"].items() if k not in _OPERATIONAL}
    data = {k: v for k, v in cfg.get("data", {}).items() if k != "cache_gb"}  # memory, not results
    return {**{k: v for k, v in cfg.items() if k != "notes"}, "train": train, "data": data}


def _writer(store: RunStore):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(store.tb_dir))


def _digests(data: ExperimentData, files: list[str]) -> dict[str, str]:
    """Each file's digest, from the index cache while the file is unchanged (hashing every
    file of a large dataset at every run start would dominate small runs)."""
    cache = getattr(data.index, "cache", None)
    if cache is None:
        return {f: file_digest(Path(f)) for f in files}
    out = {f: cache.digest(Path(f), file_digest) for f in files}
    cache.save()
    return out


def _manifest(cfg: Config, data: ExperimentData, device: torch.device, started: str) -> dict:
    files = {}
    for group in (data.train, data.val, data.test, data.unseen_test, data.unseen_support):
        for task in group:
            for v in task.volumes:
                files.setdefault(str(v.path), None)
    return {
        "run": cfg.run_name,
        "experiment": cfg.run.experiment,
        "method": cfg.method,
        "scarcity": cfg.scarcity,
        "seed": cfg.train.seed,
        "data_root": str(Path(cfg.data.root).resolve()),
        "files": _digests(data, sorted(files)),
        "training_slices": data.slice_lists(),
        "support_slices": data.support_slices,
        "device": str(device),
        "started": started,
        **environment(),
    }
