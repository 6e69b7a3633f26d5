import numpy as np
import pytest

from mrbench.data.masks import MASKS, make_mask, volume_seed
from mrbench.errors import MrbenchError

SHAPE = (64, 128)


def test_registry_and_unknown_name_lists_valid():
    assert set(MASKS) == {"random", "equispaced", "gaussian", "gaussian2d"}
    with pytest.raises(MrbenchError, match="equispaced, gaussian, gaussian2d, random"):
        make_mask("radial", 4)


@pytest.mark.parametrize("acc,cf", [(1, 0.08), (0.5, 0.08), (4, 0), (4, 1.0), (4, -0.1)])
def test_bad_parameters(acc, cf):
    with pytest.raises(MrbenchError):
        make_mask("random", acc, cf)


def test_random_mask_fastmri_semantics():
    m = make_mask("random", 4, 0.08)
    n_low = round(128 * 0.08)  # 10
    pad = (128 - n_low + 1) // 2
    accs = []
    for seed in range(400):
        d = m(SHAPE, seed)
        assert d.num_low_frequencies == n_low
        assert (d.mask == d.mask[0]).all()  # 1-D: identical rows
        assert d.mask[0, pad : pad + n_low].all()
        accs.append(d.mask[0].sum())
    # expected number of lines is W/R (fastMRI RandomMaskFunc)
    assert abs(np.mean(accs) - 128 / 4) < 0.6


@pytest.mark.parametrize("acc", [4, 6, 8])
def test_equispaced_matches_fastmri(acc):
    subsample = pytest.importorskip("fastmri.data.subsample")
    ours = make_mask("equispaced", acc, 0.08)
    ref = subsample.EquispacedMaskFractionFunc([0.08], [acc])
    n_low = round(128 * 0.08)
    adjusted = (acc * (n_low - 128)) / (n_low * acc - 128)
    ref_masks = []
    for offset in range(max(1, round(adjusted))):
        centre = ref.calculate_center_mask((1, 128, 1), n_low)
        accel = ref.calculate_acceleration_mask(128, acc, offset, n_low)
        ref_masks.append(np.maximum(centre, accel))
    for seed in range(10):
        row = ours((8, 128), seed).mask[0]
        assert any(np.array_equal(row, r) for r in ref_masks)
    # the acceleration is exact up to rounding
    d = ours((8, 128), 0)
    assert abs(d.acceleration - acc) / acc < 0.08


@pytest.mark.parametrize("acc", [4, 5, 8, 10])
def test_gaussian_exact_line_count(acc):
    m = make_mask("gaussian", acc, 0.08)
    for seed in range(5):
        d = m(SHAPE, seed)
        assert d.mask[0].sum() == round(128 / acc)
        assert (d.mask == d.mask[0]).all()
        n_low = d.num_low_frequencies
        pad = (128 - n_low + 1) // 2
        assert d.mask[0, pad : pad + n_low].all()


@pytest.mark.parametrize("acc", [4, 7, 10])
def test_gaussian2d_exact_points_disc_and_density(acc):
    m = make_mask("gaussian2d", acc, 0.04)
    h, w = 96, 96
    d = m((h, w), 3)
    assert d.mask.sum() == round(h * w / acc)
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    r = np.sqrt(yy**2 + xx**2)
    radius = np.sqrt(0.04 * h * w / np.pi)
    assert d.mask[r <= radius].all()
    # variable density: denser near the centre than at the edge
    inner = d.mask[(r > radius) & (r < 20)].mean()
    outer = d.mask[r > 35].mean()
    assert inner > 2 * outer
    assert not (d.mask == d.mask[0]).all()  # genuinely 2-D


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_fixed_seed_reproducible_and_padding(kind):
    m = make_mask(kind, 4, 0.08)
    a = m(SHAPE, 123, padding=(10, 110))
    b = m(SHAPE, 123, padding=(10, 110))
    c = m(SHAPE, 124, padding=(10, 110))
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask) or kind == "equispaced"
    assert a.mask[:, :10].sum() == 0 and a.mask[:, 110:].sum() == 0
    assert a.mask.dtype == np.float32 and a.mask.shape == SHAPE


def test_generator_draws_differ_and_volume_seed_is_stable():
    m = make_mask("random", 4)
    rng = np.random.default_rng(0)
    assert not np.array_equal(m(SHAPE, rng).mask, m(SHAPE, rng).mask)
    assert volume_seed("file_a.h5", "random", 4) == volume_seed("file_a.h5", "random", 4)
    assert volume_seed("file_a.h5", "random", 4) != volume_seed("file_b.h5", "random", 4)
    assert volume_seed("file_a.h5", "random", 4) != volume_seed("file_a.h5", "random", 8)


def test_largest_selects_exactly_k_even_with_ties():
    from mrbench.data.masks import _largest

    keys = np.array([3, 1, 2, 2, 2, 0, -np.inf, np.inf], dtype=np.float32)
    for k, must in [(1, {7}), (2, {0, 7}), (3, {0, 7}), (4, {0, 7}), (5, {0, 2, 3, 4, 7})]:
        sel = _largest(keys, k)
        assert sel.dtype == np.float32 and sel.sum() == k
        chosen = set(np.flatnonzero(sel))
        assert must <= chosen
        assert keys[list(chosen)].min() >= np.delete(keys, list(chosen)).max()


def test_gaussian2d_matches_weighted_sampling_without_replacement():
    # The disc is always drawn; off the disc the draw follows Efraimidis–Spirakis with
    # keys log(u)/w: check the mask equals an independent argsort of those keys.
    m = make_mask("gaussian2d", 6, 0.05)
    h, w = 40, 48
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    mask = m((h, w), rng_a).mask
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    disc = yy**2 + xx**2 <= 0.05 * h * w / np.pi
    density = np.exp(-(yy**2) / (2 * (0.2 * h) ** 2) - xx**2 / (2 * (0.2 * w) ** 2))
    keys = np.log(rng_b.random(h * w, dtype=np.float32)).astype(np.float64) / density.ravel()
    keys[disc.ravel()] = np.inf
    expected = np.zeros(h * w, dtype=np.float32)
    expected[np.argsort(-keys, kind="stable")[: round(h * w / 6)]] = 1
    np.testing.assert_array_equal(mask.ravel(), expected)
