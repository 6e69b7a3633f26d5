"""Data-parallel training of one run over several processes (``torchrun``), issue 14.

``torchrun --standalone --nproc_per_node=N -m mrbench run METHOD ...`` starts N copies of the
same command; each reads ``RANK`` / ``WORLD_SIZE`` from the environment (torch.distributed's
``env://`` rendezvous) and joins one process group — gloo on CPU, NCCL on CUDA (one GPU per
process, ``LOCAL_RANK``). Every rank builds the same method from the same seed, so the
weights start equal and stay equal:

* every rank draws the same global batch (the sampler and the training masks advance
  identically on all ranks: each draws every item's mask and keeps its own share, so the
  masks are the ones a single process would draw) and trains on its share
  ``indices[rank::N]`` — ``train.batch`` and ``train.budget`` must be multiples of N;
* after each backward the gradients are averaged over the ranks (all-reduce), which equals
  the single-process gradient of the batch mean (per-sample losses; no batch norm anywhere);
* the budget counts the slices of all ranks; the logged loss and the divergence checks use
  the mean over ranks, and a stop signal seen by one rank stops all at the same step;
* rank 0 alone validates (its score is broadcast, so all keep the same best state), writes
  checkpoints, evaluates and writes the run directory; the other ranks only train. A resume
  reads rank 0's ``last.pt`` on every rank.

Methods whose steps draw their own episodes and call ``autograd.grad`` per task (maml,
metadrop, kmmaml: ``Method.data_parallel = False``) are refused with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import MrbenchError


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a global batch."""
        return items[self.rank :: self.world]

    def average_gradients(self, params) -> None:
        """All-reduce the mean of every gradient (one flat buffer per dtype and device)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=op)
        return float(t.item())

    def mean(self, value: float) -> float:
        return self._reduce(value, dist.ReduceOp.SUM) / self.world

    def any(self, flag: bool) -> bool:
        return self._reduce(1.0 if flag else 0.0, dist.ReduceOp.MAX) > 0

    def broadcast(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_env(cuda: bool = False) -> Group | None:
    """The process group of a ``torchrun`` launch (joined on first call), or None in a plain
    single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close(group: Group | None) -> None:
    """Leave the group together: every rank reaches a barrier first. A rank that tore its gloo
    group down while a peer was still finishing (rank 1 after a stop, rank 0 still writing)
    aborted with "terminate called without an active exception" (seen once in a clean-clone run)."""
    if group is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------- devices


def select_device(name: str, precision: str = "fp32") -> torch.device:
    """``train.device`` (``auto``: CUDA when there is one) and ``train.precision`` checked against this machine."""
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


def rank_device(name: str, precision: str, group: Group | None) -> torch.device:
    """This process's device: :func:`select_device`, and under torchrun on CUDA the rank's own GPU."""
    device = select_device(name, precision)
    if group is not None and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    return device
