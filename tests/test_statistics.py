"""The crossed seeds × volumes model (issue 30, item 1): intervals that cover in simulation.

Each simulated experiment is a seeds × volumes matrix of differences (method − reference)
``δ + a[seed] + b[volume] + e``: ``a`` is training randomness, ``b`` the volume × method
interaction (a volume that favours one method), ``e`` the residual. ``seed share`` is
``var(a) / var(d)``; the rest is split between ``b`` and ``e``.
"""

import numpy as np
import pytest

from mrbench.reports import statistics as S

REPS = 2000


def _experiments(rng, seeds, volumes, share, delta, reps=REPS, interaction=0.5):
    rest = 1.0 - share
    a = rng.normal(0, np.sqrt(share), (reps, seeds, 1))
    b = rng.normal(0, np.sqrt(rest * interaction), (reps, 1, volumes))
    e = rng.normal(0, np.sqrt(rest * (1 - interaction)), (reps, seeds, volumes))
    return delta + a + b + e


def _percentile_bootstrap(d, rng, n=400):
    """The old engine's interval: resample seeds and volumes, 2.5/97.5 % percentiles."""
    s, v = d.shape
    si, vi = rng.integers(0, s, (n, s)), rng.integers(0, v, (n, v))
    return np.percentile(d[si[:, :, None], vi[:, None, :]].mean(axis=(1, 2)), [2.5, 97.5])


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("share", [0.0, 0.5, 0.9])
def test_intervals_cover_and_null_differences_are_rarely_called(seeds, share):
    rng = np.random.default_rng(seeds * 100 + int(10 * share))
    truth = 0.3
    covered = np.mean(
        [lo <= truth <= hi for lo, hi in (S.one_cell(d).interval() for d in _experiments(rng, seeds, 12, share, truth))]
    )
    null = _experiments(rng, seeds, 12, share, 0.0)
    called = np.mean([not (lo <= 0 <= hi) for lo, hi in (S.one_cell(d).interval() for d in null)])
    assert covered >= 0.93, f"coverage {covered:.3f} at {seeds} seeds, seed share {share}"
    assert called <= 0.06, f"false positives {called:.3f} at {seeds} seeds, seed share {share}"
    # the tables' asterisks come from the same model: its two-sided p agrees with the interval
    p = np.array([S.one_cell(d).p_two_sided() for d in null[:300]])
    inside = np.array([S.one_cell(d).interval() for d in null[:300]])
    np.testing.assert_array_equal(p < 0.05, ~((inside[:, 0] <= 0) & (0 <= inside[:, 1])))


def test_the_old_percentile_bootstrap_fails_the_same_simulation():
    """The test can fail: with 3 seeds and training noise dominant, the bootstrap over seeds
    is about [worst seed mean, best seed mean] and undercovers."""
    rng = np.random.default_rng(3)
    covered = np.mean(
        [
            lo <= 0.3 <= hi
            for lo, hi in (_percentile_bootstrap(d, rng) for d in _experiments(rng, 3, 12, 0.9, 0.3, reps=600))
        ]
    )
    assert covered < 0.88


def test_claim_level_estimate_covers_with_cells_sharing_their_seeds():
    """Three cells (contexts) whose networks are the same per seed: a seed effect common to the
    cells plus one per cell; the claim's mean over cells must still cover."""
    rng = np.random.default_rng(11)
    hits = []
    truths = np.array([0.2, 0.5, -0.1])
    for _ in range(1500):
        common = rng.normal(0, 0.8, (3, 1))
        cells = [
            S.Cell(
                t + common + rng.normal(0, 0.3, (3, 1)) + rng.normal(0, 0.4, (1, 10)) + rng.normal(0, 0.3, (3, 10)),
                [f"v{j}" for j in range(10)],
                ctx,
            )
            for ctx, t in zip("ABC", truths)
        ]
        lo, hi = S.crossed(cells).interval()
        hits.append(lo <= truths.mean() <= hi)
    assert np.mean(hits) >= 0.93


def test_one_cell_is_the_anova_formula_and_single_seed_omits_training_noise():
    d = np.array([[1.0, 2.0, 0.5, 1.5], [0.2, 1.1, -0.4, 0.9], [1.8, 2.9, 1.2, 2.1]])
    e = S.one_cell(d)
    s, v = d.shape
    ms_seed = v * d.mean(axis=1).var(ddof=1)
    ms_vol = s * d.mean(axis=0).var(ddof=1)
    assert e.delta == pytest.approx(d.mean())
    assert e.se == pytest.approx(np.sqrt((ms_seed + ms_vol) / (s * v)))
    assert 2 <= e.df <= 5 and e.seeds == 3 and e.volumes == 4
    one = S.one_cell(d[:1])
    assert one.single_seed and one.se == pytest.approx(d[0].std(ddof=1) / 2) and one.df == 3
    # identical methods: zero difference, zero width, p = 1 — not an exception
    z = S.one_cell(np.zeros((3, 4)))
    assert z.interval() == (0.0, 0.0) and z.p_two_sided() == 1.0


def test_power_mde_and_seeds_to_resolve():
    rng = np.random.default_rng(5)
    d = _experiments(rng, 3, 12, 0.7, 0.0, reps=1)[0]
    e = S.one_cell(d)
    assert e.mde() > e.hi - e.delta  # 80 % power needs more than the half-width
    more = [e.with_seeds(k).mde() for k in (3, 5, 10, 40)]
    assert all(a > b for a, b in zip(more, more[1:]))  # more seeds, smaller detectable difference
    assert e.with_seeds(3).se == pytest.approx(e.se)
    need = S.seeds_to_resolve(e, 0.5 * e.mde())
    assert need is not None and need > 3 and e.with_seeds(need).mde() <= 0.5 * e.mde() < e.with_seeds(need - 1).mde()
    assert S.seeds_to_resolve(e, 10 * e.mde()) == 2
    assert S.seeds_to_resolve(S.one_cell(d[:1]), 0.1) is None  # one seed: no training-noise estimate


def test_ratio_interval_covers_the_share_of_gain_recovered():
    rng = np.random.default_rng(9)
    hits = []
    for _ in range(800):
        seed = rng.normal(0, 0.3, (3, 1))
        vol = rng.normal(0, 0.3, (1, 12))
        sup = 2.0 + seed + vol + rng.normal(0, 0.2, (3, 12))  # supervised − zero-filled
        ssl = 0.5 * sup + rng.normal(0, 0.2, (3, 1)) + rng.normal(0, 0.2, (3, 12))  # recovers half
        vols = [f"v{j}" for j in range(12)]
        lo, hi = S.ratio([S.Cell(ssl, vols, "A")], [S.Cell(sup, vols, "A")]).interval()
        hits.append(lo <= 0.5 <= hi)
    assert np.mean(hits) >= 0.93


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, float("nan")]
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(S.holm(p)[:3], [0.03, 0.06, 0.06])
    assert np.isnan(S.holm(p)[3])
    np.testing.assert_allclose(S.holm([0.5, 0.9]), [1.0, 1.0])
