"""`mrbench data synth` end to end: files, determinism, the no-op rerun, custom contrasts, errors."""

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mrbench.cli import main
from mrbench.data.index import scan
from mrbench.fourier import ifft2c

SMALL = ["--subjects", "3", "--size", "32", "--slices", "2", "--source", "phantom", "--quiet"]


def synth(out, *extra):
    return CliRunner().invoke(main, ["data", "synth", "--out", str(out), *SMALL, *extra])


def test_synth_writes_readable_deterministic_dataset(tmp_path):
    r = synth(tmp_path / "a", "--contrasts", "AXT1,AXT2")
    assert r.exit_code == 0, r.output
    index = scan(tmp_path / "a", check=True)
    assert index.splits == ["train", "val", "test"] and index.contrasts() == ["AXT1", "AXT2"]
    assert [len(index.volumes[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    assert (tmp_path / "a" / "contrasts.png").stat().st_size > 1000
    f = index.select("test", "AXT2")[0].path
    with h5py.File(f) as hf:
        k, t = hf["kspace"][()], hf["reconstruction_esc"][()]
        assert json.loads(hf.attrs["sequence"])["tr"] == 4000
    np.testing.assert_allclose(ifft2c(torch.from_numpy(k)).abs().numpy(), t, rtol=1e-4, atol=1e-6)
    # same seed → identical files; other seed → other subjects
    synth(tmp_path / "b", "--contrasts", "AXT1,AXT2")
    synth(tmp_path / "c", "--contrasts", "AXT1,AXT2", "--seed", "1")
    rel = f.relative_to(tmp_path / "a")
    with h5py.File(tmp_path / "b" / rel) as hb, h5py.File(tmp_path / "c" / rel) as hc:
        np.testing.assert_array_equal(hb["kspace"][()], k)
        assert not np.allclose(hc["kspace"][()], k)


def test_rerun_is_noop_and_other_parameters_refused(tmp_path):
    assert synth(tmp_path / "d", "--contrasts", "AXT1").exit_code == 0
    f = next((tmp_path / "d" / "train").glob("*.h5"))
    mtime = f.stat().st_mtime_ns
    r = synth(tmp_path / "d", "--contrasts", "AXT1")
    assert r.exit_code == 0 and "up to date" in r.output and f.stat().st_mtime_ns == mtime
    r = synth(tmp_path / "d", "--contrasts", "AXT2")
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert f.exists() and f.stat().st_mtime_ns == mtime  # nothing damaged
    r = synth(tmp_path / "d", "--contrasts", "AXT2", "--overwrite")
    assert r.exit_code == 0 and scan(tmp_path / "d").contrasts() == ["AXT2"]


def test_custom_contrast_and_multicoil(tmp_path):
    r = synth(tmp_path / "e", "--contrasts", "AXT1,T2GRE:gre:tr=500:te=20:flip=20", "--coils", "4")
    assert r.exit_code == 0, r.output
    index = scan(tmp_path / "e")
    assert index.contrasts() == ["AXT1", "T2GRE"]
    meta = index.select("train", "T2GRE")[0]
    assert meta.num_coils == 4 and meta.target_key == "reconstruction_rss"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--contrasts", "AXT9"], "AXT9"),
        (["--contrasts", "X:gre:tr=abc"], "tr must be a number"),
        (["--contrasts", "X:se:te"], "expected key=value"),
        (["--subjects", "2"], "--subjects must be ≥ 3"),
        (["--size", "4"], "--size must be in"),
        (["--snr", "0"], "--snr must be > 0"),
        (["--contrasts", "AXT1,AXT1"], "twice"),
    ],
)
def test_synth_bad_options(tmp_path, args, fragment):
    r = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "x"), *SMALL, *args])
    assert r.exit_code == 2, r.output
    assert fragment in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.h5"))
