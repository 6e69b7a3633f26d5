import h5py
import numpy as np
import pytest
import torch
from conftest import blob_volume

from mrbench.data.fastmri_format import build_header, check_values, parse_header, read_meta, read_volume, write_volume
from mrbench.errors import MrbenchError
from mrbench.fourier import ifft2c, rss


@pytest.mark.parametrize("coils", [1, 4])
def test_write_read_roundtrip(tmp_path, coils):
    k, t = blob_volume(np.random.default_rng(1), 3, 24, 20, coils)
    p = tmp_path / "v.h5"
    write_volume(p, k, t, acquisition="AXT2", patient_id="x1")
    meta = read_meta(p)
    assert meta.contrast == "AXT2" and meta.num_slices == 3 and meta.num_coils == coils
    assert meta.kspace_shape == (24, 20) and meta.target_shape == (24, 20)
    assert meta.target_key == ("reconstruction_esc" if coils == 1 else "reconstruction_rss")
    assert (meta.padding_left, meta.padding_right) == (0, 20)
    assert meta.max_value == pytest.approx(float(t.max()))
    kspace, target = read_volume(meta)
    assert kspace.shape == (3, coils, 24, 20) and kspace.dtype == np.complex64
    np.testing.assert_array_equal(target, t)
    recon = rss(ifft2c(torch.from_numpy(kspace)), dim=1).numpy()
    np.testing.assert_allclose(recon, target, rtol=1e-5, atol=1e-6)
    with h5py.File(p) as hf:
        assert hf.attrs["norm"] == pytest.approx(np.linalg.norm(t), rel=1e-6)


def test_header_padding_follows_fastmri():
    xml = build_header((640, 372), (320, 320))
    assert parse_header(xml, 372) == (0, 372, (320, 320))
    # a real knee-like header: enc y = 368, limits centre 168 max 332 → 16 .. 349
    ns = "http://www.ismrm.org/ISMRMRD"
    real = (
        f'<ismrmrdHeader xmlns="{ns}"><encoding><encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z>'
        "</matrixSize></encodedSpace><reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>"
        "</reconSpace><encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>332</maximum>"
        "<center>168</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
    )
    left, right, recon = parse_header(real, 368)
    assert (left, right) == (368 // 2 - 168, 368 // 2 - 168 + 333) == (16, 349)
    assert recon == (320, 320)


def test_fastmri_slicedataset_reads_our_files(tiny_root):
    mri_data = pytest.importorskip("fastmri.data.mri_data")
    ds = mri_data.SliceDataset(tiny_root / "train", challenge="singlecoil")
    assert len(ds) == 8 * 3  # 4 subjects × 2 contrasts × 3 slices
    kspace, mask, target, attrs, fname, slice_idx = ds[0]
    assert mask is None and kspace.shape == (32, 32) and target.shape == (32, 32)
    assert attrs["padding_left"] == 0 and attrs["padding_right"] == 32
    assert attrs["recon_size"] == (32, 32, 1) and attrs["encoding_size"] == (32, 32, 1)
    assert attrs["acquisition"] in ("AXT1", "AXT2") and attrs["max"] > 0
    ours, ours_t = read_volume(read_meta(tiny_root / "train" / fname))
    np.testing.assert_array_equal(kspace, ours[slice_idx, 0])
    np.testing.assert_array_equal(target, ours_t[slice_idx])


def _bad_file(tmp_path, kind):
    p = tmp_path / f"{kind}.h5"
    good_k, good_t = blob_volume(np.random.default_rng(0), 2, 16, 16)
    if kind == "text":
        p.write_text("this is not HDF5")
        return p
    if kind == "truncated":
        write_volume(p, good_k, good_t, acquisition="AXT1", patient_id="a")
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
        return p
    with h5py.File(p, "w") as hf:
        hf.attrs["acquisition"] = "AXT1"
        if kind == "no_kspace":
            hf["reconstruction_esc"] = good_t
        elif kind == "rank":
            hf["kspace"] = good_k[0]
        elif kind == "dtype":
            hf["kspace"] = np.abs(good_k)
        elif kind == "no_acq":
            del hf.attrs["acquisition"]
            hf["kspace"] = good_k
    return p


@pytest.mark.parametrize(
    "kind,msg",
    [
        ("text", "not a readable HDF5 file"),
        ("truncated", "not a readable HDF5 file"),
        ("no_kspace", "has no 'kspace' dataset"),
        ("rank", "has rank 2"),
        ("dtype", "expected complex64"),
        ("no_acq", "no 'acquisition' attribute"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, kind, msg):
    p = _bad_file(tmp_path, kind)
    with pytest.raises(MrbenchError, match=msg) as exc:
        read_meta(p)
    assert str(p) in str(exc.value) and "\n" not in str(exc.value)


def test_nan_kspace_detected(tmp_path):
    k, t = blob_volume(np.random.default_rng(0), 3, 16, 16)
    k[2, 3, 4] = np.nan
    p = tmp_path / "nan.h5"
    write_volume(p, k, t, acquisition="AXT1", patient_id="a")
    read_meta(p)  # structure is fine
    with pytest.raises(MrbenchError, match=r"NaN/Inf values \(first in slice 2\)"):
        check_values(p)
    with pytest.raises(MrbenchError, match="NaN/Inf"):
        read_volume(read_meta(p))
