"""Multi-task VarNet (``mtl-varnet``; Liu et al., NeurIPS Deep Inverse Workshop 2021).

A :class:`~mrbench.models.varnet.VarNet` whose cascade ``i`` has a *block
structure* letter (docs/design.md §4) that says how its regulariser is shared
between the ``T`` tasks (contrasts):

* ``I`` — one :class:`~mrbench.models.unet.NormUNet` shared by all tasks;
* ``V`` — split: each task its own NormUNet. The ``T`` networks are distinct
  modules with their own storage (the original code put one module object in
  the list ``T`` times, so the "split" silently shared weights;
  tests/test_mtl.py checks ``data_ptr``\\ s and gradient isolation);
* ``Y`` — shared encoder and bottleneck, one decoder (up path + final 1×1
  conv) per task ("mhushare" in the original code);
* ``W`` — one shared U-Net whose features are multiplied by per-task
  attention masks, MTAN-style (Liu, Johns & Davison, CVPR 2019): after every
  encoder level, the bottleneck and every decoder level, task ``t``'s mask
  ``a_t = sigmoid(conv1×1_t(f))`` (one channel-wise 1×1 conv per level and
  task) gates the shared features, ``f ← a_t ⊙ f``. Only the attention convs
  are task-specific.

Every regulariser keeps the *correction* semantics of
``NormUNet(correction=True)``: per-sample normalisation around the U-Net, no
mean added back and a last layer initialised 100× small, so an untrained
network is the zero-filled reconstruction.

A batch may mix tasks: inside a block each task's sub-network runs on that
task's samples only and the results are scattered back into batch order;
shared parts run once on the whole batch. With ``share_etas=False`` every
cascade has one data-consistency weight η per task, selected per sample.

Forward contract: that of every backbone (:mod:`mrbench.models`) plus the task
index of every sample: ``forward(kspace, mask, num_low_frequencies, task)``
with ``task`` an int64 (B,) tensor. ``task_aware = True`` tells
:func:`mrbench.models.outputs.reconstruct` to pass it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mrbench.errors import MrbenchError
from mrbench.models.unet import NormUNet, UNet, crop_padding, decode, encode, pad_to_multiple
from mrbench.models.varnet import SensitivityModel, VarNet, VarNetCascade
from mrbench.physics import MRIOperator

__all__ = ["MTLVarNet", "MTLCascade", "SplitBlock", "YBlock", "WBlock", "route", "default_blocks", "BLOCKS"]


@dataclass
class MTLVarNetOptions:
    """``[model]`` keys of ``mtl-varnet``."""

    blocks: str = (
        ""  # one letter per cascade: I shared, V split, Y shared encoder, W attention; "" = "II" + "V"·(cascades − 2)
    )
    share_etas: bool = True  # one η per cascade (True) or one per task per cascade

    def check(self, key):
        bad = set(self.blocks) - set("IVYW")
        if bad:
            raise MrbenchError(f"{key('blocks')}: letters must be I, V, Y or W, got {''.join(sorted(bad))!r}")


def default_blocks(cascades: int) -> str:
    """The paper's default structure: two shared cascades, the rest split (``IIVV…``)."""
    return "I" * min(2, cascades) + "V" * max(0, cascades - 2)


