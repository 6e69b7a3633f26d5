"""The crossed seeds × volumes model behind every interval, test and verdict (docs/design.md §6).

A benchmark difference ``d[i, j]`` (method − reference, seed ``i``, test volume ``j``) has two
independent noise sources, crossed: training randomness (the seed: initialisation, data order,
the networks themselves) and test-volume sampling (which volumes the test set happens to
hold; a volume × method interaction makes some volumes favour one method)::

    d[i, j] = δ + a[i] + b[j] + e[i, j],   a ~ (0, σ²_seed), b ~ (0, σ²_volume), e ~ (0, σ²_resid)

the two-way random-effects ANOVA model without replication (Searle, Casella & McCulloch,
*Variance Components*, 1992, §4). Its mean over ``s`` seeds × ``v`` volumes has variance
``σ²_seed/s + σ²_volume/v + σ²_resid/(s v)``, whose unbiased estimate is
``(MS_seed + MS_volume − MS_resid)/(s v)``. We drop the ``− MS_resid`` term: the estimate
``(MS_seed + MS_volume)/(s v) = var(row means)/s + var(column means)/v`` is never negative,
over-states the variance by ``σ²_resid/(s v)`` only (conservative), and is a sum of two
independent scaled χ² terms, whose degrees of freedom follow Satterthwaite (1946) in a
conservative form (:func:`combine`) and give the t quantile. With 3 seeds and training noise dominant,
ν → 2 and t₀.₉₇₅ = 4.3: the interval is as wide as three seeds honestly allow. A percentile
bootstrap over seeds is roughly [worst seed mean, best seed mean] and undercovers there
(73 % at a 90 % seed share, 82 % at 50 %: 3 × 12, 1000 experiments simulated as in
``tests/test_statistics.py``).

The same estimator serves a *claim* that spans several cells (contexts × levels that share the
seeds' networks): the row mean of seed ``i`` averages all of the claim's cells, so whatever the
cells share through a seed is in that seed's term; each test volume enters once with its weight
in the claim's mean, and volumes are drawn independently per context (the strata), so the volume
term is ``Σ_context n_context · var(volume contributions)``. For one cell both reduce to the
formula above.

With one seed the seed term is absent: the interval covers test-volume noise only (the
tables say so).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

#: two-sided level of every interval; the one-sided tests of non-inferiority and equivalence
#: (TOST) are at α = 0.05 each, i.e. read off the 90 % interval
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A mean difference with its crossed-model standard error and Satterthwaite df.

    ``seed_var`` and ``volume_var`` are the two terms of ``se²`` (training noise / volume noise),
    kept so that :meth:`with_seeds` can project the interval to another number of seeds."""

    delta: float
    se: float
    df: float
    seeds: int
    volumes: int
    seed_var: float = 0.0
    volume_var: float = 0.0
    seed_df: float = 0.0
    volume_df: float = 0.0

    @property
    def single_seed(self) -> bool:
        return self.seeds < 2

    def _t(self, q: float) -> float:
        return float(stats.t.ppf(q, self.df)) if np.isfinite(self.df) else float(stats.norm.ppf(q))

    def interval(self, level: float = 1 - ALPHA) -> tuple[float, float]:
        if not np.isfinite(self.se):
            return float("nan"), float("nan")
        half = self._t(0.5 + level / 2) * self.se
        return self.delta - half, self.delta + half

    @property
    def lo(self) -> float:
        return self.interval()[0]

    @property
    def hi(self) -> float:
        return self.interval()[1]

    def p_greater(self, null: float = 0.0) -> float:
        """One-sided p of H0: δ ≤ null (small when the data say δ > null)."""
        if not np.isfinite(self.se):
            return float("nan")
        if self.se == 0:
            return 0.0 if self.delta > null else 1.0
        t = (self.delta - null) / self.se
        return float(stats.t.sf(t, self.df)) if np.isfinite(self.df) else float(stats.norm.sf(t))

    def p_less(self, null: float = 0.0) -> float:
        """One-sided p of H0: δ ≥ null."""
        if not np.isfinite(self.se):
            return float("nan")
        if self.se == 0:
            return 0.0 if self.delta < null else 1.0
        t = (self.delta - null) / self.se
        return float(stats.t.cdf(t, self.df)) if np.isfinite(self.df) else float(stats.norm.cdf(t))

    def p_two_sided(self, null: float = 0.0) -> float:
        p = min(self.p_greater(null), self.p_less(null))
        return float(min(1.0, 2 * p)) if np.isfinite(p) else p

    def mde(self, power: float = 0.8, alpha: float = ALPHA) -> float:
        """Minimum detectable difference: the true |δ| a two-sided test at ``alpha`` would detect
        with probability ``power`` at this standard error and df, (t₁₋α/₂ + t_power) · se."""
        if not np.isfinite(self.se):
            return float("nan")
        return (self._t(1 - alpha / 2) + self._t(power)) * self.se

    def with_seeds(self, seeds: int) -> Estimate:
        """The same experiment projected to ``seeds`` seeds: the seed term scales as 1/seeds, the
        volume term stays (it holds the residual's share at the current seeds: conservative).
        Needs at least 2 seeds measured (a single seed says nothing about training noise)."""
        if self.single_seed:
            raise ValueError("a single seed has no estimate of training noise to project")
        seed_var = self.seed_var * self.seeds / seeds
        se, df = combine([(seed_var, seeds - 1), (self.volume_var, self.volume_df)])
        return replace(self, se=se, df=df, seeds=seeds, seed_var=seed_var, seed_df=seeds - 1)


