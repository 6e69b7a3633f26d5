"""Run configuration: TOML files parsed into validated dataclasses.

The core sections ([data], [train], [model], [eval], [run]) are defined here; every
plug-in (method, backbone, weighting) declares its own options beside its code as
``options = {"section": Dataclass}`` and :func:`assemble_config` merges them into
:class:`Config` (docs/design.md §8). ``config.json`` of a run writes every value out,
plus ``notes`` on the defaults that followed other keys. A configuration comes from (lowest to highest precedence) these
defaults, an optional TOML file (``--config``), and ``--set section.key=value``
overrides. Unknown sections or keys and values of the wrong type or range are
:class:`~mrbench.errors.MrbenchError` naming the key (and the file).

``--set`` values are read as TOML values (``train.lr=3e-4``, ``data.tasks=["AXT1"]``)
and fall back to plain strings; list-valued keys also take comma-separated
strings (``data.tasks=AXT1,AXT2``) and bracketed bare words (``data.tasks=[AXT1,AXT2]``).

The plug-in registries (methods, losses, backbones, weightings: the layers below) are imported
inside the functions that need them, for start-up speed only — reading an experiment file
(``mrbench table --claims``, ``sweep``) must not import torch. None of them imports this
module, so there is no cycle (``tests/test_layers.py``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
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
    cache_gb: float = (
        8.0  # decoded volumes kept in memory (least recently used evicted); 0 = read every slice from its file
    )
    self_supervised: list[str] = field(
        default_factory=list
    )  # tasks trained from undersampled scans alone (train.ssl_loss)

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
        _require(self.cache_gb >= 0, key("cache_gb"), f"must be ≥ 0 (GiB), got {self.cache_gb}")
        for i, u in enumerate(self.unseen):
            extra = set(u) - {"contrast", "mask", "acceleration"}
            _require("contrast" in u, key(f"unseen[{i}]"), "needs a 'contrast'")
            _require(not extra, key(f"unseen[{i}]"), f"unknown key(s) {sorted(extra)}")


#: task-sampling rules (docs/design.md §5.9); the first is the default, which run names leave out
SAMPLING = ("stratified", "uniform")
#: how a method with several networks spends train.budget; the first is the default (run names leave it out)
BUDGET_PER = ("run", "network")


def sampling_suffix(sampling: str) -> str:
    """The run-name part that says a run used a non-default task-sampling rule (``-uniform``)."""
    return "" if sampling == SAMPLING[0] else f"-{sampling}"


def training_suffix(cfg) -> str:
    """The run-name parts of a learned run's non-default training loss and sampling rule
    (``-ssdu``, ``-uniform``), so the loss and sampling axes get their own directories."""
    loss = "" if cfg.train.loss == "sup" else f"-{cfg.train.loss}"
    if cfg.data.self_supervised:  # e.g. -ei-on-AXFLAIR: those tasks trained without their targets
        loss += f"-{cfg.train.ssl_loss}-on-{'+'.join(cfg.data.self_supervised)}"
        if cfg.train.ssl_weight != 1.0:
            loss += f"-x{cfg.train.ssl_weight:g}"
    from .methods import METHODS

    several = METHODS[cfg.method].several_networks if cfg.method in METHODS else False
    return (
        loss
        + sampling_suffix(cfg.train.sampling)
        + ("-pernet" if several and cfg.train.budget_per == "network" else "")
    )


@dataclass
class TrainConfig:
    budget: int = 2000  # slices through forward+backward, equal for every method
    budget_per: str = "run"  # run: budget is the run's, split between a method's networks (equal compute) | network: each network's (equal steps)
    batch: int = 4
    lr: float = 3e-3  # measured best of {1e-3, 3e-3} for CPU-sized budgets (docs/guide.md)
    seed: int = 0
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 1.0  # max gradient norm, 0 = off
    val_every: int = 500  # slices between validations (and checkpoints)
    sampling: str = "stratified"  # stratified (tasks equally often, scarce up-sampled) | uniform (by slice); one rule for every method
    precision: str = "fp32"  # fp32 | bf16 (autocast of the training step: CUDA, or a CPU with AVX512-BF16/AMX)
    loss: str = "sup"  # training loss (mrbench.losses: sup, mc, ssdu, weighted-ssdu, noise2inverse, ei, moi, mo-ei), also used by fine-tuning
    ssl_loss: str = "ei"  # the loss of the data.self_supervised tasks (the others use train.loss = sup)
    ssl_weight: float = 1.0  # weight of the data.self_supervised tasks' per-sample loss against the supervised ones
    threads: int = 0  # torch CPU threads, 0 = all cores
    workers: int = 0  # DataLoader processes reading and masking training slices (0 = in the training process)
    device: str = "auto"  # auto | cpu | cuda
    stop_after: int = 0  # stop (as if pre-empted) after the first checkpoint past this many slices; 0 = off
    on_divergence: str = (
        "stop"  # stop: store the run as diverged (exit 3) | retry-lower-lr: restart at lr/10, twice at most
    )
    divergence_factor: float = 100.0  # a loss above this × its running median also counts as divergence (0 = off)
    share_phases: bool = (
        True  # load a phase another cell of the experiment already trained, byte for byte (mrbench.shared_phases)
    )

    def check(self, key):
        _require(self.budget > 0, key("budget"), f"must be > 0, got {self.budget}")
        _require(
            self.budget_per in BUDGET_PER,
            key("budget_per"),
            f"must be {' or '.join(BUDGET_PER)}, got {self.budget_per!r}",
        )
        _require(self.batch > 0, key("batch"), f"must be > 0, got {self.batch}")
        _require(self.lr > 0, key("lr"), f"must be > 0, got {self.lr}")
        _require(
            self.schedule in ("cosine", "constant"),
            key("schedule"),
            f"must be cosine or constant, got {self.schedule!r}",
        )
        _require(self.grad_clip >= 0, key("grad_clip"), "must be ≥ 0")
        _require(self.val_every > 0, key("val_every"), "must be > 0")
        _require(self.sampling in SAMPLING, key("sampling"), f"must be {' or '.join(SAMPLING)}, got {self.sampling!r}")
        _require(self.precision in ("fp32", "bf16"), key("precision"), f"must be fp32 or bf16, got {self.precision!r}")
        from .losses import LOSSES

        LOSSES.lookup(self.loss, key("loss"))
        ssl = [n for n, c in LOSSES.items() if not c.supervised]
        _require(
            self.ssl_loss in ssl,
            key("ssl_loss"),
            f"must be a self-supervised loss ({', '.join(ssl)}), got {self.ssl_loss!r}",
        )
        _require(self.ssl_weight > 0, key("ssl_weight"), f"must be > 0, got {self.ssl_weight}")
        _require(self.threads >= 0, key("threads"), "must be ≥ 0")
        _require(self.workers >= 0, key("workers"), "must be ≥ 0")
        _require(
            self.device in ("auto", "cpu", "cuda"), key("device"), f"must be auto, cpu or cuda, got {self.device!r}"
        )
        _require(self.stop_after >= 0, key("stop_after"), "must be ≥ 0")
        _require(
            self.on_divergence in ("stop", "retry-lower-lr"),
            key("on_divergence"),
            f"must be stop or retry-lower-lr, got {self.on_divergence!r}",
        )
        _require(self.divergence_factor >= 0, key("divergence_factor"), "must be ≥ 0 (0 = off)")


@dataclass
class ModelConfig:
    """The options every backbone shares; a backbone adds its own (``options`` beside its code)."""

    backbone: str = ""  # "" = the method's own (km-unet for kmmaml, mtl-varnet for mtl, else varnet)
    size: str = "demo"  # demo | paper (fastMRI E2E-VarNet: 12 cascades, 18 chans, 4 pools)
    cascades: int = 0  # 0 = from size
    chans: int = 0
    pools: int = 0
    sens_chans: int = 0
    sens_pools: int = 0

    def check(self, key):
        from .models import BACKBONES, SIZES

        if self.backbone:
            BACKBONES.lookup(self.backbone, key("backbone"))
        _require(self.size in SIZES, key("size"), f"must be one of {', '.join(SIZES)}, got {self.size!r}")
        for name in ("cascades", "chans", "pools", "sens_chans", "sens_pools"):
            _require(getattr(self, name) >= 0, key(name), "must be ≥ 0 (0 = from size)")

    def backbone_kwargs(self, backbone: str | None = None) -> dict:
        """Constructor arguments of ``backbone`` (default: ``model.backbone``): the size preset,
        times the backbone's ``preset_width`` (a lone U-Net gets twice the VarNet width, which a
        VarNet spreads over several cascades), overridden by explicit non-zero values,
        restricted to what the backbone accepts."""
        import inspect

        from .models import BACKBONES, SIZES

        cls = BACKBONES[backbone or self.backbone]
        kw = dict(SIZES[self.size])
        kw["chans"] *= getattr(cls, "preset_width", 1)
        for name in kw:
            if getattr(self, name, 0):
                kw[name] = getattr(self, name)
        options = getattr(cls, "options", {}).get("model", ())
        for part in options if isinstance(options, tuple) else (options,):
            for f in dataclasses.fields(part):  # the backbone's own [model] keys (e.g. modl's iterations)
                kw[f.name] = getattr(self, f.name)
        accepted = inspect.signature(cls).parameters
        return {k: v for k, v in kw.items() if k in accepted}


@dataclass
class EvalConfig:
    adapt_steps: list[int] = field(default_factory=lambda: [0, 5, 10])  # on unseen contexts; 0 always included
    support: int = (
        2  # support set per unseen context (and per seen one, for choosing the adaptation), the same for every method
    )
    support_unit: str = "volumes"  # volumes (whole volumes: 2 × 24 slices of the built-in data) | slices
    adapt_lr: list[float] = field(default_factory=lambda: [1e-4, 1e-3])  # finetune rule's candidate lrs
    adapt_batch: int = 0  # support slices per adaptation step (a fixed cyclic minibatch order), 0 = the whole set
    select: str = "seen-val"  # seen-val: rule, lr and steps chosen on seen contexts' validation data | fixed
    max_volumes: int = 0  # test volumes per context, 0 = all
    curve: bool = False  # score unseen test volumes at every adapt_steps count (the diagnostic curve); default: 0 and the chosen count only

    def check(self, key):
        _require(all(s >= 0 for s in self.adapt_steps), key("adapt_steps"), "must be ≥ 0")
        _require(self.support > 0, key("support"), "must be > 0")
        _require(
            self.support_unit in ("volumes", "slices"),
            key("support_unit"),
            f"must be volumes or slices, got {self.support_unit!r}",
        )
        _require(
            bool(self.adapt_lr) and all(lr > 0 for lr in self.adapt_lr),
            key("adapt_lr"),
            "must be one or more numbers > 0",
        )
        _require(self.select in ("seen-val", "fixed"), key("select"), f"must be seen-val or fixed, got {self.select!r}")
        _require(self.max_volumes >= 0, key("max_volumes"), "must be ≥ 0")
        _require(self.adapt_batch >= 0, key("adapt_batch"), "must be ≥ 0 (0 = the whole support set)")
        if 0 not in self.adapt_steps:
            self.adapt_steps = [0, *self.adapt_steps]
        self.adapt_steps = sorted(set(self.adapt_steps))


@dataclass
class RunConfig:
    out: str = "runs"
    experiment: str = "default"
    name: str = ""  # run directory name; "" = <method>-<backbone>-s<scarcity>-seed<seed>

    def check(self, key):
        _require(bool(self.experiment) and "/" not in self.experiment, key("experiment"), "must be a plain name")


#: The sections every run has, defined here; plug-ins add fields to these and sections of
#: their own (``options`` on a method, backbone or weighting class).
CORE_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "train": TrainConfig,
    "model": ModelConfig,
    "eval": EvalConfig,
    "run": RunConfig,
}

#: the owner of the core sections' keys (:meth:`Config.recorded` keeps them always)
CORE = ("core", "")

#: ``data.root`` of the built-in data; its default configuration also has an unseen context.
BUILTIN_ROOT = "data/synth-brain"
BUILTIN_UNSEEN = [{"contrast": "AXFLAIR"}]


class _ConfigBase:
    """Behaviour of the assembled :class:`Config` (its fields come from :func:`assemble_config`)."""

    def check(self):
        from .methods import METHODS

        METHODS.lookup(self.method, "method")
        _require(self.scarcity >= 0, "scarcity", f"must be ≥ 0, got {self.scarcity}")
        self._resolve_defaults(METHODS[self.method])
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.check(lambda k, s=f.name: f"{s}.{k}")
        for t in self.data.self_supervised:
            _require(t in self.data.tasks, "data.self_supervised", f"{t!r} is not one of data.tasks {self.data.tasks}")
        _require(
            not self.data.self_supervised or self.train.loss == "sup",
            "data.self_supervised",
            f'the other tasks train with train.loss, which must then be "sup" (got {self.train.loss!r}); '
            "the self-supervised tasks' loss is train.ssl_loss",
        )
        METHODS[self.method].check_config(self)  # the method's refusals across sections (e.g. meta.vmap)
        return self

    def _resolve_defaults(self, method) -> None:
        """Defaults that follow other keys; each one applied is noted in config.json."""
        explicit = getattr(self, "explicit", set())
        notes = self.notes = []
        if not self.model.backbone:
            self.model.backbone = method.backbones[0] if method.backbones else "varnet"
            notes.append(f"model.backbone = {self.model.backbone!r}: method {self.method}'s default (not set)")
        elif method.backbones and self.model.backbone not in method.backbones:
            raise MrbenchError(
                f"model.backbone: method {self.method} trains {' or '.join(method.backbones)}, got {self.model.backbone!r} "
                "(leave model.backbone unset to use the method's own)"
            )
        default_tasks = self.data.tasks == DataConfig().tasks
        if not default_tasks and "data.scarce" not in explicit and self.data.scarce:
            self.data.scarce = []
            notes.append(
                "data.scarce = []: data.tasks was changed and data.scarce not set (the default AXT2 goes with the default tasks)"
            )
        if default_tasks and self.data.root == BUILTIN_ROOT and "data.unseen" not in explicit and not self.data.unseen:
            self.data.unseen = [dict(u) for u in BUILTIN_UNSEEN]
            notes.append("data.unseen = AXFLAIR: the built-in data's default unseen context")

    def to_dict(self) -> dict:
        """Every section and key, of every plug-in (what ``--set`` and the TOML files address)."""
        out = dataclasses.asdict(self)
        if getattr(self, "notes", None):
            out["notes"] = list(self.notes)
        return out

    def plugins(self) -> set[tuple[str, str]]:
        """The plug-ins this run uses, as (registry kind, name): its method, backbone, loss(es)
        and, where the method has a ``weighting`` option, that weighting."""
        chosen = {("method", self.method), ("backbone", self.model.backbone), ("loss", self.train.loss)}
        if self.data.self_supervised:
            chosen.add(("loss", self.train.ssl_loss))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            for part in getattr(type(section), "parts", ()):
                if ("method", self.method) in self.part_owners.get(
                    part, ()
                ) and "weighting" in part.__dataclass_fields__:
                    chosen.add(("weighting", section.weighting))
        return chosen

    def recorded(self) -> dict:
        """What ``config.json`` holds and resume identity compares: the core sections' keys plus
        the keys of the plug-ins this run uses (:meth:`plugins`) — a key of a plug-in the run
        does not use is not part of it, so changing that plug-in's default changes no run."""
        chosen = self.plugins() | {CORE}
        out = {"method": self.method, "scarcity": self.scarcity}
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if not dataclasses.is_dataclass(section):
                continue
            keys = [
                k.name
                for part in getattr(type(section), "parts", ())
                if self.part_owners.get(part, set()) & chosen
                for k in dataclasses.fields(part)
            ]
            if keys:
                values = dataclasses.asdict(section)
                out[f.name] = {k: values[k] for k in keys}
        if getattr(self, "notes", None):
            out["notes"] = list(self.notes)
        return out

    @property
    def run_name(self) -> str:
        """``<method>-<variant>-s<scarcity>-seed<seed>``; the method names its variant
        (:meth:`~mrbench.methods.base.Method.run_variant`: the backbone, or mtl's blocks and
        weighting), so the variants of a grid get their own directories."""
        from .methods import METHODS

        cls = METHODS[self.method]
        variant = cls.run_variant(self) + (training_suffix(self) if cls.learned else "")
        return self.run.name or f"{self.method}-{variant}-s{self.scarcity}-seed{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out) / self.run.experiment / self.run_name


