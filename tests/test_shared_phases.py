"""Shared phases (issue 31 item 2): a phase that repeats across cells is trained once and
loaded by the others, with the same metrics and weights as if each cell trained it."""

import json

import pytest
import torch
from conftest import tiny_run_settings, write_tiny_root

from mrbench.config import load_config
from mrbench.errors import RunStopped
from mrbench.runner import execute
from mrbench.store import RunStore


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared_data") / "d"
    write_tiny_root(
        root, contrasts=("AXT1", "AXT2", "AXFLAIR"), per_split={"train": 4, "val": 1, "test": 1}, slices=4, size=32
    )
    return root


def cfg(data_root, out, method, scarcity, *extra):
    return load_config(None, tiny_run_settings(data_root, out, *extra), method=method, scarcity=scarcity)


def _weights(store):
    return torch.load(store.checkpoint_path("best"), weights_only=True)["models"]


def _same(a, b):
    ma, mb = json.loads(a.metrics_path.read_text()), json.loads(b.metrics_path.read_text())
    assert ma == mb
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        for p in wa[k]:
            assert torch.equal(wa[k][p], wb[k][p]), (k, p)


@pytest.mark.parametrize("method", ["stl", "transfer"])
def test_a_loaded_phase_equals_a_trained_one(data_root, tmp_path, method):
    # level 0 trains and publishes the abundant task's phase; level 1 loads it
    execute(cfg(data_root, tmp_path / "shared", method, 0), quiet=True)
    loaded = execute(cfg(data_root, tmp_path / "shared", method, 1), quiet=True)
    log = loaded.read_json("manifest.json")["shared_phases"]
    assert log[0]["loaded"] and not log[1]["loaded"]  # the scarce task's phase differs by level: trained
    # the same cell trained in full on its own
    alone = execute(cfg(data_root, tmp_path / "alone", method, 1, "train.share_phases=false"), quiet=True)
    assert "shared_phases" not in alone.read_json("manifest.json")
    _same(loaded, alone)


def test_a_phase_killed_midway_resumes_and_is_published_once(data_root, tmp_path):
    """The cell training the shared phase is stopped inside it; its resume finishes the phase
    from its own checkpoint and publishes it; the next level loads it."""
    first = cfg(data_root, tmp_path, "stl", 0, "train.stop_after=8", "train.val_every=8")
    with pytest.raises(RunStopped):
        execute(first, quiet=True)
    shared = tmp_path / "default" / "shared"
    assert not list(shared.glob("*.pt"))  # nothing published from a half-trained phase
    done = execute(cfg(data_root, tmp_path, "stl", 0, "train.val_every=8"), resume=True, quiet=True)
    assert len(list(shared.glob("*.pt"))) == 2  # both phases of level 0 published
    nxt = execute(cfg(data_root, tmp_path, "stl", 1, "train.val_every=8"), quiet=True)
    assert nxt.read_json("manifest.json")["shared_phases"][0]["loaded"]
    alone = execute(
        cfg(data_root, tmp_path / "alone", "stl", 0, "train.val_every=8", "train.share_phases=false"), quiet=True
    )
    _same(done, alone)  # stopped, resumed and shared: still the uninterrupted run
    assert RunStore(done.path).is_done()
