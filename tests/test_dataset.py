import numpy as np
import pytest
import torch
from conftest import blob_volume

from mrbench.data.contexts import Context, context_grid
from mrbench.data.dataset import SliceDataset, TaskData, VolumeStore
from mrbench.data.fastmri_format import read_meta, read_volume, write_volume
from mrbench.data.index import scan
from mrbench.errors import MrbenchError
from mrbench.fourier import ifft2c


def _tasks(index, split, contexts):
    return [TaskData(c.name, c, tuple(index.select(split, c.contrast))) for c in contexts]


def test_context_names_and_grid():
    ctx = Context("AXT2", "gaussian2d", 6)
    assert ctx.name == "AXT2/gaussian2d/6x"
    grid = context_grid(["AXT1", "AXT2"], ["random", "gaussian2d"], [4, 8])
    assert len(grid) == 8 and grid[0] == Context("AXT1", "random", 4.0)
    with pytest.raises(MrbenchError, match="unknown mask kind"):
        Context("AXT1", "spiral", 4)
    with pytest.raises(MrbenchError, match="acceleration must be > 1"):
        Context("AXT1", "random", 1)


def test_sample_fields_and_zero_filled(tiny_root):
    index = scan(tiny_root)
    ctx = [Context("AXT1", "equispaced", 4), Context("AXT2", "random", 4)]
    ds = SliceDataset(_tasks(index, "train", ctx), train=True, seed=0)
    assert len(ds) == 2 * 4 * 3
    s = ds[len(ds) - 1]
    assert s.task == 1 and s.kspace.shape == (1, 32, 32) and s.kspace.dtype == torch.complex64
    assert s.mask.shape == (1, 32, 32) and s.target.shape == (32, 32)
    # masked k-space is zero off the mask; zero-filled = |F⁻¹ masked k-space|
    assert (s.kspace[:, s.mask[0] == 0] == 0).all()
    torch.testing.assert_close(s.zero_filled, ifft2c(s.kspace)[0].abs())
    kspace, target = read_volume(read_meta(tiny_root / "train" / s.fname))
    torch.testing.assert_close(s.target, torch.from_numpy(target[s.slice_idx]))
    torch.testing.assert_close(s.kspace, torch.from_numpy(kspace[s.slice_idx]) * s.mask)
    assert s.max_value == pytest.approx(float(target.max()))
    # zero-filled is worse than nothing-missing: some energy lost
    assert torch.linalg.norm(s.zero_filled - s.target) > 0.01 * torch.linalg.norm(s.target)
    batch = torch.utils.data.default_collate([ds[0], ds[5]])
    assert batch.kspace.shape == (2, 1, 32, 32) and batch.task.tolist() == [0, 0]


def test_eval_masks_fixed_per_volume_train_masks_random(tiny_root):
    index = scan(tiny_root)
    ctx = [Context("AXT1", "random", 4)]
    ev1 = SliceDataset(_tasks(index, "test", ctx), train=False)
    ev2 = SliceDataset(_tasks(index, "test", ctx), train=False, seed=99)
    # same mask for every slice of a volume, for every instance/seed; differs between volumes
    m = [ev1[i].mask for i in range(len(ev1))]
    assert all(torch.equal(m[0], x) for x in m[1:3])
    assert not torch.equal(m[0], m[3])
    assert all(torch.equal(ev1[i].mask, ev2[i].mask) for i in range(len(ev1)))
    tr = SliceDataset(_tasks(index, "train", ctx), train=True, seed=0)
    state = tr.rng_state()
    first = [tr[0].mask for _ in range(3)]
    assert not torch.equal(first[0], first[1])
    tr.set_rng_state(state)  # resume → the same draws
    assert all(torch.equal(a, tr[0].mask) for a in first)