def _merge_section(name: str, parts: list[type]) -> type:
    """One dataclass for section ``[name]`` with the fields of every part, in order; its
    ``check`` runs every part's ``check``. Two parts declaring one key is a bug."""
    fields, owner = [], {}
    for part in parts:
        hints = typing.get_type_hints(part)
        for f in dataclasses.fields(part):
            if f.name in owner:
                raise TypeError(
                    f"[{name}].{f.name} is declared by both {owner[f.name].__qualname__} and {part.__qualname__}"
                )
            owner[f.name] = part
            spec = (
                field(default=f.default)
                if f.default is not dataclasses.MISSING
                else field(default_factory=f.default_factory)
            )
            fields.append((f.name, hints[f.name], spec))

    def check(self, key):
        for part in parts:
            if hasattr(part, "check"):
                part.check(self, key)

    namespace = {"check": check, "parts": tuple(parts)}
    for part in parts:  # helper methods a part defines (e.g. ModelConfig.backbone_kwargs)
        for attr, value in vars(part).items():
            if callable(value) and not attr.startswith("__") and attr != "check":
                namespace.setdefault(attr, value)
    return dataclasses.make_dataclass(f"{name.title()}Section", fields, namespace=namespace)


def assemble_config() -> type:
    """The :class:`Config` dataclass: the core sections plus every plug-in's options.

    A plug-in (method, backbone, weighting) declares ``options = {"section": Dataclass}``
    (or a tuple of dataclasses, e.g. the shared meta-learning keys plus its own) next to
    its code; adding one with options is its own file and one registry line."""
    from .losses import LOSSES
    from .methods import METHODS
    from .methods.weighting import WEIGHTINGS
    from .models import BACKBONES

    parts: dict[str, list[type]] = {k: [v] for k, v in CORE_SECTIONS.items()}
    owners: dict[type, set] = {v: {CORE} for v in CORE_SECTIONS.values()}
    for registry in (BACKBONES, METHODS, WEIGHTINGS, LOSSES):
        for name, plugin in registry.items():
            for section, options in getattr(plugin, "options", {}).items():
                for part in options if isinstance(options, tuple) else (options,):
                    if part not in parts.setdefault(section, []):
                        parts[section].append(part)
                    owners.setdefault(part, set()).add((registry.kind, name))
    fields = [("method", str, field(default="stl")), ("scarcity", int, field(default=0))]
    for section, ps in parts.items():
        fields.append((section, _merge_section(section, ps), None))
    fields = [(n, t, f if f is not None else field(default_factory=t)) for n, t, f in fields]
    config = dataclasses.make_dataclass("Config", fields, bases=(_ConfigBase,))
    config.part_owners = owners
    return config


