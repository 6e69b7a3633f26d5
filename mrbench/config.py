"""Run configuration: TOML files parsed into validated dataclasses.

Every default lives here, in one place; ``config.json`` of a run writes all of
them out. A configuration comes from (lowest to highest precedence) these
defaults, an optional TOML file (``--config``), and ``--set section.key=value``
overrides. Unknown sections or keys and values of the wrong type or range are
:class:`~mrbench.errors.MrbenchError` naming the key (and the file).

``--set`` values are read as TOML values (``train.lr=3e-4``, ``data.tasks=["AXT1"]``)
and fall back to plain strings; list-valued keys also take comma-separated
strings (``data.tasks=AXT1,AXT2``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import MrbenchError


@dataclass
class DataConfig:
    root: str = "data/synth-brain"  # fastMRI-format directory with train/ val/ test/
    tasks: list[str] = field(default_factory=lambda: ["AXT1", "AXT2"])  # seen contrasts
    scarce: list[str] = field(default_factory=lambda: ["AXT2"])  # contrasts the scarcity level cuts
    mask: list[str] = field(default_factory=lambda: ["equispaced"])  # seen mask kinds
    acceleration: list[float] = field(default_factory=lambda: [4.0])  # seen accelerations
    center_fraction: float = 0.08
    unseen: list[dict] = field(default_factory=list)  # [{contrast, mask, acceleration}]
    split_seed: int = 0  # fixes scarcity subsets and support sets, independent of the run seed
    val_volumes: int = 2  # validation volumes per task (0 = all); validation runs often

    def check(self, key):
        _require(bool(self.tasks), key("tasks"), "must name at least one contrast")
        _require(len(set(self.tasks)) == len(self.tasks), key("tasks"), f"names a contrast twice: {self.tasks}")
        for s in self.scarce:
            _require(s in self.tasks, key("scarce"), f"{s!r} is not one of data.tasks {self.tasks}")
        _require(bool(self.mask) and bool(self.acceleration), key("mask"), "needs at least one mask and acceleration")
        for a in self.acceleration:
            _require(a > 1, key("acceleration"), f"must be > 1, got {a:g}")
        _require(0 < self.center_fraction < 1, key("center_fraction"), f"must be in (0, 1), got {self.center_fraction}")
        _require(self.val_volumes >= 0, key("val_volumes"), "must be ≥ 0")
        for i, u in enumerate(self.unseen):
            extra = set(u) - {"contrast", "mask", "acceleration"}
            _require("contrast" in u, key(f"unseen[{i}]"), "needs a 'contrast'")
            _require(not extra, key(f"unseen[{i}]"), f"unknown key(s) {sorted(extra)}")


@dataclass
class TrainConfig:
    budget: int = 2000  # slices through forward+backward, equal for every method
    batch: int = 4
    lr: float = 3e-3  # measured best of {1e-3, 3e-3} for CPU-sized budgets (README)
    seed: int = 0
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0  # max gradient norm, 0 = off
    val_every: int = 500  # slices between validations (and checkpoints)
    sampling: str = "uniform"  # uniform | stratified (tasks interleaved, scarce up-sampled)
    pretrain_fraction: float = 0.5  # transfer: share of the budget spent pre-training
    finetune_lr_factor: float = 0.3  # transfer: fine-tuning lr = lr × this (0.3 measured better than 0.1, README)
    threads: int = 0  # torch CPU threads, 0 = all cores
    device: str = "auto"  # auto | cpu | cuda
    stop_after: int = 0  # stop (as if pre-empted) after the first checkpoint past this many slices; 0 = off

    def check(self, key):
        _require(self.budget > 0, key("budget"), f"must be > 0, got {self.budget}")
        _require(self.batch > 0, key("batch"), f"must be > 0, got {self.batch}")
        _require(self.lr > 0, key("lr"), f"must be > 0, got {self.lr}")
        _require(self.schedule in ("cosine", "constant"), key("schedule"), f"must be cosine or constant, got {self.schedule!r}")
        _require(self.grad_clip >= 0, key("grad_clip"), "must be ≥ 0")
        _require(self.val_every > 0, key("val_every"), "must be > 0")
        _require(self.sampling in ("uniform", "stratified"), key("sampling"), f"must be uniform or stratified, got {self.sampling!r}")
        _require(0 < self.pretrain_fraction < 1, key("pretrain_fraction"), "must be in (0, 1)")
        _require(self.finetune_lr_factor > 0, key("finetune_lr_factor"), "must be > 0")
        _require(self.threads >= 0, key("threads"), "must be ≥ 0")
        _require(self.device in ("auto", "cpu", "cuda"), key("device"), f"must be auto, cpu or cuda, got {self.device!r}")
        _require(self.stop_after >= 0, key("stop_after"), "must be ≥ 0")


@dataclass
class ModelConfig:
    backbone: str = "varnet"  # unet | varnet (registry: mrbench.models.BACKBONES)
    size: str = "demo"  # demo | paper (fastMRI E2E-VarNet: 12 cascades, 18 chans, 4 pools)
    cascades: int = 0  # 0 = from size
    chans: int = 0
    pools: int = 0
    sens_chans: int = 0
    sens_pools: int = 0
    # mtl-varnet: one letter per cascade, I shared, V split, Y shared encoder, W attention
    blocks: str = ""  # "" = "II" + "V"·(cascades − 2)
    share_etas: bool = True  # one η per cascade (True) or one per task per cascade

    def check(self, key):
        from .models import BACKBONES, SIZES

        bad = set(self.blocks) - set("IVYW")
        _require(not bad, key("blocks"), f"letters must be I, V, Y or W, got {''.join(sorted(bad))!r}")

        _require(self.backbone in BACKBONES, key("backbone"), f"unknown backbone {self.backbone!r}; valid: {', '.join(sorted(BACKBONES))}")
        _require(self.size in SIZES, key("size"), f"must be one of {', '.join(SIZES)}, got {self.size!r}")
        for name in ("cascades", "chans", "pools", "sens_chans", "sens_pools"):
            _require(getattr(self, name) >= 0, key(name), "must be ≥ 0 (0 = from size)")

    def backbone_kwargs(self) -> dict:
        """Constructor arguments: the size preset, overridden by explicit non-zero values,
        restricted to what the backbone accepts. A lone U-Net gets twice the preset width
        (a VarNet spreads its capacity over several cascades)."""
        import inspect

        from .models import BACKBONES, SIZES

        kw = dict(SIZES[self.size])
        if self.backbone in ("unet", "km-unet"):
            kw["chans"] *= 2
        for name in kw:
            if getattr(self, name, 0):
                kw[name] = getattr(self, name)
        accepted = inspect.signature(BACKBONES[self.backbone]).parameters
        return {k: v for k, v in kw.items() if k in accepted}


@dataclass
class EvalConfig:
    adapt_steps: list[int] = field(default_factory=lambda: [0, 5, 10])  # on unseen contexts; 0 always included
    support: int = 4  # k-shot support slices per unseen context, the same for every method
    adapt_lr: float = 1e-4
    max_volumes: int = 0  # test volumes per context, 0 = all

    def check(self, key):
        _require(all(s >= 0 for s in self.adapt_steps), key("adapt_steps"), "must be ≥ 0")
        _require(self.support > 0, key("support"), "must be > 0")
        _require(self.adapt_lr > 0, key("adapt_lr"), "must be > 0")
        _require(self.max_volumes >= 0, key("max_volumes"), "must be ≥ 0")
        if 0 not in self.adapt_steps:
            self.adapt_steps = [0, *self.adapt_steps]
        self.adapt_steps = sorted(set(self.adapt_steps))


@dataclass
class MtlConfig:
    """Multi-task loss weighting (Liu et al. 2021); the block structure is in [model]."""

    weighting: str = "naive"  # naive | uncert | dwa | gradnorm | pcgrad (mrbench.methods.weighting.WEIGHTINGS)
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5

    def check(self, key):
        from .methods.weighting import WEIGHTINGS

        _require(self.weighting in WEIGHTINGS, key("weighting"), f"unknown weighting {self.weighting!r}; valid: {', '.join(sorted(WEIGHTINGS))}")
        _require(self.dwa_temperature > 0, key("dwa_temperature"), "must be > 0")
        _require(self.gradnorm_alpha >= 0, key("gradnorm_alpha"), "must be ≥ 0")


@dataclass
class MetaConfig:
    """Meta-learning (maml, metadrop, kmmaml): episodes, inner loop, test-time mode."""

    order: int = 1  # 1 = first-order, 2 = differentiate through the inner loop
    inner_steps: int = 1  # SGD steps on the support loss per task
    inner_lr: float = 1e-2
    support: int = 2  # support slices per task per episode
    query: int = 2  # query slices per task per episode
    tasks_per_batch: int = 2  # tasks (contexts) per meta-batch
    adapt: str = "all"  # parameter groups adapted in the inner loop (method-specific names, e.g. all | hyper)
    alpha: float = 1.0  # metadrop: φ ← φ₀ + α(φ̃ − φ₀) − η_meta ∇L_meta(φ̃)
    eta_meta: float = 1e-3  # metadrop with outer = "sgd"
    outer: str = "adam"  # metadrop's outer step: adam (engine's Adam at train.lr on the meta gradient) | sgd (η_meta)
    meta_context: str = "any"  # metadrop: other-contrast | other-mask | other-acceleration | any
    embedding: int = 256  # kmmaml: context embedding size
    rank: int = 1  # kmmaml: rank of the kernel modulation
    test_mode: str = "hyper"  # kmmaml at test time: on-the-fly | hyper | all

    def check(self, key):
        _require(self.order in (1, 2), key("order"), f"must be 1 or 2, got {self.order}")
        _require(self.inner_steps >= 0, key("inner_steps"), "must be ≥ 0")
        _require(self.inner_lr > 0, key("inner_lr"), "must be > 0")
        for name in ("support", "query", "tasks_per_batch", "embedding", "rank"):
            _require(getattr(self, name) > 0, key(name), "must be > 0")
        _require(self.alpha > 0, key("alpha"), "must be > 0")
        _require(self.eta_meta > 0, key("eta_meta"), "must be > 0")
        _require(
            self.meta_context in ("other-contrast", "other-mask", "other-acceleration", "any"),
            key("meta_context"),
            f"must be other-contrast, other-mask, other-acceleration or any, got {self.meta_context!r}",
        )
        _require(self.outer in ("adam", "sgd"), key("outer"), f"must be adam or sgd, got {self.outer!r}")
        _require(self.test_mode in ("on-the-fly", "hyper", "all"), key("test_mode"), f"must be on-the-fly, hyper or all, got {self.test_mode!r}")


@dataclass
class RunConfig:
    out: str = "runs"
    experiment: str = "default"
    name: str = ""  # run directory name; "" = <method>-<backbone>-s<scarcity>-seed<seed>

    def check(self, key):
        _require(bool(self.experiment) and "/" not in self.experiment, key("experiment"), "must be a plain name")


@dataclass
class Config:
    method: str = "stl"
    scarcity: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mtl: MtlConfig = field(default_factory=MtlConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self):
        from .methods import METHODS

        _require(self.method in METHODS, "method", f"unknown method {self.method!r}; valid: {', '.join(sorted(METHODS))}")
        _require(self.scarcity >= 0, "scarcity", f"must be ≥ 0, got {self.scarcity}")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.check(lambda k, s=f.name: f"{s}.{k}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_name(self) -> str:
        """``<method>-<backbone>-s<scarcity>-seed<seed>``; mtl runs name their blocks and weighting
        instead of the backbone, so the variants of a grid get their own directories."""
        if self.method == "zero-filled":
            variant = "none"
        elif self.method == "mtl":
            from .models import SIZES

            cascades = self.model.cascades or SIZES[self.model.size]["cascades"]
            blocks = self.model.blocks or "II" + "V" * (cascades - 2)
            variant = f"{blocks}-{self.mtl.weighting}" + ("" if self.model.share_etas else "-etas")
        else:
            variant = self.model.backbone
        return self.run.name or f"{self.method}-{variant}-s{self.scarcity}-seed{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out) / self.run.experiment / self.run_name


# ----------------------------------------------------------------------------- parsing


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise MrbenchError(f"{key}: {what}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if item_tp is not dict else value
        elif not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise MrbenchError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise MrbenchError(f"{key}: expected a table like {{contrast = \"AXFLAIR\"}}, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MrbenchError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            try:
                value = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MrbenchError(f"{key}: expected a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise MrbenchError(f"{key}: expected a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise MrbenchError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")  # a bug, not bad input


def _apply(obj: Any, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(obj))
            raise MrbenchError(f"unknown key {key!r} (valid in {prefix.rstrip('.') or 'top level'}: {valid})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise MrbenchError(f"{key}: expected a table [{key}], got {v!r}")
            _apply(current, v, f"{key}.")
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def _parse_set(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise MrbenchError(f"--set {item!r}: expected key=value, e.g. train.budget=500")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def read_toml(path: Path, what: str = "config file") -> dict:
    """The parsed TOML file; a missing, unreadable or invalid file is a one-line MrbenchError."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MrbenchError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MrbenchError(f"{what} {path} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MrbenchError(f"{what} {path}: invalid TOML ({exc})") from None


def load_config(
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    **top: Any,
) -> Config:
    """Defaults ← TOML file ← ``--set`` overrides ← keyword arguments (method, scarcity, …)."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        values = read_toml(p)
        values.pop("sweep", None)  # the sweep grid is read by `mrbench sweep`
        try:
            _apply(cfg, values, "")
        except MrbenchError as exc:
            raise MrbenchError(f"config file {p}: {exc}") from None
    for item in overrides:
        keys, value = _parse_set(item)
        nested: dict = {}
        cursor = nested
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        try:
            _apply(cfg, nested, "")
        except MrbenchError as exc:
            raise MrbenchError(f"--set {item}: {exc}") from None
    _apply(cfg, {k: v for k, v in top.items() if v is not None}, "")
    return cfg.check()


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from a run's config.json."""
    cfg = Config()
    _apply(cfg, values, "")
    return cfg.check()
