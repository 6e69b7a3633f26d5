"""``mrbench data import`` on real scans that ship in registry packages (the `import` extra):
NIfTI from nibabel's and dipy's test data, MR DICOMs from pydicom and pydicom-data, the Siemens
raw file ``example_data/gre.dat`` of the twixtools source distribution (downloaded with the
test install into ``.venv/sdist`` by the Makefile, never at run time) and an ISMRMRD file written
here with the ``ismrmrd`` package from that raw file."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mrbench.cli import main
from mrbench.data.fastmri_format import read_meta, read_volume
from mrbench.data.importers.base import ImportOptions
from mrbench.data.importers.build import import_dataset
from mrbench.data.importers.layout import Layout, split_subjects
from mrbench.data.importers.magnitude import canonical
from mrbench.data.importers.raw import compress_coils, remove_oversampling
from mrbench.errors import MrbenchError


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} not installed (pip install 'mrbench[import]')")
    path = Path(spec.origin).parent.joinpath(*parts)
    assert path.exists(), path
    return path


def nibabel_file(name: str) -> Path:
    return package_file("nibabel", "tests", "data", name)


def dipy_file(name: str) -> Path:
    return package_file("dipy", "data", "files", name)


@pytest.fixture(scope="module")
def gre_dat(tmp_path_factory) -> Path:
    """``example_data/gre.dat`` from the twixtools sdist (2 channels, 160 lines × 320 oversampled samples)."""
    archives = sorted((Path(sys.prefix) / "sdist").glob("twixtools-*.tar.gz"))
    if not archives:
        pytest.skip("the twixtools sdist is not in .venv/sdist (make test downloads it with the install)")
    out = tmp_path_factory.mktemp("twix")
    with tarfile.open(archives[-1]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("example_data/gre.dat"))
        with tar.extractfile(member) as src, open(out / "gre.dat", "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out / "gre.dat"


def _run(*args):
    return CliRunner().invoke(main, ["data", "import", *map(str, args), "--quiet"])


# ----------------------------------------------------------------------------- layout


def test_patterns_name_subjects_and_contrasts():
    ixi = Layout.build(None, "ixi", ())
    assert ixi.match("IXI-T1/IXI002-Guys-0828-T1.nii.gz") == ("IXI002-Guys-0828", "T1")
    assert ixi.contrast("T1") == "T1" and ixi.contrast("MRA") is None  # MRA is not one of IXI's contrasts here
    brats = Layout.build(None, "brats", ())
    assert brats.match("BraTS20_Training_001/BraTS20_Training_001_t1ce.nii.gz") == ("BraTS20_Training_001", "t1ce")
    assert brats.match("BraTS20_Training_001/BraTS20_Training_002_t1.nii.gz") is None  # subject must repeat
    assert [brats.contrast(c) for c in ("t1", "t1ce", "flair", "seg")] == ["T1", "T1CE", "FLAIR", None]
    own = Layout.build("{subject}/*_{contrast}.nii", None, ("T2w=t2", "FLAIR=flair"))
    assert own.match("s01/run1_T2_tse.nii") == ("s01", "T2_tse") and own.contrast("T2_tse") == "T2w"
    with pytest.raises(MrbenchError, match="unknown layout 'hcp'; valid: brats, ixi"):
        Layout.build(None, "hcp", ())
    with pytest.raises(MrbenchError, match="needs a {subject}"):
        Layout.build("{contrast}.nii", None, ())


def test_split_is_by_subject_seeded_and_keeps_every_subject():
    subjects = [f"s{i:02d}" for i in range(20)]
    a = split_subjects(subjects, (0.7, 0.15, 0.15), seed=3)
    assert a == split_subjects(list(reversed(subjects)), (0.7, 0.15, 0.15), seed=3)  # order-free
    assert sorted(a) == subjects
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert a != split_subjects(subjects, (0.7, 0.15, 0.15), seed=4)
    assert set(split_subjects(subjects[:3], (0.7, 0.15, 0.15), 0).values()) == {"train", "val", "test"}


# ----------------------------------------------------------------------------- magnitude sources


def test_canonical_matches_nibabel():
    nib = pytest.importorskip("nibabel")
    for path in (nibabel_file("anatomical.nii"), dipy_file("aniso_vox.nii.gz"), nibabel_file("standard.nii.gz")):
        img = nib.load(str(path))
        ours, voxel = canonical(np.asanyarray(img.dataobj).astype(np.float32), img.affine)
        theirs = nib.as_closest_canonical(img)
        np.testing.assert_array_equal(ours, np.asanyarray(theirs.dataobj).astype(np.float32))
        np.testing.assert_allclose(voxel, theirs.header.get_zooms()[:3], rtol=1e-6)


def test_nifti_image_kspace_image_round_trip(tmp_path):
    """example4d (frame 0, 128×96×24, 2 mm): the written target is nibabel's canonical axial
    slice (anterior up, right on the left), scaled, and the k-space is its orthonormal FFT."""
    nib = pytest.importorskip("nibabel")
    src = nibabel_file("example4d.nii.gz")
    result = _run(src, "--out", tmp_path / "ds", "--frame", 0, "--fit", "crop", "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    path = tmp_path / "ds" / "train" / "MR_example4d.h5"
    meta = read_meta(path)
    kspace, target = read_volume(meta)
    canon = np.asanyarray(nib.as_closest_canonical(nib.load(str(src))).dataobj)[..., 0].astype(np.float32)
    expected = np.clip(canon[::-1, ::-1, :].transpose(2, 1, 0), 0, None)  # (z, y desc, x desc)
    expected = np.stack([np.pad(s, ((16, 16), (0, 0))) for s in expected])  # crop to 128 pads 96 rows centrally
    with h5py.File(path) as hf:
        scale = float(hf.attrs["intensity_scale"])
        assert hf.attrs["kspace_source"] == "simulated from magnitude"
    np.testing.assert_allclose(target, expected / scale, atol=1e-5)
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace[:, 0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.abs(image), target, atol=1e-5)
    assert np.abs(image.imag).max() < 1e-5  # no --phase: the image is real
    assert meta.acquisition[:5] == (None,) * 5  # NIfTI has no sequence numbers


def test_dipy_volume_with_one_frame_needs_no_frame_and_resamples(tmp_path):
    src = dipy_file("S0_10slices.nii.gz")  # 128×128×10×1, 2×2×53 mm? (an S0 of a diffusion scan)
    result = _run(
        src,
        "--out",
        tmp_path / "ds",
        "--size",
        64,
        "--slices",
        6,
        "--split",
        "1,0,0",
        "--coils",
        4,
        "--snr",
        20,
        "--phase",
    )
    assert result.exit_code == 0, result.output
    kspace, target = read_volume(read_meta(tmp_path / "ds" / "train" / "MR_S0_10slices.h5"))
    assert kspace.shape == (6, 4, 64, 64) and target.shape == (6, 64, 64)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.sqrt((np.abs(img) ** 2).sum(1)), target, rtol=1e-4, atol=1e-5)
    assert np.abs(img.imag).max() > 0.05  # the synthetic phase and the coils are there


def test_params_supply_sequence_numbers_and_conditioning_refuses_without(tmp_path):
    src = nibabel_file("example4d.nii.gz")
    out = tmp_path / "ds"
    ok = _run(
        src,
        "--out",
        out,
        "--frame",
        1,
        "--size",
        32,
        "--slices",
        2,
        "--split",
        "1,0,0",
        "--contrast",
        "EPI=example4d",
        "--params",
        "EPI=3000:30::90:3",
    )
    assert ok.exit_code == 0, ok.output
    meta = read_meta(out / "train" / "EPI_example4d.h5")
    assert meta.acquisition[:5] == (3000.0, 30.0, None, 90.0, 3.0)
    bad = _run(src, "--out", tmp_path / "other", "--frame", 1, "--contrast", "EPI=example4d", "--params", "T1=1:2:3:4")
    assert bad.exit_code == 2 and "--params T1=…: no contrast 'T1' in the data (found: EPI)" in bad.output


@pytest.fixture(scope="module")
def real_anatomy(tmp_path_factory) -> Path:
    """One small dataset of four real NIfTI volumes as four subjects of one contrast "MR":
    nibabel's anatomical.nii and example4d (frame 0), dipy's aniso_vox and S0_10slices."""
    root = tmp_path_factory.mktemp("anatomy")
    src = root / "src"
    src.mkdir()
    for f in (
        nibabel_file("anatomical.nii"),
        nibabel_file("example4d.nii.gz"),
        dipy_file("aniso_vox.nii.gz"),
        dipy_file("S0_10slices.nii.gz"),
    ):
        shutil.copy(f, src / f.name)
    result = _run(src, "--out", root / "ds", "--frame", 0, "--size", 32, "--slices", 4, "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    return root / "ds"


def test_end_to_end_run_and_evaluate_on_real_anatomy(real_anatomy, tmp_path):
    from conftest import set_args, tiny_run_settings

    info = CliRunner().invoke(main, ["data", "info", str(real_anatomy)])
    assert info.exit_code == 0 and "usable by mrbench run" in info.output, info.output
    settings = tiny_run_settings(
        real_anatomy,
        tmp_path / "runs",
        'data.tasks=["MR"]',
        "data.scarce=[]",
        "data.unseen=[]",
        "eval.adapt_steps=0",
        "train.budget=16",
        "train.val_every=8",
    )
    r = CliRunner()
    res = r.invoke(main, ["run", "stl", "--quiet", *set_args(settings)])
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in (tmp_path / "runs").rglob("metrics.json")]
    metrics = json.loads(run_dir.read_text())
    ctx = metrics["contexts"]["MR/equispaced/4x"]
    assert ctx["kspace_source"] == "simulated from magnitude"
    (volume,) = ctx["steps"]["0"]["volumes"]  # the one test subject, a real scan
    assert np.isfinite(ctx["steps"]["0"]["volumes"][volume]["psnr"]) and ctx["steps"]["0"]["mean"]["psnr"] > 10
    ev = r.invoke(main, ["evaluate", str(run_dir.parent)])
    assert ev.exit_code == 0, ev.output
    assert "MR/equispaced/4x" in ev.output and "PSNR" in ev.output
    table = r.invoke(main, ["table", str(tmp_path / "runs")])
    assert table.exit_code == 0, table.output
    assert "k-space simulated from magnitude images" in table.output and "Shimron" in table.output
    # metadata conditioning refuses the NIfTI data (no sequence numbers) with its one-line error
    res = r.invoke(main, ["run", "conditioned", "--quiet", *set_args(settings + ["condition.on=metadata"])])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "sequenceParameters/TR" in res.output


def test_dicom_series_and_tags(tmp_path):
    """pydicom's ANGIO series (7 images, 1.5 T, TR 30 / TE 6 / flip 35) and its MR_small
    (TR 4000 / TE 240 / flip 90), pydicom-data's MR2_UNCR (1.5 T, TR 350 / TE 27)."""
    pytest.importorskip("pydicom")
    src = tmp_path / "src"
    (src / "angio").mkdir(parents=True)
    (src / "single").mkdir()
    for f in package_file("pydicom", "data", "test_files", "dicomdirtests", "98892003", "MR700").iterdir():
        shutil.copy(f, src / "angio" / f.name)
    shutil.copy(package_file("pydicom", "data", "test_files", "MR_small.dcm"), src / "single")
    shutil.copy(package_file("data_store", "data", "MR2_UNCR.dcm"), src / "single")
    out = tmp_path / "ds"
    result = _run(src, "--out", out, "--plane", "acquired", "--size", 32, "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    assert "6 image(s) in other orientations dropped" in result.output  # the projections of other planes
    record = json.loads((out / "dataset.json").read_text())
    params = {v["contrast"]: v["params"] for v in record["volumes"]}
    assert params["ANGIO-Projected-from-C"] == {
        "TR": 30.0,
        "TE": 6.0,
        "flipAngle_deg": 35.0,
        "systemFieldStrength_T": 1.5,
        "sequence_type": "GradientEcho",
    }
    assert params["T1W-SE-1024"]["TR"] == 350.0 and params["T1W-SE-1024"]["TE"] == 27.0
    assert params["series1"]["TR"] == 4000.0 and params["series1"]["TE"] == 240.0
    meta = read_meta(out / "train" / "T1W-SE-1024_5MR2.h5")
    assert meta.acquisition[:5] == (350.0, 27.0, None, 90.0, 1.5) and meta.kspace_shape == (32, 32)
    # --contrast selects: only the spin-echo image, renamed
    sel = _run(src, "--out", tmp_path / "sel", "--plane", "acquired", "--contrast", "T1=T1W/SE", "--split", "1,0,0")
    assert sel.exit_code == 0, sel.output
    assert [p.name for p in (tmp_path / "sel" / "train").iterdir()] == ["T1_5MR2.h5"]
    unknown = _run(src, "--out", tmp_path / "x", "--plane", "acquired", "--contrast", "FLAIR=flair")
    assert unknown.exit_code == 2 and "--contrast FLAIR=flair: no dicom volume" in unknown.output


# ----------------------------------------------------------------------------- raw sources


def _direct_recon(data_lin_cha_col: np.ndarray) -> np.ndarray:
    """RSS of the inverse FFT of twixtools' (Lin, Cha, Col) array, the central half of the
    readout field of view kept: (Col/2, Lin)."""
    k = np.transpose(data_lin_cha_col, (1, 2, 0))  # (Cha, Col, Lin)
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    n = img.shape[1]
    img = img[:, n // 4 : n // 4 + n // 2]
    return np.sqrt((np.abs(img) ** 2).sum(0))


def _twix_lines(gre_dat):
    twixtools = pytest.importorskip("twixtools")
    scan = twixtools.read_twix(str(gre_dat), verbose=False)[-1]
    image = twixtools.map_twix(scan)["image"]
    image.flags["remove_os"] = False
    return scan, np.asarray(image[:], dtype=np.complex64).reshape(image.shape[-3:])


def test_twix_gre(tmp_path, gre_dat):
    scan, raw = _twix_lines(gre_dat)
    assert raw.shape == (160, 2, 320)
    (tmp_path / "src").mkdir()
    shutil.copy(gre_dat, tmp_path / "src")
    result = _run(tmp_path / "src", "--out", tmp_path / "ds", "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    path = tmp_path / "ds" / "train" / "gre_gre.h5"
    meta = read_meta(path)
    kspace, target = read_volume(meta)
    assert kspace.shape == (1, 2, 160, 160)  # readout oversampling removed: 320 → 160 samples
    np.testing.assert_allclose(target[0], _direct_recon(raw), rtol=1e-4, atol=1e-4 * target.max())
    yaps = scan["hdr"]["MeasYaps"]
    assert meta.acquisition[:5] == (
        yaps["alTR"][0] / 1000,
        yaps["alTE"][0] / 1000,
        None,
        yaps["adFlipAngleDegree"][0],
        scan["hdr"]["Dicom"]["flMagneticFieldStrength"],
    )
    assert meta.acquisition[:5] == (10.0, 3.0, None, 15.0, 2.89362)
    with h5py.File(path) as hf:
        assert hf.attrs["kspace_source"] == "measured" and hf.attrs["readout_oversampling_removed"] == "320 -> 160"
    # SVD coil compression to one virtual coil: a single-coil file holding most of the energy
    one = _run(tmp_path / "src", "--out", tmp_path / "one", "--split", "1,0,0", "--coils", 1)
    assert one.exit_code == 0, one.output
    k1, t1 = read_volume(read_meta(tmp_path / "one" / "train" / "gre_gre.h5"))
    assert k1.shape == (1, 1, 160, 160)
    assert 0.9 < (np.abs(k1) ** 2).sum() / (np.abs(kspace) ** 2).sum() <= 1.0 + 1e-5


def test_oversampling_removal_and_coil_compression_units():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 2, 64, 16), np.complex64)
    img[:, :, 16:48] = rng.standard_normal((1, 2, 32, 16)) + 1j * rng.standard_normal((1, 2, 32, 16))
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    half = remove_oversampling(k.astype(np.complex64), 2.0)
    back = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(half, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert half.shape == (1, 2, 32, 16)
    np.testing.assert_allclose(back, img[:, :, 16:48], atol=1e-5)  # the central FOV unchanged
    # coils that are one coil in disguise compress to one without loss
    base = rng.standard_normal((2, 1, 8, 8)) + 1j * rng.standard_normal((2, 1, 8, 8))
    mix = np.array([1.0, 0.5j, -0.25])[None, :, None, None]
    squeezed = compress_coils((base * mix).astype(np.complex64), 1)
    np.testing.assert_allclose(np.abs(squeezed[:, 0]), np.abs(base[:, 0]) * np.linalg.norm(mix), rtol=1e-4)


def write_ismrmrd(path: Path, raw: np.ndarray, *, lines=None, tr=10.0, te=3.0, flip=15.0, b0=2.89362):
    """An ISMRMRD file of (Lin, Cha, Col) readouts with the ismrmrd package (oversampled 2×)."""
    ismrmrd = pytest.importorskip("ismrmrd")
    xsd = ismrmrd.xsd
    n_lin, n_cha, n_col = raw.shape
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=n_col, y=n_lin, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=400.0, y=200.0, z=4.0),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=n_col // 2, y=n_lin, z=1),
            fieldOfView_mm=xsd.fieldOfViewMm(x=200.0, y=200.0, z=4.0),
        ),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=n_lin - 1, center=n_lin // 2),
            slice=xsd.limitType(minimum=0, maximum=0, center=0),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=123_000_000),
        encoding=[enc],
        sequenceParameters=xsd.sequenceParametersType(TR=[tr], TE=[te], flipAngle_deg=[flip], sequence_type="Flash"),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemFieldStrength_T=b0, receiverChannels=n_cha
        ),
        measurementInformation=xsd.measurementInformationType(
            protocolName="gre", patientPosition=xsd.patientPositionType.HFS
        ),
        subjectInformation=xsd.subjectInformationType(patientID="phantom01"),
    )
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(xsd.ToXML(header))
    noise = ismrmrd.Acquisition.from_array(np.zeros((n_cha, n_col), np.complex64))
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    dset.append_acquisition(noise)  # skipped on import
    for line in range(n_lin) if lines is None else lines:
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(raw[line]))
        acq.idx.kspace_encode_step_1 = line
        dset.append_acquisition(acq)
    dset.close()


