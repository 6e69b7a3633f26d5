"""One run end to end: data → method → engine → evaluation → run store.

``execute`` is what ``mrbench run`` calls; ``evaluate_run_dir`` is what
``mrbench evaluate`` calls on a finished (or checkpointed) run. Neither knows
which method runs: methods come from :data:`mrbench.methods.METHODS`,
backbones from :data:`mrbench.models.BACKBONES`.
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
from .data.assemble import ExperimentData, assemble, choose_support
from .data.dataset import SliceDataset, VolumeStore
from .data.index import shape_kinds
from .engine import Diverged, Interrupted, Preempted, Trainer, image_grid
from .errors import MrbenchError, RunDiverged, RunInterrupted, RunStopped
from .evaluation.adaptation import adapted_volumes, select_adaptation, support_batch
from .evaluation.evaluate import predict_volumes, score_volumes
from .losses import LOSSES, build_loss, self_supervised
from .methods import METHODS, Method
from .models import build_backbone
from .shared_phases import SHARED_DIR, SharedPhases, phase_keys
from .store import RunStore, environment, file_digest, now, run_lock


def select_device(name: str, precision: str = "fp32") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MrbenchError("train.device = cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "bf16" and name != "cuda" and not cpu_bf16_supported():
        raise MrbenchError(
            "train.precision = bf16 needs a CUDA device or a CPU with bfloat16 instructions "
            "(AVX512-BF16 or AMX); this one has neither, so it trains in fp32"
        )
    return torch.device(name)


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX512-BF16 / AMX): there
    ``train.precision = "bf16"`` makes a demo-size VarNet's training step ~1.3× faster (benchmarks/RESULTS.md,
    "Speed"); elsewhere bf16 would be emulated, slower than fp32, so it is refused."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def build_method(cfg: Config, data: ExperimentData, device: torch.device) -> Method:
    torch.manual_seed(cfg.train.seed)
    kwargs = cfg.model.backbone_kwargs()
    method = METHODS[cfg.method](
        cfg, data.train, data.scarce, lambda: build_backbone(cfg.model.backbone, **kwargs), build_loss(cfg)
    )
    method.models.to(device)
    return method


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


def execute(cfg: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> RunStore | None:
    """Train, evaluate and store one run (under its lock, :func:`run_lock`); return its store.
    Under ``torchrun`` (:mod:`mrbench.distributed`) rank 0 does this and the other ranks only
    train beside it (they return None)."""
    data = assemble(
        cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit
    )  # bad data is reported before run-dir state
    check_loss_fits_data(cfg, data)
    METHODS[cfg.method].check_data(cfg, data)
    device = select_device(
        cfg.train.device, cfg.train.precision
    )  # an impossible device or precision, before anything is written
    check_data_parallel(cfg, data)
    group = distributed.from_env(cuda=device.type == "cuda")
    if group is None:
        with run_lock(cfg.run_dir):
            return _execute(cfg, data, resume, overwrite, quiet)
    try:
        if not group.is_main:
            return _follow(cfg, data, group)
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


def _rank_device(cfg: Config, group) -> torch.device:
    device = select_device(cfg.train.device, cfg.train.precision)
    if group is not None and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    return device


def _follow(cfg: Config, data: ExperimentData, group) -> None:
    """A rank other than 0: train in lockstep with rank 0 (same retries), write nothing."""
    plan = group.broadcast_object(None)
    if not plan["train"]:
        return None
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    device = _rank_device(cfg, group)
    store = RunStore(cfg.run_dir)
    resume_state = store.load_checkpoint("last") if plan["resume"] else None
    volumes = VolumeStore.from_config(cfg.data)
    attempts = plan["retries"]
    while True:
        run_cfg = _with_lr(cfg, cfg.train.lr * 0.1**attempts)
        train = SliceDataset(
            data.train, train=True, seed=cfg.train.seed, store=volumes, targets_optional=self_supervised(cfg)
        )
        trainer = Trainer(build_method(run_cfg, data, device), train, None, run_cfg, store, device, group=group)
        try:
            with _stop_on_signals(trainer):
                trainer.fit(resume_state)
            return None
        except (Preempted, Interrupted):
            return None
        except Diverged:
            attempts += 1
            if cfg.train.on_divergence == "retry-lower-lr" and attempts <= MAX_RETRIES:
                resume_state = None
                continue
            return None


def _execute(cfg: Config, data: ExperimentData, resume: bool, overwrite: bool, quiet: bool, plan=None) -> RunStore:
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
            store.already_done = True  # finished earlier (e.g. by another sweep): nothing run now
            return store
        if store.is_diverged():
            raise RunDiverged(store.read_json("metrics.json").get("diverged", {}), store.path)
        if store.checkpoint_path("last").exists():
            resume_state = store.load_checkpoint("last")
    if overwrite and store.exists():
        store.clear_done()
    retries = store.read_json("retries.json") if resume and store.retries_path.exists() else []
    fresh = not store.path.exists()
    try:
        return _train_and_store(cfg, store, data, resume_state, retries, quiet, plan)
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
    device = _rank_device(cfg, group)
    started = now()
    t0 = time.perf_counter()
    store.write_json("config.json", cfg.recorded())
    manifest = _manifest(cfg, data, device, started)
    store.write_json("manifest.json", manifest)
    volumes = VolumeStore.from_config(cfg.data)
    # closed on every way out: a failed run's flush thread must not outlive a directory the caller removes
    with _writer(store) as writer:
        if plan is not None:
            plan.send(train=True, resume=resume_state is not None, retries=len(retries))
        while True:  # one attempt, or more with train.on_divergence = "retry-lower-lr"
            run_cfg = _with_lr(cfg, cfg.train.lr * 0.1 ** len(retries))
            train = SliceDataset(
                data.train, train=True, seed=cfg.train.seed, store=volumes, targets_optional=self_supervised(cfg)
            )
            val = SliceDataset(data.val, train=False, store=volumes)
            method = build_method(run_cfg, data, device)
            bar, update = _progress_bar(cfg.train.budget if method.learned else 0, quiet)
            try:
                trainer = Trainer(method, train, val, run_cfg, store, device, writer, update, group=group)
                if method.learned and method.shares_phases and cfg.train.share_phases and group is None:
                    trainer.shared = SharedPhases(store.path.parent / SHARED_DIR)
                    trainer.phase_keys = phase_keys(
                        _identity(run_cfg.recorded()), method.phases(), train, data.val, data.train
                    )
                if method.learned:
                    with _stop_on_signals(trainer):
                        trainer.fit(resume_state)
                train_seconds = time.perf_counter() - t0
                previews: list[dict] = []
                metrics = evaluate(method, cfg, data, device, volumes, writer=writer, previews=previews)
                break
            except Preempted as stop:
                raise RunStopped(stop.args[0], store.path) from None
            except Interrupted as sig:
                raise RunInterrupted(sig.signum, sig.slices, store.path) from None
            except Diverged as div:
                retries.append(div.info)
                if cfg.train.on_divergence == "retry-lower-lr" and len(retries) <= MAX_RETRIES:
                    store.write_json("retries.json", retries)  # a resume continues at the lowered lr
                    resume_state = None
                    continue
                store.write_json(
                    "metrics.json",
                    {
                        "run": cfg.run_name,
                        "method": cfg.method,
                        "status": "diverged",
                        "diverged": div.info,
                        "retries": retries,
                        "contexts": {},
                    },
                )
                store.mark_diverged()
                raise RunDiverged(div.info, store.path) from None
            finally:
                bar.close()
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


# ---------------------------------------------------------------------- evaluation


def evaluate(
    method: Method,
    cfg: Config,
    data: ExperimentData,
    device: torch.device,
    volumes: VolumeStore,
    *,
    contexts: str = "all",
    adapt_steps: list[int] | None = None,
    writer=None,
    previews: list | None = None,
) -> dict:
    """Seen test tasks (no adaptation) and unseen contexts after adaptation: scored at 0 steps
    and at the step count chosen on seen validation — what the tables, claims and report read —
    or, with ``eval.curve`` or explicit ``adapt_steps`` (``mrbench evaluate --adapt-steps``),
    at every step count (the diagnostic curve). The choice itself is made over all of
    ``eval.adapt_steps`` either way, and one adaptation trajectory serves every count, so the
    scores at the chosen count do not depend on the curve (issue 31: the curve was ~a third
    of a demo run's evaluation).

    ``previews``, when given, receives one middle slice of the first test volume per
    context (and per adaptation step count) for the report's reconstruction viewer."""
    curve = cfg.eval.curve or adapt_steps is not None
    adapt_steps = sorted(set([0, *(adapt_steps if adapt_steps is not None else cfg.eval.adapt_steps)]))
    for m in method.models.values():
        m.eval()
    out: dict = {
        "run": cfg.run_name,
        "method": cfg.method,
        "scarcity": cfg.scarcity,
        "seed": cfg.train.seed,
        "contexts": {},
    }
    batch = max(8, cfg.train.batch)
    train_counts = data.slice_lists()
    if contexts in ("seen", "all"):
        test = SliceDataset(data.test, train=False, store=volumes)
        for t, task in enumerate(data.test):
            vols = predict_volumes(
                method.reconstructor(t), test, t, batch=batch, device=device, max_volumes=cfg.eval.max_volumes
            )
            _log_volume(writer, f"test/{task.name}", vols)
            _keep_preview(previews, task.name, 0, vols)
            out["contexts"][task.name] = {
                "seen": True,
                "scarce": data.scarce[t],
                "context": task.context.as_dict(),
                "train_slices": train_counts[task.name]["slices"],
                "kspace_source": kspace_sources(task),
                "steps": {"0": score_volumes(vols)},
            }
    if contexts in ("unseen", "all") and data.unseen_test:
        choice = select_adaptation(method, cfg, data, device, volumes, adapt_steps, batch=batch)
        out["adaptation"] = choice
        test = SliceDataset(data.unseen_test, train=False, store=volumes)
        pool = SliceDataset(data.unseen_support, train=False, store=volumes, targets_optional=self_supervised(cfg))
        for t, task in enumerate(data.unseen_test):
            support = support_batch(pool, t, data.support_slices[task.name], device)

            def predict(recon, t=t):
                return predict_volumes(recon, test, t, batch=batch, device=device, max_volumes=cfg.eval.max_volumes)

            scored = adapt_steps if curve else sorted({0, int(choice["steps"])})
            by_steps = adapted_volumes(method, task.context, support, choice, scored, predict)
            steps_out = {}
            for steps, vols in by_steps.items():
                steps_out[str(steps)] = score_volumes(vols)
                _keep_preview(previews, task.name, steps, vols)
                if steps == scored[-1]:
                    _log_volume(writer, f"unseen/{task.name}/steps{steps}", vols)
            out["contexts"][task.name] = {
                "seen": False,
                "scarce": False,
                "context": task.context.as_dict(),
                "train_slices": 0,
                "kspace_source": kspace_sources(task),
                "support_slices": [list(s) for s in data.support_slices[task.name]],
                "chosen_steps": choice["steps"],
                "steps": steps_out,
            }
    out["summary"] = _summary(out["contexts"])
    return out


def kspace_sources(task) -> str:
    """Where a context's test k-space came from (``attrs["kspace_source"]`` of its volumes):
    the tables and the ledger print "simulated from magnitude" beside results (issue 33)."""
    return ", ".join(sorted({v.kspace_source for v in task.volumes} - {""}))


def _summary(contexts: dict) -> dict:
    summary = {}
    for kind, seen in (("seen", True), ("unseen", False)):
        rows = [c for c in contexts.values() if c["seen"] == seen]
        if not rows:
            continue
        summary[kind] = {}
        for steps in sorted({s for c in rows for s in c["steps"]}, key=int):
            vals = [c["steps"][steps]["mean"] for c in rows if steps in c["steps"]]
            summary[kind][steps] = {m: sum(v[m] for v in vals) / len(vals) for m in ("nmse", "psnr", "ssim")}
    return summary


def _keep_preview(previews: list | None, context: str, steps: int, vols: dict) -> None:
    if previews is None or not vols:
        return
    name = sorted(vols)[0]
    v = vols[name]
    s = v["pred"].shape[0] // 2
    previews.append(
        {
            "context": context,
            "steps": steps,
            "volume": name,
            "slice": s,
            **{k: v[k][s].numpy() for k in ("target", "zero_filled", "pred")},
        }
    )


def _log_volume(writer, tag: str, vols: dict) -> None:
    """One image per slice of the first volume, so TensorBoard's step slider scrolls through it."""
    if writer is None or not vols:
        return

    v = vols[sorted(vols)[0]]
    for s in range(v["pred"].shape[0]):
        writer.add_image(tag, image_grid(v["pred"][s], v["target"][s], v["zero_filled"][s]), s, dataformats="HW")


def support_curves(path: str | os.PathLike, sizes: list[int]) -> dict:
    """Each unseen context's metrics against the support-set size (docs/design.md §6): for
    every k in ``sizes`` a support set of k units (``eval.support_unit``), drawn as every
    method's is (split seed and context only), adapted with the run's own chosen rule and lr
    along its step counts, the test volumes scored after each. Stored in metrics.json as
    ``contexts[name]["support_curve"][k][steps]`` (mean metrics); the rest is kept."""

    store = RunStore(path)
    if not store.metrics_path.exists():
        raise MrbenchError(f"{path}: no metrics.json (an unfinished run); finish it with mrbench run … --resume")
    metrics = store.read_json("metrics.json")
    choice = metrics.get("adaptation")
    cfg = config_from_dict(store.read_json("config.json"))
    device = select_device(cfg.train.device)
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)
    if not data.unseen_test:
        raise MrbenchError(f"{path}: no unseen contexts (data.unseen in config.json), so no support curves")
    method = build_method(cfg, data, device)
    if method.learned:
        method.load_state_dict(store.load_checkpoint("best", map_location=device)["models"])
    for m in method.models.values():
        m.eval()
    if not choice or choice.get("rule") in (None, "none"):
        choice = {"rule": "none", "lr": None, "steps": 0}
    volumes = VolumeStore.from_config(cfg.data)
    batch = max(8, cfg.train.batch)
    test = SliceDataset(data.unseen_test, train=False, store=volumes)
    pool = SliceDataset(data.unseen_support, train=False, store=volumes, targets_optional=self_supervised(cfg))
    for t, task in enumerate(data.unseen_test):
        entry = metrics["contexts"].get(task.name)
        if entry is None:
            continue
        steps = sorted(int(s) for s in entry["steps"])
        curve = {}
        for k in sizes:
            picks = choose_support(
                data.unseen_support[t].volumes, k, cfg.data.split_seed, task.name, cfg.eval.support_unit
            )
            support = support_batch(pool, t, picks, device)

            def predict(recon, t=t):
                return predict_volumes(recon, test, t, batch=batch, device=device, max_volumes=cfg.eval.max_volumes)

            by_steps = adapted_volumes(method, task.context, support, choice, steps, predict)
            curve[str(k)] = {str(s): score_volumes(v)["mean"] for s, v in by_steps.items()}
        entry["support_curve"] = curve
    store.write_json("metrics.json", metrics)
    return metrics


def evaluate_run_dir(path: str | os.PathLike, contexts: str = "all", adapt_steps: list[int] | None = None) -> dict:
    """Re-evaluate a stored run from its config.json and best.pt; rewrite metrics.json."""
    store = RunStore(path)
    cfg = config_from_dict(store.read_json("config.json"))
    device = select_device(cfg.train.device)
    data = assemble(cfg.data, cfg.scarcity, cfg.eval.support, cfg.eval.support_unit)
    method = build_method(cfg, data, device)
    if method.learned:
        method.load_state_dict(store.load_checkpoint("best", map_location=device)["models"])
    previews: list[dict] = []
    metrics = evaluate(
        method,
        cfg,
        data,
        device,
        VolumeStore.from_config(cfg.data),
        contexts=contexts,
        adapt_steps=adapt_steps,
        previews=previews,
    )
    if store.metrics_path.exists():
        old = store.read_json("metrics.json")
        for key in ("history", "cost"):
            if key in old:
                metrics[key] = old[key]
    store.write_json("metrics.json", metrics)
    store.write_previews(previews)
    return metrics
