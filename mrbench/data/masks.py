"""Under-sampling masks.

Each mask kind is a small class whose one overridable method, :meth:`MaskFunc.draw`,
draws a sampling pattern for a k-space shape from a random generator (a template
method, as in fastMRI's ``MaskFunc``). :meth:`MaskFunc.__call__` handles seeding,
padding columns and the bookkeeping every kind shares.

Kinds (docs/design.md §3):

* ``random``: fastMRI ``RandomMaskFunc``: a centre block of ``round(W·cf)``
  lines, every other line kept with probability
  ``p = (W/R − n_low) / (W − n_low)`` (expected acceleration R).
* ``equispaced``: fastMRI ``EquispacedMaskFractionFunc``: the same centre block,
  other lines equispaced at the adjusted spacing
  ``R·(n_low − W) / (n_low·R − W)`` so the acceleration is R (up to rounding).
* ``gaussian``: 1-D variable density with an exact line count ``round(W/R)``:
  the centre block plus lines drawn without replacement with a Gaussian
  density in the phase-encoding position.
* ``gaussian2d``: 2-D variable-density points (KM-MAML's second mask kind) plus a
  fully sampled centre disc of area ``cf·H·W``; exactly ``round(H·W/R)`` points.

Masks are returned as float32 arrays of shape ``(H, W)`` (1-D masks repeated
over rows) so that masks of every kind batch together.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import MrbenchError
from ..registry import Registry


@dataclass(frozen=True)
class DrawnMask:
    """A drawn mask and what the evaluation reports about it."""

    mask: np.ndarray  # float32 (H, W)
    num_low_frequencies: int

    @property
    def acceleration(self) -> float:
        """Achieved acceleration: all k-space points over the sampled ones."""
        return float(self.mask.size / max(1.0, float(self.mask.sum())))


class MaskFunc:
    """Base class: validate parameters, seed, apply padding; subclasses implement :meth:`draw`."""

    name = "base"
    two_dimensional = False

    def __init__(self, acceleration: float, center_fraction: float = 0.08):
        if not (acceleration > 1):
            raise MrbenchError(f"acceleration must be > 1, got {acceleration}")
        if not (0 < center_fraction < 1):
            raise MrbenchError(f"center_fraction must be in (0, 1), got {center_fraction}")
        if center_fraction * acceleration >= 1:
            raise MrbenchError(
                f"center_fraction {center_fraction} at acceleration {acceleration} samples "
                "more than 1/acceleration of k-space in the centre alone"
            )
        self.acceleration = float(acceleration)
        self.center_fraction = float(center_fraction)

    def __call__(
        self,
        shape: tuple[int, int],
        seed: int | np.random.Generator,
        padding: tuple[int, int] | None = None,
    ) -> DrawnMask:
        """Draw a mask for k-space of ``shape = (H, W)``.

        ``seed`` is an int (a fixed mask: validation/test) or a generator (training).
        ``padding = (left, right)`` zeroes columns outside ``[left, right)``, which are
        zero padding in real fastMRI k-space; the mask is drawn over the data columns only.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        h, w = int(shape[0]), int(shape[1])
        left, right = padding if padding is not None else (0, w)
        inner, n_low = self.draw((h, right - left), rng)
        if (left, right) == (0, w):  # no padding columns: no copy for 2-D masks
            mask = np.ascontiguousarray(inner, dtype=np.float32)
        else:
            mask = np.zeros((h, w), dtype=np.float32)
            mask[:, left:right] = inner
        return DrawnMask(mask=mask, num_low_frequencies=n_low)

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Return ``(mask (H, W) or (W,), number of low-frequency lines)``."""
        raise NotImplementedError

    # -- helpers shared by the 1-D kinds
    def num_low(self, w: int) -> int:
        return int(round(w * self.center_fraction))

    @staticmethod
    def center_block(w: int, n_low: int) -> np.ndarray:
        """fastMRI's centre block: ``pad = (W − n_low + 1) // 2``."""
        m = np.zeros(w, dtype=np.float32)
        pad = (w - n_low + 1) // 2
        m[pad : pad + n_low] = 1
        return m

    def __repr__(self) -> str:
        return f"{type(self).__name__}(acceleration={self.acceleration}, center_fraction={self.center_fraction})"


class RandomMask(MaskFunc):
    """fastMRI ``RandomMaskFunc``: Bernoulli lines outside a fully sampled centre."""

    name = "random"

    def draw(self, shape, rng):
        w = shape[1]
        n_low = self.num_low(w)
        prob = (w / self.acceleration - n_low) / (w - n_low)
        lines = np.maximum(self.center_block(w, n_low), (rng.uniform(size=w) < prob))
        return np.broadcast_to(lines, shape), n_low