Config = assemble_config()


# ----------------------------------------------------------------------------- parsing


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise MrbenchError(f"{key}: {what}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # e.g. float | str: the first type that takes it
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except MrbenchError as exc:
                errors.append(str(exc))
        raise MrbenchError(errors[0])
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
            raise MrbenchError(f'{key}: expected a table like {{contrast = "AXFLAIR"}}, got {value!r}')
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


def _apply(obj: Any, values: dict, prefix: str, explicit: set | None = None) -> None:
    """Set ``values`` on the (nested) dataclass ``obj``; every key set goes into ``explicit``."""
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
            _apply(current, v, f"{key}.", explicit)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))
            if explicit is not None:
                explicit.add(key)


def _parse_set(item: str) -> tuple[list[str], Any]:
    """``key=value`` with a TOML value (``3e-4``, ``true``, ``["AXT1", "AXT2"]``,
    ``{contrast = "AXFLAIR"}``); a bracketed list of bare words (``[AXT1,AXT2]``) is a list
    of strings, and anything else that is not TOML is a plain string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise MrbenchError(f"--set {item!r}: expected key=value, e.g. train.budget=500")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if raw.startswith("[") and raw.endswith("]") and not any(c in raw[1:-1] for c in "[]{}=\"'"):
            value = [w.strip() for w in raw[1:-1].split(",") if w.strip()]
        elif raw.startswith(("[", "{")):
            raise MrbenchError(
                f"--set {item!r}: the value is not a TOML inline value ({exc}); write e.g. "
                f'\'data.tasks=["AXT1", "AXT2"]\' or \'data.unseen=[{{contrast="AXFLAIR"}}]\''
            ) from None
        else:
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


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_experiment(path: Path, profile: str | None = None, what: str = "config file") -> dict:
    """The file's values with ``[profile.<name>]`` merged over them (docs/design.md §9).

    A profile is a partial copy of the file, e.g. ``[profile.cpu.train] budget = 1500`` or
    ``[profile.cpu.sweep] seeds = [0, 1, 2]``: it sizes one experiment for a machine while
    the claim's structure stays in one place. Several profiles, comma-separated (``cpu,ladder``),
    are merged in that order: the convergence ladder of a CPU-sized grid. The ``profile`` tables
    themselves are dropped."""
    values = read_toml(path, what)
    profiles = values.pop("profile", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise MrbenchError(f"{what} {path}: [profile.<name>] entries must be tables")
    if profile is None:
        return values
    for name in profile.split(","):
        if name not in profiles:
            valid = ", ".join(sorted(profiles)) or "none defined"
            raise MrbenchError(f"--profile {profile}: {path} has no [profile.{name}] (valid: {valid})")
        values = _deep_merge(values, profiles[name])
    return values


def load_config(
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    profile: str | None = None,
    **top: Any,
) -> Config:
    """Defaults ← TOML file ← ``--set`` overrides ← keyword arguments (method, scarcity, …).

    The keys set explicitly are remembered (``cfg.explicit``): defaults that depend on
    other keys (the method's backbone, ``data.scarce``, the built-in unseen context) only
    apply to keys left unset."""
    cfg = Config()
    cfg.explicit = explicit = set()
    if path is None and profile is not None:
        raise MrbenchError(f"--profile {profile}: needs --config FILE with a [profile.{profile}] table")
    if path is not None:
        p = Path(path)
        values = read_experiment(p, profile)
        values.pop("sweep", None)  # the sweep grid is read by `mrbench sweep`
        values.pop("claims", None)  # the paper claims, by `mrbench table --claims`
        try:
            _apply(cfg, values, "", explicit)
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
            _apply(cfg, nested, "", explicit)
        except MrbenchError as exc:
            raise MrbenchError(f"--set {item}: {exc}") from None
    _apply(cfg, {k: v for k, v in top.items() if v is not None}, "", explicit)
    return cfg.check()


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from a run's config.json (every key explicit, notes dropped)."""
    cfg = Config()
    cfg.explicit = explicit = set()
    _apply(cfg, {k: v for k, v in values.items() if k != "notes"}, "", explicit)
    return cfg.check()
