"""The budgeted, deterministic, resumable training loop.

The engine runs a method's :class:`~mrbench.methods.base.Phase` list. For each
phase it builds Adam (with a cosine decay over the phase's slices), draws
batches from a :class:`TaskSampler`, lets the phase compute the loss, clips the
gradient norm and steps — until the phase's budget of slices through
forward+backward is spent. Every ``train.val_every`` slices it validates (mean
SSIM over the phase's tasks), keeps the best state (the same checkpoint
selection rule for every method) and writes ``last.pt`` holding the models,
optimiser, sampler, mask-RNG and torch-RNG states (the learning rate is a
function of the slices used, so it needs no state of its own). A phase ends by
restoring its best-validation weights.

Determinism: every random draw comes from generators seeded by the run seed
and saved in ``last.pt``; validation uses fixed masks and draws nothing, so an
interrupted and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .data.dataset import Sample, SliceDataset
from .errors import RunDiverged, RunInterrupted, RunStopped
from .evaluation.evaluate import predict_volumes, score_volumes, to_device
from .methods.base import Method, Phase, StepResult
from .store import RunStore

#: the factor rule needs the loss above this too: every loss is normalised by the volume's
#: maximum, so a value this large means errors of half the image's brightest pixel everywhere
#: (a blow-up), while a self-supervised loss that starts near 0 (measurement consistency of a
#: data-consistent network) may rise 100-fold to an ordinary 0.04 without diverging
DIVERGENCE_FLOOR = 0.5


def check_divergence(loss: float, grad_norm: float, history: Sequence[float], factor: float) -> str | None:
    """Why this step counts as diverged, or None. ``history``: recent finite losses."""
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    if not math.isfinite(grad_norm):
        return f"non-finite gradient norm {grad_norm}"
    if factor > 0 and history and loss > DIVERGENCE_FLOOR:
        median = float(np.median(history))
        if loss > factor * median:
            return f"loss {loss:.4g} > {factor:g} × running median {median:.4g}"
    return None


class TaskSampler:
    """Draws training items of a set of tasks.

    ``uniform``: epochs over the pooled items of the tasks, shuffled without
    replacement. ``stratified``: tasks interleaved (t0, t1, t0, …), an item drawn
    uniformly within each task — the scarce task is up-sampled to the abundant
    one's rate.

    Volumes of several sizes (``shape_key``): a batch stacks one size. Its first item is drawn
    by the rule; stratified then keeps rotating over the tasks but draws only items of that
    size (a task without any is skipped), uniform pulls the next items of that size in the
    epoch's permutation forward (each item still once per epoch; a batch may come out smaller
    at an epoch's end). With one size nothing changes, draw for draw.
    """

    def __init__(self, dataset: SliceDataset, tasks: list[int], mode: str, seed: int):
        self.mode = mode
        self.by_task = [np.asarray(dataset.task_items(t), dtype=np.int64) for t in tasks]
        self.pool = np.concatenate(self.by_task)
        self.rng = np.random.default_rng(seed)
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self.counter = 0
        self.shapes = dataset.item_shapes
        self.mixed = len(np.unique(self.shapes[self.pool])) > 1

    def same_size(self, items: np.ndarray, first: int) -> np.ndarray:
        return items[self.shapes[items] == self.shapes[first]]

    def next(self, n: int) -> list[int]:
        if self.mixed:
            return self._next_one_size(n)
        out = []
        for _ in range(n):
            if self.mode == "stratified":
                items = self.by_task[self.counter % len(self.by_task)]
                self.counter += 1
                out.append(int(items[self.rng.integers(len(items))]))
            else:
                if self.pos >= len(self.perm):
                    self.perm = self.rng.permutation(self.pool)
                    self.pos = 0
                out.append(int(self.perm[self.pos]))
                self.pos += 1
        return out

    def _next_one_size(self, n: int) -> list[int]:
        out: list[int] = []
        if self.mode == "stratified":
            for _ in range(n * len(self.by_task)):  # every rotation yields at least the first item's task
                if len(out) == n:
                    break
                items = self.by_task[self.counter % len(self.by_task)]
                self.counter += 1
                if out:
                    items = self.same_size(items, out[0])
                if len(items):
                    out.append(int(items[self.rng.integers(len(items))]))
            return out
        if self.pos >= len(self.perm):
            self.perm = self.rng.permutation(self.pool)
            self.pos = 0
        rest = self.perm[self.pos + 1 :]
        take = np.flatnonzero(self.shapes[rest] == self.shapes[self.perm[self.pos]])[: n - 1]
        keep = np.ones(len(rest), dtype=bool)
        keep[take] = False
        batch = np.concatenate([self.perm[self.pos : self.pos + 1], rest[take]])
        self.perm = np.concatenate([self.perm[: self.pos], batch, rest[keep]])
        self.pos += len(batch)
        return [int(i) for i in batch]

    def state(self) -> dict:
        return {
            "rng": json.dumps(self.rng.bit_generator.state),
            "perm": torch.from_numpy(self.perm),  # shared, not copied: perm is replaced, never written in place
            "pos": self.pos,
            "counter": self.counter,
        }

    def load(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.perm = state["perm"].numpy().astype(np.int64)
        self.pos = int(state["pos"])
        self.counter = int(state["counter"])


class Trainer:
    def __init__(
        self,
        method: Method,
        train: SliceDataset,
        val: SliceDataset,
        opts,
        store: RunStore,
        device: torch.device,
        writer=None,
        progress: Callable[[int, dict], None] | None = None,
        group=None,
    ):
        """``opts``: the ``[train]`` section (the engine reads nothing else of the config);
        ``group``: the data-parallel process group (:mod:`mrbench.distributed`), or None."""
        self.group = group
        self.method = method
        self.train = train
        self.val = val
        self.opts = opts
        self.store = store
        self.device = device
        self.writer = writer
        self.progress = progress or (lambda n, info: None)
        self.total_used = 0  # slices over all phases
        self.history: list[dict] = []
        self.stop_signal: int | None = None  # set by a signal handler: checkpoint and stop at the next step
        self._consumed: tuple | None = None  # (sampler, mask-generator) states after the last batch used (workers)
        self.shared = None  # SharedPhases: phase outcomes other cells of the experiment trained (mrbench.shared_phases)
        self.phase_keys: list[str] | None = None  # the content key of each phase's outcome
        self.shared_log: list[dict] = []  # per shared phase: loaded or trained here

    # ------------------------------------------------------------------ fit
    def fit(self, resume_state: dict | None = None) -> None:
        phases = self.method.phases()
        start_phase = 0
        if resume_state is not None:
            start_phase = self._restore(resume_state)
            if not resume_state["optimizer"]:  # saved between phases: the next one starts afresh
                resume_state = None
        for p_idx, phase in enumerate(phases):
            if p_idx < start_phase:
                continue
            resume = resume_state if p_idx == start_phase else None
            key = self.phase_keys[p_idx] if self.shared is not None and self.phase_keys and self.group is None else None
            if key is None:
                self._run_phase(p_idx, phase, resume)
                continue
            with self.shared.lock(key):
                outcome = self.shared.path(key)
                if (
                    resume is None and outcome.exists()
                ):  # trained by another cell: load its outcome (weights, RNGs, history)
                    state = torch.load(outcome, map_location="cpu", weights_only=True)
                    self._restore(state)
                    self.store.save_checkpoint("last", state)  # this run's own between-phase checkpoint
                    self.shared_log.append(
                        {"phase": phase.name, "key": key[:16], "slices": phase.budget, "loaded": True}
                    )
                    continue
                self._run_phase(p_idx, phase, resume)  # from scratch, or resumed mid-phase from this run's checkpoint
                if self.is_main:
                    self.shared.publish(key, self.store.checkpoint_path("last"))
                self.shared_log.append({"phase": phase.name, "key": key[:16], "slices": phase.budget, "loaded": False})
        if self.is_main:
            self.store.save_checkpoint("best", {"models": self.method.state_dict()})

    def _restore(self, state: dict) -> int:
        """Take over a checkpoint's models, slice count, history and random states; the phase
        it was saved in (between phases: the next one)."""
        self.method.load_state_dict(state["models"])
        before, self.total_used = self.total_used, int(state["total_used"])
        self.history = json.loads(state["history"])
        self.train.set_rng_state(json.loads(state["dataset_rng"]))
        torch.set_rng_state(state["torch_rng"])
        self.progress(self.total_used - before, {"resumed": True})  # the slices the bar has not seen
        return int(state["phase"])

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main

    def _make_optim(self, phase: Phase):
        params = self.method.parameters(phase.modules)
        return params, torch.optim.Adam(params, lr=phase.lr)

    def _set_lr(self, opt, phase: Phase, used: int) -> None:
        """Cosine decay over the phase's *slices* (not steps): methods whose steps push
        different numbers of slices (meta-learning episodes) follow the same schedule."""
        if self.opts.schedule == "cosine" and phase.budget > 0:
            lr = phase.lr * 0.5 * (1 + math.cos(math.pi * min(used, phase.budget) / phase.budget))
            for group in opt.param_groups:
                group["lr"] = lr

    def _run_phase(self, p_idx: int, phase: Phase, resume: dict | None) -> None:
        cfg = self.opts
        params, opt = self._make_optim(phase)
        sampler = TaskSampler(self.train, phase.tasks, phase.sampling, seed=cfg.seed * 1000 + p_idx)
        used, steps, next_val = 0, 0, min(cfg.val_every, phase.budget)
        best_score, best_state = -math.inf, None
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sampler.load(resume["sampler"])
            used, steps, next_val = int(resume["used"]), int(resume["steps"]), int(resume["next_val"])
            best_score = float(resume["best_score"])
            best_state = resume["best_state"] or None
        elif phase.on_start is not None:
            phase.on_start()
        for m in phase.modules:
            self.method.models[m].train()
        recent: deque[float] = deque(maxlen=50)  # finite losses of the last 50 steps (divergence_factor)
        loaded = None
        if cfg.workers > 0 and phase.custom_step is None and self.group is None:
            loaded = self._loaded_batches(sampler, phase, used)
        while used < phase.budget:
            stop = self.stop_signal is not None
            if self.group is not None and self.group.any(stop):  # one rank signalled: all stop here
                stop, self.stop_signal = True, self.stop_signal or 15
            if stop:  # SIGTERM/SIGINT: a checkpoint at this step boundary, then stop
                self._checkpoint(p_idx, used, steps, next_val, best_score, best_state, opt, sampler)
                raise RunInterrupted(self.stop_signal, self.total_used, self.store.path)
            opt.zero_grad(set_to_none=True)
            with self._precision():
                if phase.custom_step is not None:
                    result = phase.custom_step(self._batch_source(sampler, opt.param_groups[0]["lr"]))
                else:
                    n = min(cfg.batch, phase.budget - used)
                    if loaded is not None:
                        batch, self._consumed = next(loaded)
                        result = phase.step(batch)
                    else:
                        result = phase.step(self._batch(sampler.next(n)))
            if self.group is not None:  # data parallel: the batch mean over all ranks
                self.group.average_gradients(params)
                result = StepResult(self.group.mean(result.loss), result.slices * self.group.world, result.task_losses)
            # max_norm = inf measures the norm without clipping (1× scale)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
            why = check_divergence(result.loss, grad_norm, recent, cfg.divergence_factor)
            if why is not None:
                info = {"reason": why, "phase": phase.name, "slices": self.total_used, "loss": result.loss,
                        "lr": opt.param_groups[0]["lr"]}  # fmt: skip
                raise RunDiverged(info, self.store.path)
            recent.append(result.loss)
            opt.step()
            used += result.slices
            self._set_lr(opt, phase, used)
            steps += 1
            self.total_used += result.slices
            self._log_step(phase, result, opt)
            self.progress(result.slices, {"loss": result.loss, "phase": phase.name})
            if used >= next_val or used >= phase.budget:
                score = self.validate(phase) if self.is_main else 0.0
                if self.group is not None:  # rank 0 validates; every rank keeps the same best state
                    score = self.group.broadcast(score)
                if score > best_score or best_state is None:
                    best_score = score
                    best_state = {m: _clone(self.method.models[m].state_dict()) for m in phase.modules}
                next_val = min(phase.budget, used + cfg.val_every) if used < phase.budget else used
                self._checkpoint(p_idx, used, steps, next_val, best_score, best_state, opt, sampler)
                if cfg.stop_after and self.total_used >= cfg.stop_after and used < phase.budget:
                    raise RunStopped(self.total_used, self.store.path)
                for m in phase.modules:
                    self.method.models[m].train()
        self._consumed = None  # every planned batch was used: the live sampler and masks are current
        if best_state is None and phase.budget == 0:
            best_state = {m: _clone(self.method.models[m].state_dict()) for m in phase.modules}
        for m, state in (best_state or {}).items():
            self.method.models[m].load_state_dict(state)
        for m in phase.modules:
            self.method.models[m].eval()
        # the next phase starts from here; a crash between phases resumes at its start
        self._checkpoint(p_idx + 1, 0, 0, 0, -math.inf, None, None, None)

    def _precision(self):
        """``train.precision = "bf16"``: the training step under autocast on the run's device
        (convolutions in bfloat16; FFTs and the complex algebra stay in complex64, which autocast
        leaves alone); on a CPU without bfloat16 instructions it is refused before the run starts
        (:func:`mrbench.distributed.select_device`). Evaluation stays in fp32."""
        if self.opts.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loaded_batches(self, sampler: TaskSampler, phase: Phase, used: int):
        """The standard steps' batches read by ``train.workers`` DataLoader processes.

        The training process still decides everything random — which items (the sampler)
        and their masks (the dataset's generator), in the order a 0-worker run draws them —
        and hands (item, mask) pairs to the workers, which only read, mask and crop. So the
        batches, and the run, do not depend on the worker count (tests/test_engine_workers.py).
        The loader plans ahead, so each batch carries the sampler and mask-generator states
        after it, which a checkpoint stores (``_consumed``) instead of the planner's."""
        states: deque = deque()
        train, size = self.train, self.opts.batch

        def plan():
            u = used
            while u < phase.budget:
                n = min(size, phase.budget - u)
                indices = sampler.next(n)
                drawn = [train.mask_for(i) for i in indices]
                states.append((sampler.state(), json.dumps(train.rng_state())))
                yield list(zip(indices, drawn))
                u += len(indices)  # one-size batches may come out smaller

        loader = torch.utils.data.DataLoader(
            _Drawn(train),
            batch_sampler=plan(),
            num_workers=self.opts.workers,
            collate_fn=torch.utils.data.default_collate,
        )
        for batch in loader:
            yield to_device(batch, self.device), states.popleft()

    def _batch(self, indices: list[int]) -> Sample:
        if self.group is None:
            samples = [self.train.sample(i) for i in indices]
        else:  # every rank draws every item's mask (the single-process stream), keeps its share
            drawn = [self.train.mask_for(i) for i in indices]
            mine = self.group.shard(list(zip(indices, drawn)))
            samples = [self.train.sample(i, drawn=d) for i, d in mine]
        return to_device(torch.utils.data.default_collate(samples), self.device)

    def _batch_source(self, sampler: TaskSampler, lr: float):
        """For custom steps: ``source(n, task=None)`` → a batch of ``n`` items (of ``task`` if given);
        ``source.lr`` is the phase's scheduled learning rate for this step (for a method's own
        optimiser, e.g. metadrop's inner Adam)."""

        def source(n: int, task: int | None = None) -> Sample:
            if task is None:
                return self._batch(sampler.next(n))
            items = self.train.task_items(task)
            picks = [items[int(i)] for i in sampler.rng.integers(len(items), size=n)]
            if sampler.mixed:  # one size per batch: the rest drawn among the first item's size
                same = sampler.same_size(np.asarray(items), picks[0])
                picks = picks[:1] + [int(same[i]) for i in sampler.rng.integers(len(same), size=n - 1)]
            return self._batch(picks)

        source.lr = lr
        return source

    # ------------------------------------------------------------------ validation
    def validate(self, phase: Phase) -> float:
        """Mean validation SSIM over the phase's tasks (logged per task)."""
        scores = []
        for t in phase.tasks:
            recon = self.method.reconstructor(t)
            for m in phase.modules:
                self.method.models[m].eval()
            vols = predict_volumes(recon, self.val, t, batch=max(8, self.opts.batch), device=self.device)
            res = score_volumes(vols)
            scores.append(res["mean"]["ssim"])
            name = self.val.tasks[t].name
            self.history.append({"slices": self.total_used, "phase": phase.name, "task": name, **res["mean"]})
            if self.writer is not None:
                for k, v in res["mean"].items():
                    self.writer.add_scalar(f"val/{k}/{name}", v, self.total_used)
                first = next(iter(vols.values()))
                mid = first["target"].shape[0] // 2
                self.writer.add_image(
                    f"val/recon|target|zero-filled|5x error/{name}",
                    image_grid(first["pred"][mid], first["target"][mid], first["zero_filled"][mid]),
                    self.total_used,
                    dataformats="HW",
                )
        if self.writer is not None:
            for key in phase.modules:
                etas = getattr(self.method.models[key], "etas", None)
                if callable(etas):
                    for i, eta in enumerate(etas()):
                        self.writer.add_scalar(f"eta/{key}/cascade{i}", float(eta), self.total_used)
        return float(np.mean(scores))

    # ------------------------------------------------------------------ io
    def _log_step(self, phase: Phase, result: StepResult, opt) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", result.loss, self.total_used)
        self.writer.add_scalar(f"train/lr/{phase.name}", opt.param_groups[0]["lr"], self.total_used)
        for t, v in result.task_losses.items():
            self.writer.add_scalar(f"train/loss/{self.train.tasks[t].name}", v, self.total_used)
        scalars = getattr(self.method, "scalars", None)  # e.g. MTL loss weights, s_t
        if callable(scalars):
            for k, v in scalars().items():
                self.writer.add_scalar(f"train/{k}", v, self.total_used)

    def _checkpoint(self, p_idx, used, steps, next_val, best_score, best_state, opt, sampler) -> None:
        if not self.is_main:  # rank 0 writes; the others hold the same state
            return
        self.store.save_checkpoint(
            "last",
            {
                "phase": p_idx,
                "used": used,
                "steps": steps,
                "next_val": next_val,
                "total_used": self.total_used,
                "best_score": best_score,
                "best_state": best_state or {},
                "models": self.method.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else {},
                "sampler": (self._consumed[0] if self._consumed else sampler.state()) if sampler is not None else {},
                "dataset_rng": self._consumed[1] if self._consumed else json.dumps(self.train.rng_state()),
                "torch_rng": torch.get_rng_state(),
                "history": json.dumps(self.history),
            },
        )
        if self.writer is not None:
            self.writer.flush()


class _Drawn(torch.utils.data.Dataset):
    """Training items by (index, drawn mask): what a DataLoader worker reads."""

    def __init__(self, dataset: SliceDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> Sample:
        i, drawn = key
        return self.dataset.sample(i, drawn=drawn)


def _clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def image_grid(pred: torch.Tensor, target: torch.Tensor, zero_filled: torch.Tensor) -> torch.Tensor:
    """reconstruction | target | zero-filled | 5×|error|, scaled by the target maximum, in [0, 1]."""
    scale = target.max().clamp_min(1e-12)
    panels = [pred, target, zero_filled, 5 * (pred - target).abs()]
    return torch.cat([(p / scale).clamp(0, 1) for p in panels], dim=-1).float()
