"""Slice dataset: masked k-space, mask, target and zero-filled image per slice.

One dataset serves every method. It is built from a list of :class:`TaskData`
(a task name, its context and its volumes — already cut to the scarcity
subset) and yields :class:`Sample` named tuples that the default collate
function batches.

Masks follow docs/design.md §3: for training (``train=True``) a new mask is drawn
per sample from the dataset's own generator (its state is saved in checkpoints,
so a resumed run draws the same masks); for validation and test the mask is
fixed per (volume, context), seeded from the file name, so every method is
scored on identical measurements.

Small data are decoded once into memory (:class:`VolumeStore`); the loader is
never the bottleneck of a training step.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import h5py
import numpy as np
import torch

from ..errors import MrbenchError
from ..fourier import center_crop, ifft2c_magnitude
from .index import shape_key
from .contexts import Context
from .fastmri_format import VolumeMeta, read_mask, read_volume
from .masks import DrawnMask, volume_seed


class Sample(NamedTuple):
    kspace: torch.Tensor  # complex64 (C, H, W), masked
    mask: torch.Tensor  # float32 (1, H, W)
    target: torch.Tensor  # float32 (h, w)
    zero_filled: torch.Tensor  # float32 (h, w): |F⁻¹ masked k-space| (RSS), centre-cropped
    task: int  # index into the dataset's tasks
    fname: str
    slice_idx: int
    max_value: float  # the volume target's maximum (PSNR/SSIM data range)
    num_low_frequencies: int
    acquisition: torch.Tensor | None = None  # float32 (6,): the header's TR, TE, TI, flip, B0, family; NaN where absent


def take(batch: Sample, idx: torch.Tensor) -> Sample:
    """The samples ``idx`` of a collated batch, in that order (tensors indexed, per-sample
    lists picked, an absent field kept absent)."""
    keep = idx.tolist()
    return Sample(*(x[idx.to(x.device)] if isinstance(x, torch.Tensor) else x if x is None else [x[i] for i in keep]
                    for x in batch))


@dataclass(frozen=True)
class TaskData:
    """What a method treats as one unit: a name, its context, its volumes."""

    name: str
    context: Context
    volumes: tuple[VolumeMeta, ...]

    @property
    def num_slices(self) -> int:
        return sum(v.num_slices for v in self.volumes)


class VolumeStore:
    """Decoded volumes, loaded on first use and kept in memory up to ``max_bytes``
    (``data.cache_gb``), least recently used evicted first.

    A volume larger than the whole budget is never cached: its slices are read from the
    file at each access (HDF5 reads one slice, so memory stays bounded by one slice);
    ``max_bytes = 0`` reads every slice from its file. What is read never depends on the
    budget, only how often the file is opened (tests/test_dataset.py checks equal samples).
    """

    def __init__(self, max_bytes: int = 8 * 2**30):
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0

    @classmethod
    def from_config(cls, data_cfg) -> "VolumeStore":
        return cls(int(data_cfg.cache_gb * 2**30))

    @staticmethod
    def volume_bytes(meta: VolumeMeta) -> int:
        """Decoded size: complex64 k-space plus the float32 target."""
        h, w = meta.kspace_shape
        target = meta.num_slices * (meta.target_shape[0] * meta.target_shape[1] * 4 if meta.target_shape else 0)
        return meta.num_slices * meta.num_coils * h * w * 8 + target

    def slice(self, meta: VolumeMeta, s: int) -> tuple[np.ndarray, np.ndarray]:
        key = str(meta.path)
        hit = self._cache.get(key)
        if hit is None:
            size = self.volume_bytes(meta)
            if size > self.max_bytes:
                return self._read_slice(meta, s)
            while self._bytes + size > self.max_bytes:
                old, _ = self._cache.popitem(last=False)
                self._bytes -= self._sizes.pop(old)
            hit = read_volume(meta)
            self._cache[key] = hit
            self._sizes[key] = size
            self._bytes += size
        else:
            self._cache.move_to_end(key)
        return hit[0][s], (hit[1][s] if hit[1] is not None else None)

    @staticmethod
    def _read_slice(meta: VolumeMeta, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        with h5py.File(meta.path, "r") as hf:
            k = np.asarray(hf["kspace"][s], dtype=np.complex64)
            t = np.asarray(hf[meta.target_key][s], dtype=np.float32) if meta.target_key else None
        if k.ndim == 2:
            k = k[None]
        if not np.isfinite(k).all():
            raise MrbenchError(f"{meta.path}: 'kspace' has NaN/Inf values (slice {s})")
        return k, t


def _no_target(meta: VolumeMeta) -> MrbenchError:
    return MrbenchError(
        f"{meta.path}: has no target (reconstruction_esc/reconstruction_rss); "
        "mrbench trains and scores only on fully sampled volumes"
    )


class SliceDataset(torch.utils.data.Dataset):
    """All slices of all tasks; item ``i`` is one slice of one task's volume."""

    def __init__(
        self,
        tasks: Sequence[TaskData],
        *,
        train: bool,
        seed: int = 0,
        store: VolumeStore | None = None,
        targets_optional: bool = False,
    ):
        """``targets_optional``: volumes without a target may be used (the self-supervised
        losses never read one); such a slice's target is zeros and its scale the zero-filled
        image's maximum. A file that is already undersampled keeps its own mask (``stored_mask``),
        never a drawn one."""
        self.tasks = list(tasks)
        self.train = train
        self.store = store if store is not None else VolumeStore()
        self.rng = np.random.default_rng(seed)
        self._masks = [t.context.mask_func() for t in self.tasks]
        self._fixed: dict[tuple[str, int], DrawnMask] = {}
        self.items: list[tuple[int, VolumeMeta, int]] = [
            (t_idx, v, s)
            for t_idx, task in enumerate(self.tasks)
            for v in task.volumes
            for s in range(v.num_slices)
        ]

        kinds: dict[tuple, int] = {}
        #: each item's size kind (batches stack one kind; one kind: every item 0)
        self.item_shapes = np.array([kinds.setdefault(shape_key(v), len(kinds)) for _, v, _ in self.items], dtype=np.int64)
        self._by_task: list[list[int]] = [[] for _ in self.tasks]
        for i, (t, _, _) in enumerate(self.items):
            self._by_task[t].append(i)
        for task in self.tasks:
            for v in task.volumes:
                if v.target_key is None and not targets_optional:
                    raise _no_target(v)
        self._stored_masks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def task_items(self, task: int) -> list[int]:
        """Indices of the items of one task (for per-task samplers; computed once —
        meta-learning episodes ask for them at every step)."""
        return self._by_task[task]

    # RNG state for resumable training (the training masks depend on it)
    def rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def mask_for(self, i: int, rng: np.random.Generator | None = None) -> DrawnMask:
        t, meta, _ = self.items[i]
        if meta.stored_mask:  # already undersampled: its own lines, nothing drawn
            key = str(meta.path)
            if key not in self._stored_masks:
                self._stored_masks[key] = read_mask(meta)
            return DrawnMask(mask=self._stored_masks[key], num_low_frequencies=meta.stored_low)
        shape = meta.kspace_shape
        padding = (meta.padding_left, meta.padding_right)
        if self.train:
            return self._masks[t](shape, rng if rng is not None else self.rng, padding)
        key = (str(meta.path), t)
        drawn = self._fixed.get(key)
        if drawn is None:
            ctx = self.tasks[t].context
            seed = volume_seed(meta.name, ctx.mask, ctx.acceleration, ctx.center_fraction)
            drawn = self._fixed[key] = self._masks[t](shape, seed, padding)
        return drawn

    def __getitem__(self, i: int) -> Sample:
        return self.sample(i)

    def sample(self, i: int, rng: np.random.Generator | None = None, drawn: DrawnMask | None = None) -> Sample:
        """Item ``i`` under a training mask drawn from ``rng`` (default: the dataset's), or
        under ``drawn``, a mask :meth:`mask_for` drew already (data-parallel ranks draw every
        item's mask and load only their share)."""
        t, meta, s = self.items[i]
        kspace_np, target_np = self.store.slice(meta, s)
        drawn = drawn if drawn is not None else self.mask_for(i, rng)
        mask = torch.from_numpy(drawn.mask)[None]
        kspace = torch.from_numpy(kspace_np) * mask
        image = ifft2c_magnitude(kspace, coil_dim=0)
        if target_np is None:  # a target-free training volume (self-supervised losses only)
            target_np = np.zeros(meta.recon_size, dtype=np.float32)
            scale = meta.max_value if meta.max_value is not None else float(image.max())
        else:
            scale = meta.max_value if meta.max_value is not None else float(target_np.max())
        target = torch.from_numpy(target_np)
        crop = (min(target.shape[-2], image.shape[-2]), min(target.shape[-1], image.shape[-1]))
        return Sample(
            kspace=kspace,
            mask=mask,
            target=center_crop(target, crop),
            zero_filled=center_crop(image, crop),
            task=t,
            fname=meta.name,
            slice_idx=s,
            max_value=float(scale),
            num_low_frequencies=drawn.num_low_frequencies,
            acquisition=torch.tensor([math.nan if v is None else v for v in meta.acquisition], dtype=torch.float32),
        )