def combine(terms: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``se`` and the df of a sum of independent variance terms ``(V_k, ν_k)``; terms with
    ν_k ≤ 0 carry no information and are left out.

    The df is ``V / Σ_k V_k/ν_k``: each term's df weighted by its share of the variance,
    linearly. Satterthwaite's ``V² / Σ_k V_k²/ν_k`` weights by the squared shares and is
    estimated from the same mean squares as ``V``: when the seed term comes out small by
    chance its df rises too, and with 3 seeds its intervals cover 92.8–93.7 % (simulated,
    ``tests/test_statistics.py``). The linear form lies between ``min ν_k`` and Satterthwaite's
    and covers ≥ 94.7 % in the same simulation, for intervals 3–12 % wider (docs/design.md §6)."""
    terms = [(v, d) for v, d in terms if d > 0 and np.isfinite(v)]
    if not terms:
        return float("nan"), float("nan")
    total = sum(v for v, _ in terms)
    if total <= 0:
        return 0.0, float("inf")
    return float(np.sqrt(total)), float(total / sum(v / d for v, d in terms))


@dataclass(frozen=True)
class Cell:
    """One cell's seeds × volumes matrix of a difference (rows: the claim's seeds, in one order
    for every cell), its volumes' keys and the stratum (context) they were drawn from."""

    matrix: np.ndarray
    volumes: Sequence[Hashable]
    stratum: Hashable


def crossed(cells: Sequence[Cell]) -> Estimate:
    """The mean over ``cells`` (each weighted equally) of their mean differences, with the
    crossed model's standard error (module docstring). Every cell has the same seeds (rows)."""
    cells = [c for c in cells if np.asarray(c.matrix).size]
    if not cells:
        raise ValueError("no cells")
    s = {np.asarray(c.matrix).shape[0] for c in cells}
    if len(s) != 1:
        raise ValueError("every cell needs the same seeds")
    s = s.pop()
    n_cells = len(cells)
    rows = np.zeros(s)
    weight: dict[tuple, float] = {}  # (stratum, volume) → contribution to the claim's mean
    stratum_of: dict[tuple, Hashable] = {}
    for c in cells:
        m = np.asarray(c.matrix, dtype=np.float64)
        v = m.shape[1]
        rows += m.mean(axis=1) / n_cells
        for key, col in zip(c.volumes, m.mean(axis=0)):
            k = (c.stratum, key)
            weight[k] = weight.get(k, 0.0) + col / (n_cells * v)
            stratum_of[k] = c.stratum
    delta = float(rows.mean())
    terms = []
    seed_var = float(rows.var(ddof=1) / s) if s > 1 else 0.0
    if s > 1:
        terms.append((seed_var, s - 1))
    volume_var, volume_df = 0.0, 0.0
    for stratum in dict.fromkeys(stratum_of.values()):
        u = np.array([w for k, w in weight.items() if stratum_of[k] == stratum])
        if len(u) > 1:
            var = float(len(u) * u.var(ddof=1))
            terms.append((var, len(u) - 1))
            volume_var += var
            volume_df += len(u) - 1
    se, df = combine(terms)
    # the volume terms' own df, for projections (Satterthwaite over the strata alone)
    vdf = combine(terms[1:] if s > 1 else terms)[1] if volume_df else 0.0
    return Estimate(
        delta,
        se,
        df,
        seeds=s,
        volumes=len(weight),
        seed_var=seed_var,
        volume_var=volume_var,
        seed_df=s - 1,
        volume_df=vdf,
    )


def one_cell(matrix: np.ndarray, volumes: Sequence[Hashable] | None = None) -> Estimate:
    """:func:`crossed` for a single seeds × volumes matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    return crossed([Cell(m, list(range(m.shape[1])) if volumes is None else volumes, 0)])


def ratio(numerator: Sequence[Cell], denominator: Sequence[Cell]) -> Estimate:
    """``mean(numerator) / mean(denominator)`` over the same cells, seeds and volumes, with the
    delta method's standard error under the crossed model: the linearised matrix
    ``(N − r D) / mean(D)`` goes through :func:`crossed`. Used for the share of the
    supervised-over-zero-filled gain a method recovers; meaningful only while the denominator's
    interval stays well away from 0 (the ledger shows it)."""
    n, d = crossed(numerator), crossed(denominator)
    if d.delta == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), n.seeds, n.volumes)
    r = n.delta / d.delta
    lin = [
        Cell((np.asarray(a.matrix) - r * np.asarray(b.matrix)) / d.delta, a.volumes, a.stratum)
        for a, b in zip(numerator, denominator)
    ]
    e = crossed(lin)
    return replace(e, delta=r)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def seeds_to_resolve(estimate: Estimate, delta: float, *, power: float = 0.8, most: int = 100) -> int | None:
    """The fewest seeds (at the same test volumes) whose minimum detectable difference is at
    most ``|delta|``; None when even ``most`` seeds would not, or a single seed gives no estimate
    of training noise."""
    if estimate.single_seed or not np.isfinite(estimate.se):
        return None
    for s in range(2, most + 1):
        if estimate.with_seeds(s).mde(power) <= abs(delta):
            return s
    return None


__all__ = ["ALPHA", "Cell", "Estimate", "combine", "crossed", "holm", "one_cell", "ratio", "seeds_to_resolve"]
