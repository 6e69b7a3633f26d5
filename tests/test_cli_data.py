"""`mrbench data …` from the command line, including every bad-input path (exit 2, one line)."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import blob_volume

from mrbench.cli import main
from mrbench.data.fastmri_format import write_volume


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert out.startswith("Error: ") and "\n" not in out, out
    assert "Traceback" not in out
    for f in fragments:
        assert f in out, out


def test_info_table(tiny_root):
    r = run("data", "info", tiny_root)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == [
        "split",
        "contrast",
        "volumes",
        "slices",
        "kspace",
        "coils",
        "target",
        "padded",
        "TR/TE/TI/flip",
        "B0",
        "family",
    ]
    assert lines[2].split() == ["train", "AXT1", "4", "12", "32x32", "1", "32x32", "0", "500/15/-/90", "1.5T", "se"]
    assert "14 volumes" in lines[-1] and "all values checked" in lines[-1]


def _corrupt(root, kind):
    p = root / "train" / "bad.h5"
    k, t = blob_volume(np.random.default_rng(0), 2, 16, 16)
    if kind == "text":
        p.write_text("garbage")
    elif kind == "truncated":
        write_volume(p, k, t, acquisition="AXT1", patient_id="a")
        p.write_bytes(p.read_bytes()[:1000])
    elif kind == "nan":
        k[1, 0, 0] = np.inf
        write_volume(p, k, t, acquisition="AXT1", patient_id="a")
    else:
        with h5py.File(p, "w") as hf:
            hf.attrs["acquisition"] = "AXT1"
            if kind == "no_kspace":
                hf["reconstruction_esc"] = t
            elif kind == "rank":
                hf["kspace"] = k[:, :, 0]
            elif kind == "dtype":
                hf["kspace"] = k.real.astype(np.float32)
    return p


@pytest.mark.parametrize(
    "kind,fragment",
    [
        ("text", "not a readable HDF5 file"),
        ("truncated", "not a readable HDF5 file"),
        ("no_kspace", "has no 'kspace' dataset"),
        ("rank", "has rank 2"),
        ("dtype", "dtype float32, expected complex64"),
        ("nan", "NaN/Inf values (first in slice 1)"),
    ],
)
def test_info_bad_files(tiny_root, kind, fragment):
    p = _corrupt(tiny_root, kind)
    before = p.read_bytes()
    assert_one_line_error(run("data", "info", tiny_root), str(p), fragment)
    assert p.read_bytes() == before  # nothing on disk damaged


def test_info_missing_and_empty(tmp_path):
    assert_one_line_error(run("data", "info", tmp_path / "missing"), "does not exist")
    (tmp_path / "e").mkdir()
    assert_one_line_error(run("data", "info", tmp_path / "e"), "no .h5 files")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mrbench", "data", "info", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
