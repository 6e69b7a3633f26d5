import json
import subprocess
import sys

import pytest
from conftest import write_tiny_root

from mrbench.data.index import scan
from mrbench.data.scarcity import max_level, scarcity_subset, slice_list, slice_list_hash
from mrbench.errors import MrbenchError


def test_scan_splits_contrasts_and_summary(tiny_root):
    index = scan(tiny_root, check=True)
    assert index.splits == ["train", "val", "test"]
    assert index.contrasts() == ["AXT1", "AXT2"]
    assert len(index.select("train", "AXT2")) == 4
    rows = {(r["split"], r["contrast"]): r for r in index.summary()}
    assert rows[("test", "AXT1")]["volumes"] == 2 and rows[("test", "AXT1")]["slices"] == 6
    assert rows[("train", "AXT1")]["kspace"] == "32x32" and rows[("train", "AXT1")]["coils"] == "1"


def test_single_split_directory(tiny_root):
    index = scan(tiny_root / "val")
    assert index.splits == ["val"] and index.contrasts() == ["AXT1", "AXT2"]


def test_unknown_contrast_names_available(tiny_root):
    index = scan(tiny_root)
    with pytest.raises(MrbenchError, match=r"'AXFLAIR' is not in .*train \(contrasts there: AXT1, AXT2\)"):
        index.select("train", "AXFLAIR")


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(MrbenchError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(MrbenchError, match="no .h5 files"):
        scan(tmp_path / "empty")


@pytest.fixture
def eight(tmp_path):
    root = tmp_path / "eight"
    write_tiny_root(root, contrasts=("AXT2",), per_split={"train": 8}, slices=2, size=16)
    return scan(root).select("train", "AXT2")


def test_scarcity_levels_nested_counts_and_deterministic(eight):
    levels = [scarcity_subset(eight, n, seed=0, task="AXT2") for n in range(4)]
    assert [len(v) for v in levels] == [8, 4, 2, 1]
    for a, b in zip(levels, levels[1:]):
        assert {v.name for v in b} <= {v.name for v in a}
    assert scarcity_subset(eight, 2, seed=0, task="AXT2") == levels[2]
    other = [scarcity_subset(eight, 2, seed=s, task="AXT2") for s in range(1, 8)]
    assert any(o != levels[2] for o in other)  # the seed matters
    assert max_level(8) == 3


def test_scarcity_level_leaving_no_volume(eight):
    with pytest.raises(
        MrbenchError, match=r"scarcity level 4 leaves no training volume of AXT2 \(8 volumes; the highest level is 3\)"
    ):
        scarcity_subset(eight, 4, seed=0, task="AXT2")
    with pytest.raises(MrbenchError, match="≥ 0"):
        scarcity_subset(eight, -1, seed=0, task="AXT2")


def test_slice_list_and_hash_identical_in_another_process(eight):
    vols = scarcity_subset(eight, 1, seed=5, task="AXT2")
    slices = slice_list(vols)
    assert len(slices) == 4 * 2 and slices == sorted(slices)
    h = slice_list_hash(slices)
    assert h == slice_list_hash(list(reversed(slices)))
    root = eight[0].path.parent.parent
    code = (
        "import json,sys; from mrbench.data.index import scan; "
        "from mrbench.data.scarcity import *; "
        f"v=scarcity_subset(scan({str(root)!r}).select('train','AXT2'),1,seed=5,task='AXT2'); "
        "s=slice_list(v); print(json.dumps([slice_list_hash(s), s]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    other_hash, other_slices = json.loads(out)
    assert other_hash == h and [tuple(s) for s in other_slices] == slices