def test_ismrmrd_round_trip_equals_twix_import(tmp_path, gre_dat):
    _, raw = _twix_lines(gre_dat)
    (tmp_path / "mrd").mkdir()
    write_ismrmrd(tmp_path / "mrd" / "gre.h5", raw)
    assert _run(tmp_path / "mrd", "--out", tmp_path / "ds", "--split", "1,0,0").exit_code == 0
    (tmp_path / "tw").mkdir()
    shutil.copy(gre_dat, tmp_path / "tw")
    assert _run(tmp_path / "tw", "--out", tmp_path / "ref", "--split", "1,0,0").exit_code == 0
    meta = read_meta(tmp_path / "ds" / "train" / "gre_phantom01.h5")
    k, t = read_volume(meta)
    k_ref, t_ref = read_volume(read_meta(tmp_path / "ref" / "train" / "gre_gre.h5"))
    np.testing.assert_allclose(k, k_ref, atol=1e-6 * np.abs(k_ref).max())
    np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-6 * t_ref.max())
    assert meta.acquisition == (10.0, 3.0, None, 15.0, 2.89362, 2)  # family 2 = gre (Flash)


def test_undersampled_ismrmrd_is_written_in_fastmri_test_layout(tmp_path, gre_dat):
    from mrbench.data.fastmri_format import read_mask

    _, raw = _twix_lines(gre_dat)
    lines = sorted(set(range(0, 160, 4)) | set(range(72, 88)))  # 4× with lines 72–88 contiguous (88 = 4·22)
    (tmp_path / "mrd").mkdir()
    write_ismrmrd(tmp_path / "mrd" / "gre.h5", raw, lines=lines)
    result = _run(tmp_path / "mrd", "--out", tmp_path / "ds", "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    path = tmp_path / "ds" / "train" / "gre_phantom01.h5"
    with h5py.File(path) as hf:
        assert "reconstruction_rss" not in hf and hf["mask"].shape == (160,)
        assert hf.attrs["num_low_frequencies"] == 17
    meta = read_meta(path)
    assert meta.stored_mask and meta.target_key is None and meta.stored_low == 17
    np.testing.assert_array_equal(np.flatnonzero(read_mask(meta)[0]), lines)


def test_fastmri_slicedataset_reads_imported_files(tmp_path, gre_dat):
    mri_data = pytest.importorskip("fastmri.data.mri_data")
    (tmp_path / "src").mkdir()
    shutil.copy(gre_dat, tmp_path / "src")
    assert _run(tmp_path / "src", "--out", tmp_path / "ds", "--split", "1,0,0").exit_code == 0
    ds = mri_data.SliceDataset(tmp_path / "ds" / "train", challenge="multicoil")
    kspace, mask, target, attrs, fname, _ = ds[0]
    assert kspace.shape == (2, 160, 160) and target.shape == (160, 160) and mask is None
    assert attrs["padding_left"] == 0 and attrs["padding_right"] == 160 and attrs["recon_size"] == (160, 160, 1)
    nifti = tmp_path / "nifti"
    assert (
        _run(nibabel_file("example4d.nii.gz"), "--out", nifti, "--frame", 0, "--size", 32, "--split", "1,0,0").exit_code
        == 0
    )
    single = mri_data.SliceDataset(nifti / "train", challenge="singlecoil")
    assert len(single) == 24 and single[0][2].shape == (32, 32)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["unreadable", "empty", "out_not_empty", "mismatched", "unknown_format", "missing"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    args = []
    if case == "unreadable":
        (src / "a.nii.gz").write_bytes(b"not a nifti file at all")
        expect = "a.nii.gz: not a readable NIfTI file"
    elif case == "empty":
        expect = "the folder is empty"
    elif case == "out_not_empty":
        shutil.copy(nibabel_file("anatomical.nii"), src / "s1-T1.nii")
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expect = "exists and is not empty"
    elif case == "mismatched":  # two contrasts of one subject with different matrices
        shutil.copy(nibabel_file("anatomical.nii"), src / "s1-T1.nii")
        shutil.copy(dipy_file("aniso_vox.nii.gz"), src / "s1-T2.nii.gz")
        args = ["--pattern", "{subject}-{contrast}.nii*", "--split", "1,0,0"]
        expect = "subject s1: its contrasts differ in shape"
    elif case == "unknown_format":
        (src / "notes.bin").write_bytes(b"\0" * 10)
        expect = "no file looks like NIfTI, DICOM, ISMRMRD or twix; pass --format"
    else:
        (src / "a.dat").write_bytes(b"\0" * 10)
        args = ["--format", "raw"]
        expect = "--format: unknown format 'raw'; valid: dicom, ismrmrd, nifti, twix"
    result = _run(src, "--out", out, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0], result.output
    assert "Traceback" not in result.output
    if case == "out_not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # no staging folder left


def test_four_d_without_frame_and_missing_extra(tmp_path, monkeypatch):
    result = _run(nibabel_file("example4d.nii.gz"), "--out", tmp_path / "out")
    assert result.exit_code == 2 and "with 2 frames; pass --frame N (0–1)" in result.output
    assert not (tmp_path / "out").exists()
    import mrbench.data.importers.base as base

    real = base.importlib.import_module
    monkeypatch.setattr(
        base.importlib,
        "import_module",
        lambda name: (_ for _ in ()).throw(ImportError(name)) if name == "twixtools" else real(name),
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.dat").write_bytes(b"\0")
    result = _run(tmp_path / "src", "--out", tmp_path / "o2")
    assert (
        result.exit_code == 2 and "needs the Python package 'twixtools': pip install 'mrbench[import]'" in result.output
    )


def test_missing_contrast_is_reported_not_dropped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("s1-T1", "s1-T2", "s2-T1", "s3-T1", "s3-T2"):
        shutil.copy(nibabel_file("anatomical.nii"), src / f"{name}.nii")
    report = import_dataset(
        src,
        tmp_path / "ds",
        layout=Layout.build("{subject}-{contrast}.nii", None, ()),
        options=ImportOptions(split=(1.0, 0.0, 0.0)),
    )
    assert report.notes == ["subject s2 has no T2 (imported with T1)"]
    assert len(report.volumes) == 5


def test_undersampled_subjects_train_and_a_self_supervised_loss_trains_on_them(tmp_path, gre_dat):
    """Four fully sampled and two undersampled raw scans (ISMRMRD, compressed to one coil): the
    undersampled subjects have no target, so they all go to train; `ssdu` trains on them."""
    from conftest import set_args, tiny_run_settings

    _, raw = _twix_lines(gre_dat)
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        noisy = raw + (rng.standard_normal(raw.shape) + 1j * rng.standard_normal(raw.shape)).astype(np.complex64) * 2e-7
        lines = None if i < 4 else sorted(set(range(i % 4, 160, 4)) | set(range(72, 88)))
        write_ismrmrd(src / f"sub{i}.h5", noisy.astype(np.complex64), lines=lines)
    result = _run(src, "--out", tmp_path / "ds", "--pattern", "{subject}.h5", "--split", "0.5,0.25,0.25", "--coils", 1)
    assert result.exit_code == 0, result.output
    assert "2 subject(s) with undersampled scans only (no target) put in train: sub4, sub5" in result.output
    record = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert {v["subject"]: v["split"] for v in record["volumes"]}.items() >= {"sub4": "train", "sub5": "train"}.items()
    settings = tiny_run_settings(
        tmp_path / "ds",
        tmp_path / "runs",
        'data.tasks=["gre"]',
        "data.scarce=[]",
        "data.unseen=[]",
        "eval.adapt_steps=0",
        "train.budget=8",
        "train.val_every=8",
        "train.loss=ssdu",
    )
    res = CliRunner().invoke(main, ["run", "stl", "--quiet", *set_args(settings)])
    assert res.exit_code == 0, res.output
    assert "gre/equispaced/4x" in res.output
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("manifest.json")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # the training set holds the two undersampled subjects beside the two fully sampled ones
    assert manifest["training_slices"]["gre/equispaced/4x"]["volumes"] == 4
    assert sum("sub4" in f or "sub5" in f for f in manifest["files"]) == 2
    assert json.loads((run_dir / "metrics.json").read_text())["cost"]["trained_slices"] == 8


def test_ledger_says_when_kspace_was_simulated_from_magnitude():
    import pandas as pd

    from mrbench.reports import claims as C
    from mrbench.reports import results as R

    assert R.simulated_kspace(pd.DataFrame({"kspace_source": ["synthetic", "simulated from magnitude"]}))
    assert not R.simulated_kspace(pd.DataFrame({"kspace_source": ["synthetic", "measured", None]}))
    row = {c: "x" for c in C.LEDGER_COLUMNS}
    plain = C.to_markdown(pd.DataFrame([row]))
    marked = C.to_markdown(pd.DataFrame([{**row, "experiment": "ixi (k-space simulated from magnitude)"}]))
    assert "Shimron" not in plain and R.SIMULATED_NOTE in marked


def test_dicom_series_of_three_subjects_pass_data_info_slicedataset_and_a_run(tmp_path):
    """pydicom's MR700 series (real 16×16 MR images, TR 30 / TE 6) as three subjects (PatientID
    and UIDs rewritten with pydicom, pixels untouched): `data info` passes, fastMRI's
    SliceDataset reads the files, and `mrbench run stl` trains and scores on them."""
    pydicom = pytest.importorskip("pydicom")
    mri_data = pytest.importorskip("fastmri.data.mri_data")
    from conftest import set_args, tiny_run_settings
    from pydicom.uid import generate_uid

    series = package_file("pydicom", "data", "test_files", "dicomdirtests", "98892003", "MR700")
    for s in range(3):
        folder = tmp_path / "src" / f"subject{s}"
        folder.mkdir(parents=True)
        uid = generate_uid()
        for f in series.iterdir():
            ds = pydicom.dcmread(str(f))
            ds.PatientID, ds.SeriesInstanceUID = f"P{s}", uid
            ds.save_as(str(folder / f.name))
    out = tmp_path / "ds"
    result = _run(tmp_path / "src", "--out", out, "--plane", "acquired", "--size", 32, "--contrast", "ANGIO=angio")
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(main, ["data", "info", str(out)])
    assert info.exit_code == 0 and "usable by mrbench run" in info.output and "30/6/-/35 1.5T gre" in info.output
    ds = mri_data.SliceDataset(out / "train", challenge="singlecoil")
    assert ds[0][2].shape == (32, 32) and ds[0][3]["acquisition"] == "ANGIO"
    settings = tiny_run_settings(out, tmp_path / "runs", 'data.tasks=["ANGIO"]', "data.scarce=[]", "data.unseen=[]",
                                 "eval.adapt_steps=0", "train.budget=8", "train.val_every=8")  # fmt: skip
    res = CliRunner().invoke(main, ["run", "stl", "--quiet", *set_args(settings)])
    assert res.exit_code == 0 and "ANGIO/equispaced/4x" in res.output, res.output
