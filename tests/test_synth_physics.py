"""Physics of the synthetic brain: signal equations, contrasts, subject simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrbench.data.synth import tissue as tissue_mod
from mrbench.data.synth.physics import (
    NAMED_CONTRASTS,
    TISSUES,
    Sequence,
    Tissue,
    flair_ti,
    resolve_contrast,
)
from mrbench.data.synth.subject import (
    SubjectVolume,
    coil_maps,
    simulate_subject,
    subject_tissue_maps,
    subject_tissues,
)
from mrbench.data.synth.tissue import TissueMaps, phantom_tissue_maps
from mrbench.errors import MrbenchError
from mrbench.fourier import ifft2c, rss

SMALL = dict(size=64, n_slices=4)


def _has_nilearn() -> bool:
    import importlib.util

    return importlib.util.find_spec("nilearn") is not None


SOURCES = [
    "phantom",
    pytest.param("mni", marks=pytest.mark.skipif(not _has_nilearn(), reason="nilearn not installed")),
]


# ----------------------------------------------------------- signal equations


def test_tissue_table_is_brainweb_15t():
    assert TISSUES["csf"] == Tissue(2569.0, 329.0, 1.0, 164.5)
    assert (TISSUES["gm"].t1, TISSUES["gm"].t2, TISSUES["gm"].pd) == (833.0, 83.0, 0.86)
    assert (TISSUES["wm"].t1, TISSUES["wm"].t2, TISSUES["wm"].pd) == (500.0, 70.0, 0.77)
    assert (TISSUES["fat"].t1, TISSUES["fat"].t2, TISSUES["fat"].pd) == (350.0, 70.0, 1.0)
    for t in TISSUES.values():
        assert t.t2star == pytest.approx(0.5 * t.t2)


def test_spin_echo_hand_computed():
    wm = TISSUES["wm"]
    # 0.77 · (1 − e^(−500/500)) · e^(−15/70)
    assert NAMED_CONTRASTS["AXT1"].tissue_signal(wm) == pytest.approx(0.3928507, rel=1e-6)
    seq = Sequence("se", tr=4000, te=100)
    csf = TISSUES["csf"]
    expected = 1.0 * (1 - math.exp(-4000 / 2569)) * math.exp(-100 / 329)
    assert seq.signal(csf.t1, csf.t2, csf.pd, csf.t2star) == pytest.approx(expected, rel=1e-12)


def test_inversion_recovery_and_flair_nulls_csf():
    ti = flair_ti(9000.0)
    assert ti == pytest.approx(1704.515, abs=1e-3)
    flair = NAMED_CONTRASTS["AXFLAIR"]
    assert flair.kind == "ir" and flair.ti == pytest.approx(ti)
    assert flair.tissue_signal(TISSUES["csf"]) == pytest.approx(0.0, abs=1e-12)
    # GM: 0.86 · |1 − 2e^(−TI/833) + e^(−9000/833)| · e^(−100/83)
    assert flair.tissue_signal(TISSUES["gm"]) == pytest.approx(0.1911657, rel=1e-6)
    assert flair.tissue_signal(TISSUES["gm"]) > flair.tissue_signal(TISSUES["wm"]) > 0.1
    # magnitude: a short TI gives a (positive) negative-longitudinal signal
    s = Sequence("ir", tr=9000, te=10, ti=100).tissue_signal(TISSUES["csf"])
    assert s == pytest.approx(abs(1 - 2 * math.exp(-100 / 2569) + math.exp(-9000 / 2569)) * math.exp(-10 / 329))


def test_spoiled_gradient_echo_hand_computed():
    seq = Sequence("gre", tr=20, te=5, flip=30)
    wm = TISSUES["wm"]  # T2* = 35 ms
    assert seq.tissue_signal(wm) == pytest.approx(0.07792708, rel=1e-6)
    # explicit t2star overrides the T2/2 default
    assert seq.signal(500, 70, 0.77, 1e12) == pytest.approx(0.07792708 * math.exp(5 / 35), rel=1e-6)


def test_signal_broadcasts():
    t1 = np.array([500.0, 833.0, 2569.0])[:, None]
    pd = np.array([0.5, 1.0])[None, :]
    out = NAMED_CONTRASTS["AXT2"].signal(t1, 80.0, pd, 40.0)
    assert out.shape == (3, 2)
    assert out[1, 1] == pytest.approx((1 - math.exp(-4000 / 833)) * math.exp(-100 / 80))
    assert out[1, 0] == pytest.approx(0.5 * out[1, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="xx", tr=500, te=15), "unknown sequence kind"),
        (dict(kind="ir", tr=9000, te=100), "needs ti"),
        (dict(kind="gre", tr=20, te=5), "needs flip"),
        (dict(kind="se", tr=-1, te=15), "tr must be a positive"),
        (dict(kind="se", tr=500, te=0), "te must be a positive"),
        (dict(kind="se", tr=500, te=600), "shorter than tr"),
        (dict(kind="ir", tr=9000, te=100, ti=-5), "ti must be a positive"),
        (dict(kind="gre", tr=20, te=5, flip=200), "flip must be in"),
        (dict(kind="se", tr=500, te=15, flip=30), "only used by 'gre'"),
    ],
)
def test_sequence_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sequence(**kwargs)


# ----------------------------------------------------------- resolve_contrast


def test_resolve_named_contrasts_case_insensitive():
    assert resolve_contrast("AXT1") == ("AXT1", NAMED_CONTRASTS["AXT1"])
    assert resolve_contrast(" axflair ") == ("AXFLAIR", NAMED_CONTRASTS["AXFLAIR"])
    assert resolve_contrast({"name": "axpd"}) == ("AXPD", NAMED_CONTRASTS["AXPD"])
    assert set(NAMED_CONTRASTS) == {"AXT1", "AXT2", "AXPD", "AXFLAIR"}
    assert NAMED_CONTRASTS["AXT1"] == Sequence("se", 500, 15)
    assert NAMED_CONTRASTS["AXT2"] == Sequence("se", 4000, 100)
    assert NAMED_CONTRASTS["AXPD"] == Sequence("se", 4000, 15)


def test_resolve_dict_specs():
    name, seq = resolve_contrast({"name": "T1GRE", "sequence": "gre", "tr": 20, "te": 5, "flip": 30})
    assert name == "T1GRE"
    assert seq == Sequence("gre", tr=20.0, te=5.0, flip=30.0)
    name, seq = resolve_contrast({"name": "STIR", "sequence": "IR", "tr": 5000, "te": 30, "ti": 150})
    assert (name, seq.kind, seq.ti) == ("STIR", "ir", 150.0)
    # re-declaring a built-in with identical parameters is allowed
    assert resolve_contrast({"name": "axt1", "sequence": "se", "tr": 500, "te": 15})[0] == "AXT1"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("T1W", r"unknown contrast 'T1W'; valid names: AXT1, AXT2, AXPD, AXFLAIR"),
        (42, "must be a name or a dict"),
        ({"name": "X", "sequence": "se", "tr": 500, "te": 15, "echo": 3}, "unknown key 'echo'"),
        ({"sequence": "se", "tr": 500, "te": 15}, "key 'name'"),
        ({"name": "bad name!", "sequence": "se", "tr": 500, "te": 15}, "key 'name'"),
        ({"name": "X", "tr": 500, "te": 15}, "key 'sequence'"),
        ({"name": "X", "sequence": "epi", "tr": 500, "te": 15}, "key 'sequence'"),
        ({"name": "X", "sequence": "ir", "tr": 9000, "te": 100}, "needs key 'ti'"),
        ({"name": "X", "sequence": "gre", "tr": 20, "te": 5}, "needs key 'flip'"),
        ({"name": "X", "sequence": "se", "tr": 500}, "needs key 'te'"),
        ({"name": "X", "sequence": "se", "tr": "long", "te": 15}, "key 'tr'"),
        ({"name": "X", "sequence": "se", "tr": -500, "te": 15}, "key 'tr'"),
        ({"name": "X", "sequence": "se", "tr": 500, "te": 15, "ti": 100}, "key 'ti' is not used"),
        ({"name": "X", "sequence": "se", "tr": 500, "te": 800}, "key 'te'"),
        ({"name": "X", "sequence": "gre", "tr": 20, "te": 5, "flip": 270}, "key 'flip'"),
        ({"name": "AXT1", "sequence": "se", "tr": 600, "te": 15}, "clashes with the built-in"),
    ],
)
def test_resolve_errors(spec, match):
    with pytest.raises(MrbenchError, match=match):
        resolve_contrast(spec)


# ------------------------------------------------------------------ tissue maps


def test_phantom_maps_format():
    maps = phantom_tissue_maps(5, 64, np.random.default_rng(0))
    assert isinstance(maps, TissueMaps) and maps.shape == (5, 64, 64)
    stack = maps.stack()
    assert stack.dtype == np.float32
    assert stack.min() >= 0 and stack.max() <= 1
    assert stack.sum(0).max() <= 1 + 1e-5
    for a in stack:
        assert (a > 0.9).sum() > 20  # every tissue present
    assert np.all(stack[:, :, 0, :] == 0)  # background at the FOV edge
    other = phantom_tissue_maps(5, 64, np.random.default_rng(1))
    assert not np.array_equal(other.stack(), stack)


def test_missing_nilearn_is_a_user_error(monkeypatch):
    monkeypatch.setattr(tissue_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MrbenchError, match="nilearn"):
        tissue_mod._nilearn_data_dir()


def test_mni_orientation_and_slab():
    pytest.importorskip("nilearn")
    import nibabel as nib

    path = tissue_mod._nilearn_data_dir() / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
    raw = np.asarray(nib.load(str(path)).dataobj)  # (x: L→R, y: P→A, z: I→S)
    ours = tissue_mod._load_template("gm")
    assert ours.shape == (189, 233, 197)
    # row 0 = most anterior, column 0 = patient's right, slice 0 = most inferior
    assert ours[100, 10, 20] == raw[196 - 20, 232 - 10, 100]
    stack, z_lo, z_hi, pixel_mm = tissue_mod.mni_slab(64)
    assert stack.dtype == np.float32 and stack.shape[0] == 4 and stack.shape[2:] == (64, 64)
    assert 0 < z_lo < z_hi < stack.shape[1] - 1 and pixel_mm == 4.0
    assert stack.sum(0).max() <= 1 + 1e-5
    csf, gm, wm, fat = stack
    mid = stack.shape[1] // 2
    # ventricles: CSF near the centre; scalp fat only outside the brain
    assert csf[mid, 24:40, 24:40].max() > 0.8
    assert fat.max() > 0.5 and (fat * (gm + wm)).max() < 0.05
    assert gm.sum() > 0 and wm.sum() > 0


# ------------------------------------------------------------- subject physics


def _region_means(target: np.ndarray, maps: TissueMaps, thr: float = 0.8) -> dict[str, float]:
    out = {}
    for name in ("csf", "gm", "wm"):
        mask = getattr(maps, name) > thr
        assert mask.sum() >= 5, f"too few {name} voxels"
        out[name] = float(target[mask].mean())
    return out


@pytest.mark.parametrize("source", SOURCES)
def test_contrast_physics_on_simulated_subject(source):
    vols = simulate_subject(NAMED_CONTRASTS, seed=7, source=source, **SMALL)
    maps = subject_tissue_maps(seed=7, source=source, **SMALL)
    assert list(vols) == list(NAMED_CONTRASTS)
    m = {name: _region_means(v.target, maps) for name, v in vols.items()}
    assert m["AXT2"]["csf"] > 1.5 * m["AXT2"]["wm"]  # CSF bright on T2
    assert m["AXT2"]["gm"] > m["AXT2"]["wm"]
    assert m["AXT1"]["csf"] < 0.75 * m["AXT1"]["wm"]  # CSF dark on T1
    assert m["AXT1"]["wm"] > m["AXT1"]["gm"]  # WM brighter than GM on T1
    assert m["AXFLAIR"]["csf"] < 0.6 * m["AXFLAIR"]["wm"]  # CSF suppressed on FLAIR
    for v in vols.values():
        # order-1 scale: brightest tissue ≈ 1 (± bias / jitter / partial volume)
        assert 0.5 < np.percentile(v.target, 99.9) < 1.6


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("coils", [1, 4])
def test_kspace_target_consistency(source, coils):
    vols = simulate_subject({"AXT2": NAMED_CONTRASTS["AXT2"]}, seed=3, coils=coils, source=source, **SMALL)
    v = vols["AXT2"]
    assert isinstance(v, SubjectVolume)
    expected_k = (4, 64, 64) if coils == 1 else (4, coils, 64, 64)
    assert v.kspace.shape == expected_k and v.kspace.dtype == np.complex64
    assert v.target.shape == (4, 64, 64) and v.target.dtype == np.float32
    img = ifft2c(torch.from_numpy(v.kspace))
    recon = (img.abs() if coils == 1 else rss(img, dim=1)).numpy()
    assert np.abs(recon - v.target).max() <= 1e-5 * np.abs(v.target).max()


def test_coil_maps_normalised():
    s = coil_maps(8, 32, np.random.default_rng(0))
    assert s.shape == (8, 32, 32) and s.dtype == np.complex64
    assert np.allclose((np.abs(s) ** 2).sum(0), 1.0, atol=1e-5)
    assert np.abs(np.angle(s)).max() > 0.5  # complex, not just magnitude


def test_seeds_determinism_and_shared_anatomy():
    a = simulate_subject(NAMED_CONTRASTS, seed=11, source="phantom", **SMALL)
    b = simulate_subject(NAMED_CONTRASTS, seed=11, source="phantom", **SMALL)
    c = simulate_subject(NAMED_CONTRASTS, seed=12, source="phantom", **SMALL)
    for name in NAMED_CONTRASTS:
        assert np.array_equal(a[name].kspace, b[name].kspace)
        assert np.array_equal(a[name].target, b[name].target)
        assert not np.allclose(a[name].target, c[name].target, atol=0.05)
    # adding or dropping a contrast does not change the others
    only = simulate_subject({"AXT1": NAMED_CONTRASTS["AXT1"]}, seed=11, source="phantom", **SMALL)
    assert np.array_equal(only["AXT1"].kspace, a["AXT1"].kspace)
    assert subject_tissues(11) == subject_tissues(11) != subject_tissues(12)
    m11 = subject_tissue_maps(seed=11, source="phantom", **SMALL).stack()
    assert not np.array_equal(m11, subject_tissue_maps(seed=12, source="phantom", **SMALL).stack())


def test_tissue_jitter_within_10_percent():
    for seed in range(20):
        for name, t in subject_tissues(seed).items():
            ref = TISSUES[name]
            for f in ("t1", "t2", "pd", "t2star"):
                assert 0.9 - 1e-9 <= getattr(t, f) / getattr(ref, f) <= 1.1 + 1e-9
            assert t.t2star == pytest.approx(0.5 * t.t2)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("coils", [1, 3])
def test_measured_snr(source, coils):
    spec = {"AXPD": NAMED_CONTRASTS["AXPD"]}
    noisy = simulate_subject(spec, seed=5, snr=20.0, coils=coils, source=source, **SMALL)["AXPD"]
    clean = simulate_subject(spec, seed=5, snr=None, coils=coils, source=source, **SMALL)["AXPD"]
    noise = noisy.kspace - clean.kspace
    sigma = math.sqrt(float(np.mean(np.abs(noise) ** 2)))
    # per-coil noise has the same std, and is white and zero-mean
    if coils > 1:
        per_coil = np.sqrt(np.mean(np.abs(noise) ** 2, axis=(0, 2, 3)))
        assert np.allclose(per_coil, sigma, rtol=0.1)
    assert abs(noise.mean()) < 0.05 * sigma
    brain = subject_tissue_maps(seed=5, source=source, **SMALL).brain() > 0.5
    measured = float(clean.target[brain].mean()) / sigma
    assert measured == pytest.approx(20.0, rel=0.05)
    # the noise-free target is smooth: noisy − clean background ≈ noise level
    bg = clean.target < 1e-4
    assert np.std(noisy.target[bg]) < 1.5 * sigma


def test_simulate_subject_argument_errors():
    seq = {"AXT1": NAMED_CONTRASTS["AXT1"]}
    with pytest.raises(MrbenchError, match="source"):
        simulate_subject(seq, seed=0, source="brainweb", **SMALL)
    with pytest.raises(MrbenchError, match="coils"):
        simulate_subject(seq, seed=0, coils=0, source="phantom", **SMALL)
    with pytest.raises(MrbenchError, match="snr"):
        simulate_subject(seq, seed=0, snr=-1.0, source="phantom", **SMALL)
    with pytest.raises(MrbenchError, match="seed"):
        simulate_subject(seq, seed=-3, source="phantom", **SMALL)
    with pytest.raises(MrbenchError, match="Sequence"):
        simulate_subject({"AXT1": "AXT1"}, seed=0, source="phantom", **SMALL)


def test_subject_variety_lesions_and_atrophy_are_real_and_deterministic():
    """Issue 12: subjects differ beyond a small deformation — head size, atrophy (CSF share)
    and white-matter lesions with their own T1/T2/PD (bright on T2, dark on T1)."""
    from mrbench.data.synth.physics import NAMED_CONTRASTS
    from mrbench.data.synth.subject import simulate_subject, subject_lesions, subject_tissue_maps

    maps = [subject_tissue_maps(seed=s, size=32, n_slices=6, source="phantom") for s in range(6)]
    csf_share = [float(m.csf.sum() / m.brain().sum()) for m in maps]
    assert max(csf_share) - min(csf_share) > 0.02  # atrophy varies the CSF share between subjects
    m0 = subject_tissue_maps(seed=0, size=32, n_slices=6, source="phantom")
    assert np.array_equal(m0.csf, maps[0].csf)  # deterministic
    lesioned = None
    for seed in range(20):
        m = subject_tissue_maps(seed=seed, size=32, n_slices=6, source="phantom")
        lesion, tissue = subject_lesions(seed, m, 8.0)
        if (lesion * m.wm).max() > 0.5:
            lesioned = seed
            break
    assert lesioned is not None and tissue.t2 > 1.4 * 70 * 0.9 and tissue.t1 > 1.2 * 500 * 0.9
    seqs = {c: NAMED_CONTRASTS[c] for c in ("AXT1", "AXT2")}
    vol = simulate_subject(seqs, seed=lesioned, size=32, n_slices=6, snr=None, source="phantom")
    where = (lesion * m.wm) > 0.5
    around = (m.wm > 0.8) & ~((lesion * m.wm) > 0.05)
    assert vol["AXT2"].target[where].mean() > 1.1 * vol["AXT2"].target[around].mean()  # bright on T2
    assert vol["AXT1"].target[where].mean() < vol["AXT1"].target[around].mean()  # dark on T1