def route(
    task: torch.Tensor, num_tasks: int, fn: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``out[b] = fn(task[b], x[b:b+1])`` computed group-wise: ``fn(t, x[task == t])`` once per task present.

    Results are concatenated and put back in batch order (out of place, so
    autograd flows to every group). A batch of one task runs ``fn`` on ``x``
    itself, without indexing.
    """
    present = torch.unique(task)  # sorted
    if present.numel() == 1:
        return fn(int(present), x)
    outs, order = [], []
    for t in present.tolist():
        idx = (task == t).nonzero(as_tuple=True)[0]
        outs.append(fn(t, x.index_select(0, idx)))
        order.append(idx)
    out = torch.cat(outs, dim=0)
    inv = torch.empty_like(task)
    inv[torch.cat(order)] = torch.arange(task.numel(), device=task.device)
    return out.index_select(0, inv)


def _check_task(task: torch.Tensor, num_tasks: int, batch: int) -> torch.Tensor:
    task = torch.as_tensor(task).reshape(-1).to(torch.long)
    if task.numel() != batch:
        raise ValueError(f"mtl-varnet: got {task.numel()} task indices for a batch of {batch}")
    if task.numel() and (int(task.min()) < 0 or int(task.max()) >= num_tasks):
        raise ValueError(f"mtl-varnet: task indices must be in [0, {num_tasks}), got {task.tolist()}")
    return task


def _small_last_layer(conv: nn.Conv2d) -> None:
    """NormUNet(correction=True)'s initialisation of the final projection."""
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.zero_()


class _TaskNormUNet(NormUNet):
    """NormUNet (correction form) around a task-routed U-Net ``core``.

    The normalisation is :class:`NormUNet`'s own (per sample, so exact under
    routing); ``core(x, task)`` replaces ``UNet(x)``. ``forward(z, task)``.
    """

    def __init__(self, core: nn.Module):
        nn.Module.__init__(self)
        self.in_complex = 1
        self.correction = True
        self.unet = _Bound(core)

    def forward(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(z, task=task)


class _Bound(nn.Module):
    """Holds the routed ``core`` where NormUNet keeps its U-Net (the state-dict keys stay
    ``unet.core.*``) and passes the task on."""

    def __init__(self, core: nn.Module):
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.core(x, task)


class SharedBlock(nn.Module):
    """``I``: one NormUNet(correction=True) for every task."""

    letter = "I"

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        self.net = NormUNet(chans, pools, correction=True)

    def forward(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def last_shared_layer(self) -> list[nn.Parameter]:
        return list(self.net.unet.final.parameters())


class SplitBlock(nn.Module):
    """``V``: one NormUNet(correction=True) per task — ``num_tasks`` distinct modules."""

    letter = "V"

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        # a fresh module per task (never ``[net] * num_tasks``)
        self.nets = nn.ModuleList([NormUNet(chans, pools, correction=True) for _ in range(num_tasks)])

    def forward(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return route(task, len(self.nets), lambda t, x: self.nets[t](x), z)

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.nets[t].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def last_shared_layer(self) -> list[nn.Parameter]:
        return []


class _Decoder(nn.Module):
    """A U-Net's up path and final 1×1 conv (taken from a :class:`UNet`)."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.up, self.up_conv, self.final = unet.up, unet.up_conv, unet.final

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return decode(self.up, self.up_conv, self.final, x, skips)


class _YCore(nn.Module):
    """Shared encoder + bottleneck (whole batch), per-task decoders (routed)."""

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        self.pools = pools
        shared = UNet(2, 2, chans=chans, pools=pools)
        self.down, self.bottleneck = shared.down, shared.bottleneck
        self.decoders = nn.ModuleList()
        for _ in range(num_tasks):
            dec = _Decoder(UNet(2, 2, chans=chans, pools=pools))
            _small_last_layer(dec.final)
            self.decoders.append(dec)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        x, pad = pad_to_multiple(x, self.pools)
        x, skips = encode(self.down, self.bottleneck, x)
        n = len(skips)
        # route the bottleneck features and the skips together
        packed = torch.cat([x.flatten(1)] + [s.flatten(1) for s in skips], dim=1)
        shapes = [x.shape[1:]] + [s.shape[1:] for s in skips]
        sizes = [int(torch.Size(s).numel()) for s in shapes]

        def decode_task(t: int, p: torch.Tensor) -> torch.Tensor:
            parts = [q.reshape(p.shape[0], *s) for q, s in zip(p.split(sizes, dim=1), shapes)]
            return self.decoders[t](parts[0], parts[1 : n + 1])

        return crop_padding(route(task, len(self.decoders), decode_task, packed), pad)


class YBlock(nn.Module):
    """``Y``: shared encoder and bottleneck, one decoder (up path + final conv) per task."""

    letter = "Y"

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        self.net = _TaskNormUNet(_YCore(num_tasks, chans, pools))

    def forward(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.net(z, task)

    @property
    def core(self) -> _YCore:
        return self.net.unet.core

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.core.decoders[t].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.core.down.parameters()) + list(self.core.bottleneck.parameters())

    def last_shared_layer(self) -> list[nn.Parameter]:
        return [self.core.bottleneck[3].weight]  # the bottleneck's second conv


class _Attention(nn.Module):
    """One task's attention modules: a 1×1 conv (C → C) + sigmoid per gated level."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.gates = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths)

    def forward(self, level: int, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gates[level](f))


class _WCore(nn.Module):
    """A shared U-Net whose features are gated by per-task attention masks (MTAN-style).

    Gated levels, in order: each encoder level's conv-block output (before it
    is stored as a skip and pooled), the bottleneck, each decoder level's
    conv-block output (before the final 1×1 conv).
    """

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        self.unet = UNet(2, 2, chans=chans, pools=pools)
        _small_last_layer(self.unet.final)
        widths = [chans * 2**level for level in range(pools + 1)]
        gated = widths[:-1] + [widths[-1]] + list(reversed(widths[:-1]))
        self.attention = nn.ModuleList(_Attention(gated) for _ in range(num_tasks))

    def _gate(self, level: int, f: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        mask = route(task, len(self.attention), lambda t, x: self.attention[t](level, x), f)
        return f * mask

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.unet(x, gate=lambda level, f: self._gate(level, f, task))


class WBlock(nn.Module):
    """``W``: one shared U-Net, per-task attention masks on its features (MTAN)."""

    letter = "W"

    def __init__(self, num_tasks: int, chans: int, pools: int):
        super().__init__()
        self.net = _TaskNormUNet(_WCore(num_tasks, chans, pools))

    def forward(self, z: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.net(z, task)

    @property
    def core(self) -> _WCore:
        return self.net.unet.core

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.core.attention[t].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.core.unet.parameters())

    def last_shared_layer(self) -> list[nn.Parameter]:
        return list(self.core.unet.final.parameters())


#: Block letter → regulariser class (constructor ``(num_tasks, chans, pools)``, forward ``(z, task)``).
BLOCKS: dict[str, type[nn.Module]] = {"I": SharedBlock, "V": SplitBlock, "Y": YBlock, "W": WBlock}


class MTLCascade(VarNetCascade):
    """A VarNet cascade with a task-routed regulariser and a shared or per-task η.

    ``share_etas=True``: one 0-d ``eta`` (VarNet's data consistency, hand-written
    backward). ``False``: ``eta`` is (num_tasks,) and sample ``b`` uses
    ``eta[task[b]]`` (plain autograd).
    """

    def __init__(self, regulariser: nn.Module, num_tasks: int, share_etas: bool = True):
        super().__init__(regulariser)
        self.share_etas = share_etas
        if not share_etas:
            self.eta = nn.Parameter(torch.ones(num_tasks))

    def forward(  # type: ignore[override]
        self, k: torch.Tensor, k0: torch.Tensor, op: MRIOperator, task: torch.Tensor
    ) -> torch.Tensor:
        reg = op.to_kspace(self.regulariser(op.to_image(k), task))
        eta = self.eta if self.share_etas else self.eta.index_select(0, task)
        return op.gradient_step(k, k0, reg, eta)


class MTLVarNet(VarNet):
    """The ``mtl-varnet`` backbone: a VarNet with one block letter per cascade.

    ``blocks``: e.g. ``"IIVVVVVV"`` (``None``/``""``: :func:`default_blocks` of
    ``cascades``); the number of cascades is ``len(blocks)``. One shared
    :class:`SensitivityModel` for multi-coil input. ``share_etas``: one η per
    cascade, or one per task per cascade.
    """

    options = {"model": MTLVarNetOptions}

    task_aware = True

    def __init__(
        self,
        num_tasks: int | None = None,
        blocks: str | None = None,
        chans: int = 8,
        pools: int = 3,
        sens_chans: int = 4,
        sens_pools: int = 2,
        share_etas: bool = True,
        cascades: int = 4,
    ):
        if num_tasks is None:
            raise MrbenchError("backbone 'mtl-varnet' needs the number of tasks; it is built by method 'mtl'")
        if num_tasks < 1:
            raise MrbenchError(f"mtl-varnet: num_tasks must be ≥ 1, got {num_tasks}")
        blocks = blocks or default_blocks(cascades)
        bad = sorted(set(blocks) - set(BLOCKS))
        if bad:
            raise MrbenchError(f"mtl-varnet: block letters must be one of {', '.join(BLOCKS)}, got {''.join(bad)!r}")
        nn.Module.__init__(self)
        self.num_tasks = num_tasks
        self.blocks = blocks
        self.share_etas = share_etas
        self.config = dict(
            num_tasks=num_tasks,
            blocks=blocks,
            chans=chans,
            pools=pools,
            sens_chans=sens_chans,
            sens_pools=sens_pools,
            share_etas=share_etas,
        )
        self.sens_net = SensitivityModel(sens_chans, sens_pools)
        self.cascades = nn.ModuleList(
            MTLCascade(BLOCKS[letter](num_tasks, chans, pools), num_tasks, share_etas) for letter in blocks
        )

    # -- introspection
    def etas(self) -> list[float]:
        """η per cascade (the mean over tasks when η is per task), for TensorBoard."""
        return [float(c.eta.detach().mean()) for c in self.cascades]

    def eta_table(self) -> list[list[float]]:
        """η[cascade][task] (the shared η repeated over tasks when ``share_etas``)."""
        return [c.eta.detach().expand(self.num_tasks).tolist() for c in self.cascades]

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters only task ``t`` uses (split U-Nets, decoders, attention modules; not η)."""
        return [p for c in self.cascades for p in c.regulariser.task_parameters(t)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Regulariser parameters every task uses (the sensitivity network and η excluded)."""
        return [p for c in self.cascades for p in c.regulariser.shared_parameters()]

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: the last layer (in forward order) shared by every task; [] if none."""
        for c in reversed(self.cascades):
            params = c.regulariser.last_shared_layer()
            if params:
                return params
        return []

    # -- forward
    def forward(  # type: ignore[override]
        self, kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor:
        task = _check_task(task, self.num_tasks, kspace.shape[0]).to(kspace.device)
        return self.unroll(kspace, mask, num_low_frequencies, task)