class EquispacedMask(MaskFunc):
    """fastMRI ``EquispacedMaskFractionFunc``: exact acceleration with equispaced outer lines."""

    name = "equispaced"

    def draw(self, shape, rng):
        w = shape[1]
        n_low = self.num_low(w)
        r = self.acceleration
        adjusted = (r * (n_low - w)) / (n_low * r - w)
        offset = int(rng.integers(0, max(1, round(adjusted))))
        lines = self.center_block(w, n_low)
        idx = np.around(np.arange(offset, w - 1, adjusted)).astype(np.int64)
        lines[idx] = 1
        return np.broadcast_to(lines, shape), n_low


def _weighted_choice(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """float32 0/1 indicator of ``k`` distinct points drawn with probability ∝ ``weights``
    (Efraimidis–Spirakis: keys log(u)/w, the k largest)."""
    if k <= 0:
        return np.zeros(weights.size, dtype=np.float32)
    return _largest(np.log(rng.uniform(size=weights.size)) / np.maximum(weights, 1e-12), k)


def _largest(keys: np.ndarray, k: int) -> np.ndarray:
    """float32 0/1 indicator of the ``k`` largest of the 1-D ``keys``.

    A partition finds the k-th largest value and one comparison selects, written
    into the partition's buffer — cheaper than ``argpartition``'s index bookkeeping
    (2-D masks run this over H·W keys per training sample). A tie at that value
    (float32 keys can tie) falls back to ``argpartition``: exactly ``k`` are selected.
    """
    n = keys.size
    out = np.partition(keys, n - k).astype(np.float32, copy=False)
    np.greater_equal(keys, out[n - k], out=out, casting="unsafe")
    if np.count_nonzero(out) != k:
        out[:] = 0
        out[np.argpartition(keys, n - k)[n - k :]] = 1
    return out


class GaussianMask(MaskFunc):
    """1-D variable density with exactly ``round(W/R)`` lines.

    Outer lines are drawn without replacement with density
    ``exp(−x²/(2σ²))``, ``x`` the distance from the centre line and ``σ = W·sigma``.
    """

    name = "gaussian"
    sigma = 0.2  # of the width: wide enough to reach the k-space edges at R = 4..10

    def draw(self, shape, rng):
        w = shape[1]
        n_low = self.num_low(w)
        lines = self.center_block(w, n_low)
        total = int(round(w / self.acceleration))
        x = np.arange(w) - w // 2
        weights = np.exp(-(x**2) / (2 * (self.sigma * w) ** 2)) * (lines == 0)
        np.maximum(lines, _weighted_choice(rng, weights, total - n_low), out=lines)
        return np.broadcast_to(lines, shape), n_low


class Gaussian2dMask(MaskFunc):
    """2-D variable-density points plus a fully sampled centre disc.

    The disc has area ``center_fraction·H·W`` (its radius is reported as the
    number of low-frequency lines); the remaining ``round(H·W/R) − disc`` points
    are drawn without replacement with a 2-D Gaussian density (σ = ``sigma``·size
    per axis).
    """

    name = "gaussian2d"
    two_dimensional = True
    sigma = 0.2

    def draw(self, shape, rng):
        inverse, _ = self._layout(tuple(shape))
        total = int(round(shape[0] * shape[1] / self.acceleration))
        # Efraimidis–Spirakis keys log(u)/w in float32 (H·W keys per training sample):
        # +∞ on the disc (always drawn), so the `total` largest are the disc plus the draw.
        keys = rng.random(inverse.size, dtype=np.float32)
        with np.errstate(divide="ignore"):  # u = 0: key −∞, never drawn
            np.log(keys, out=keys)
        keys *= inverse
        mask = _largest(keys, total).reshape(shape)
        radius = np.sqrt(self.center_fraction * shape[0] * shape[1] / np.pi)
        return mask, int(round(2 * radius))

    @functools.lru_cache(maxsize=8)
    def _layout(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(1 / density`` as float32 with −∞ on the centre disc, the disc) for a shape
        (cached: drawn per training sample)."""
        h, w = shape
        yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
        radius = np.sqrt(self.center_fraction * h * w / np.pi)
        disc = (yy**2 + xx**2) <= radius**2
        density = np.exp(-(yy**2) / (2 * (self.sigma * h) ** 2) - xx**2 / (2 * (self.sigma * w) ** 2))
        inverse = np.where(disc, -np.inf, 1.0 / density).astype(np.float32).ravel()
        return inverse, disc


MASKS: Registry[type[MaskFunc]] = Registry("mask kind", {
    cls.name: cls for cls in (RandomMask, EquispacedMask, GaussianMask, Gaussian2dMask)
})


def make_mask(kind: str, acceleration: float, center_fraction: float = 0.08) -> MaskFunc:
    """Look a mask kind up by name; an unknown name lists the valid ones."""
    return MASKS.lookup(kind)(acceleration, center_fraction)


def volume_seed(fname: str, *salt: object) -> int:
    """Stable 63-bit seed from a file name (and e.g. the context), for fixed eval masks.

    Every method, process and machine derives the same validation/test mask of a
    volume, so all methods are scored on identical measurements.
    """
    text = "|".join([fname, *map(str, salt)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
