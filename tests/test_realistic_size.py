"""fastMRI-layout files of realistic size (issue 14): 16-coil 640×368 k-space with zero-padded
columns outside the encoding limits, 320×320 RSS targets — a run trains, validates and
evaluates on them with bounded memory (``data.cache_gb = 0``: slices read from the files),
and the padding columns are never sampled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import set_args, tiny_run_settings, worker_threads

from mrbench.data.fastmri_format import ISMRMRD_NS, read_meta, write_volume

pytestmark = pytest.mark.slow

COILS, H, W, ACQUIRED = 16, 640, 368, 334  # fastMRI brain's typical multi-coil matrix
LEFT = W // 2 - ACQUIRED // 2  # fastMRI: padding_left = enc_y // 2 − center


def _header() -> str:
    return (
        f'<?xml version="1.0"?><ismrmrdHeader xmlns="{ISMRMRD_NS}"><encoding>'
        f"<encodedSpace><matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize></encodedSpace>"
        "<reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize></reconSpace>"
        f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{ACQUIRED - 1}</maximum>"
        f"<center>{ACQUIRED // 2}</center></kspace_encoding_step_1></encodingLimits></encoding>"
        "<sequenceParameters><TR>500</TR><TE>15</TE><flipAngle_deg>90</flipAngle_deg></sequenceParameters>"
        "</ismrmrdHeader>"
    )


def _write(path: Path, contrast: str, rng) -> None:
    k = (rng.standard_normal((2, COILS, H, W)) + 1j * rng.standard_normal((2, COILS, H, W))).astype(np.complex64)
    k *= np.exp(-((np.arange(H)[:, None] - H / 2) ** 2 / 2e3 + (np.arange(W) - W / 2) ** 2 / 2e3)).astype(np.float32)
    k[..., :LEFT] = 0
    k[..., LEFT + ACQUIRED :] = 0
    target = np.abs(rng.standard_normal((2, 320, 320))).astype(np.float32)
    write_volume(path, k, target, acquisition=contrast, patient_id=path.stem)
    with h5py.File(path, "a") as hf:
        del hf["ismrmrd_header"]
        hf.create_dataset("ismrmrd_header", data=_header().encode())


def test_a_16_coil_640x368_run_trains_with_bounded_memory(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "big"
    for split in ("train", "val", "test"):
        for contrast in ("AXT1", "AXT2"):
            (root / split).mkdir(parents=True, exist_ok=True)
            _write(root / split / f"{contrast}_{split}.h5", contrast, rng)
    meta = read_meta(root / "train" / "AXT1_train.h5")
    assert (meta.padding_left, meta.padding_right) == (LEFT, LEFT + ACQUIRED) and meta.num_coils == COILS
    sets = tiny_run_settings(
        root,
        tmp_path / "runs",
        "train.budget=4",
        "train.batch=2",
        "train.val_every=4",
        "model.cascades=1",
        "model.chans=2",
        "model.sens_chans=2",
        "data.unseen=[]",
        "eval.adapt_steps=0",
        "eval.support=1",
        "data.cache_gb=0",
        f"train.threads={worker_threads()}",
    )
    code = (
        "import resource, sys; from mrbench.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='mrbench')\nexcept SystemExit as e:\n"
        "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); raise\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "run", "joint", "--quiet", *set_args(sets)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    peak_gb = int(res.stdout.split("maxrss_kb")[-1].split()[0]) / 2**20
    print(f"peak resident memory of the run: {peak_gb:.2f} GiB")
    assert peak_gb < 8, peak_gb  # of 24 GiB here
    run = tmp_path / "runs" / "default" / "joint-varnet-s0-seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["contexts"]) == {"AXT1/equispaced/4x", "AXT2/equispaced/4x"}
    from mrbench.data.contexts import Context
    from mrbench.data.dataset import SliceDataset, TaskData

    ds = SliceDataset([TaskData("t", Context("AXT1"), (meta,))], train=True, seed=0)
    for i in range(len(ds)):
        cols = ds.mask_for(i).mask.reshape(-1, W).max(axis=0)
        assert cols[:LEFT].sum() == 0 and cols[LEFT + ACQUIRED :].sum() == 0 and cols.sum() > 0