def test_padding_columns_removed_from_mask(tmp_path):
    k, t = blob_volume(np.random.default_rng(0), 2, 32, 40)
    k[..., :3] = 0
    k[..., 37:] = 0
    p = tmp_path / "train" / "pad.h5"
    write_volume(p, k, t, acquisition="CORPD_FBK", patient_id="a")
    import h5py

    ns = "http://www.ismrm.org/ISMRMRD"
    header = (
        f'<ismrmrdHeader xmlns="{ns}"><encoding><encodedSpace><matrixSize><x>32</x><y>40</y><z>1</z>'
        "</matrixSize></encodedSpace><reconSpace><matrixSize><x>32</x><y>40</y><z>1</z></matrixSize>"
        "</reconSpace><encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>33</maximum>"
        "<center>17</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
    )
    with h5py.File(p, "r+") as hf:
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = header.encode()
    meta = read_meta(p)
    assert (meta.padding_left, meta.padding_right) == (3, 37)
    ds = SliceDataset([TaskData("pd", Context("CORPD_FBK", "random", 4), (meta,))], train=False)
    mask = ds[0].mask[0]
    assert mask[:, :3].sum() == 0 and mask[:, 37:].sum() == 0 and mask[:, 3:37].sum() > 0


def test_multicoil_zero_filled_is_rss(tmp_path):
    k, t = blob_volume(np.random.default_rng(2), 2, 24, 24, coils=4)
    p = tmp_path / "mc.h5"
    write_volume(p, k, t, acquisition="AXT2", patient_id="a")
    ds = SliceDataset([TaskData("t", Context("AXT2", "equispaced", 4), (read_meta(p),))], train=False)
    s = ds[1]
    assert s.kspace.shape == (4, 24, 24)
    torch.testing.assert_close(s.zero_filled, ifft2c(s.kspace).abs().pow(2).sum(0).sqrt())


def test_store_caches_and_falls_back_to_file_reads(tiny_root):
    index = scan(tiny_root)
    tasks = _tasks(index, "val", [Context("AXT1")])
    cached = SliceDataset(tasks, train=False)
    uncached = SliceDataset(tasks, train=False, store=VolumeStore(max_bytes=0))
    for i in range(len(cached)):
        torch.testing.assert_close(cached[i].kspace, uncached[i].kspace)
    assert len(cached.store._cache) == 1 and len(uncached.store._cache) == 0


def test_store_memory_is_bounded_least_recently_used_first(tiny_root):
    """data.cache_gb: room for two volumes → never more than two decoded, the least recently
    used evicted, and every sample equal to an unbounded store's."""
    index = scan(tiny_root)
    tasks = _tasks(index, "train", [Context("AXT1")])
    one = VolumeStore.volume_bytes(tasks[0].volumes[0])
    bounded = SliceDataset(tasks, train=False, store=VolumeStore(max_bytes=2 * one + 1))
    free = SliceDataset(tasks, train=False)
    assert len(tasks[0].volumes) >= 3
    for i in list(range(len(free))) + [0]:
        torch.testing.assert_close(bounded[i].kspace, free[i].kspace)
        torch.testing.assert_close(bounded[i].target, free[i].target)
        assert bounded.store._bytes <= 2 * one + 1 and len(bounded.store._cache) <= 2
    newest = str(tasks[0].volumes[0].path)  # item 0 was read last
    assert list(bounded.store._cache)[-1] == newest and len(free.store._cache) == len(tasks[0].volumes)


def test_cache_gb_is_checked_and_not_part_of_a_runs_identity():
    from dataclasses import asdict

    from mrbench.config import load_config
    from mrbench.runner import _identity

    with pytest.raises(MrbenchError, match="data.cache_gb"):
        load_config(None, ["data.cache_gb=-1"])
    small, large, other = (
        asdict(load_config(None, [s])) for s in ("data.cache_gb=0.5", "data.cache_gb=16", "data.val_volumes=3")
    )
    assert small["data"]["cache_gb"] == 0.5
    assert _identity(small) == _identity(large)  # resuming with another memory budget is the same run
    assert _identity(small) != _identity(other)


def test_volume_without_target_is_rejected(tmp_path):
    import h5py

    k, _ = blob_volume(np.random.default_rng(0), 2, 16, 16)
    p = tmp_path / "notarget.h5"
    with h5py.File(p, "w") as hf:
        hf["kspace"] = k
        hf.attrs["acquisition"] = "AXT1"
    with pytest.raises(MrbenchError, match="has no target"):
        SliceDataset([TaskData("t", Context("AXT1"), (read_meta(p),))], train=False)
