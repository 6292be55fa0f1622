"""A streaming histogram on a fixed, data-independent grid (pure numpy).

The grid is symmetric around zero with ``2 * bins`` bins of width ``w = 2**k``:
bin ``i`` covers ``[(i - bins) * w, (i - bins + 1) * w)``. When a value falls outside
the grid, ``k`` grows and pairs of adjacent bins are merged; because every width is
a power of two and every grid is aligned at zero, each merge is exact. The final
counts are therefore exactly the histogram of all values on the final grid, whatever
the batch size, the order of the samples or the way shards are merged. Memory is
``2 * bins`` integers per tensor, independent of the number of samples.

``|x|`` then spans between ``bins / 2`` and ``bins`` bins of the final grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Histogram", "HistogramObserver"]


@dataclass(frozen=True)
class Histogram:
    """Counts on the grid ``edges = (arange(2 * bins + 1) - bins) * width``."""

    counts: np.ndarray  # int64, length 2 * bins
    width: float
    min: float
    max: float

    @property
    def bins(self) -> int:
        return self.counts.size // 2

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def edges(self) -> np.ndarray:
        return (np.arange(self.counts.size + 1, dtype=np.float64) - self.bins) * self.width

    def centers(self) -> np.ndarray:
        return (np.arange(self.counts.size, dtype=np.float64) - self.bins + 0.5) * self.width

    def magnitude(self) -> np.ndarray:
        """Counts of ``|x|`` on ``[j * width, (j + 1) * width)``, j = 0 .. bins - 1 (a value
        in ``[-(j + 1) w, -j w)`` has ``|x|`` in the same bin up to its lower edge)."""
        neg = self.counts[: self.bins][::-1]
        out: np.ndarray = self.counts[self.bins :] + neg
        return out


class HistogramObserver:
    """Streaming histogram with exact coarsening; see the module docstring."""

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2 or bins % 2:
            raise ValueError("bins must be an even number >= 2")
        self.bins = bins
        self.exponent: int | None = None  # grid width is 2**exponent once data is seen
        self.counts = np.zeros(2 * bins, np.int64)
        self.zeros = 0  # zeros seen before any non-zero value fixed the grid
        self.min = math.inf
        self.max = -math.inf

    def _exponent_for(self, amax: float) -> int:
        # smallest k with amax < bins * 2**k
        k = math.frexp(amax / self.bins)[1]
        while amax >= self.bins * math.ldexp(1.0, k):
            k += 1
        while k > -1074 and amax < self.bins * math.ldexp(1.0, k - 1):
            k -= 1
        return k

    def _coarsen_to(self, exponent: int) -> None:
        assert self.exponent is not None
        while self.exponent < exponent:
            # new bin j = old bins 2j - bins/2 and 2j - bins/2 + 1, for j in [bins/2, 3bins/2)
            half = self.bins // 2
            pairs = self.counts.reshape(-1, 2).sum(axis=1)  # pairs (2m, 2m+1), m = 0 .. bins-1
            new = np.zeros_like(self.counts)
            new[half : half + self.bins] = pairs
            self.counts = new
            self.exponent += 1

    def update(self, x: np.ndarray, bounds: tuple[float, float] | None = None) -> None:
        """Bin ``x``; ``bounds`` are its min and max when the caller knows them already."""
        arr = np.asarray(x)
        if arr.size == 0:
            return
        lo, hi = bounds if bounds is not None else (float(arr.min()), float(arr.max()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            arr = arr[np.isfinite(arr)]  # inf / nan cannot be binned; min and max keep them
            if arr.size == 0:
                return
            lo, hi = float(arr.min()), float(arr.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(abs(lo), abs(hi))
        if amax == 0.0:
            if self.exponent is None:
                self.zeros += arr.size
            else:
                self.counts[self.bins] += arr.size
            return
        needed = self._exponent_for(amax)
        if self.exponent is None:
            self.exponent = needed
            self.counts[self.bins] += self.zeros
            self.zeros = 0
        elif needed > self.exponent:
            self._coarsen_to(needed)
        self.counts += np.bincount(self._indices(arr), minlength=2 * self.bins)

    def _indices(self, x: np.ndarray) -> np.ndarray:
        """Bin of each value: ``floor(x / 2**k) + bins``. Scaling by a power of two is
        exact, so float32 arithmetic gives the exact bin when the factor fits float32."""
        assert self.exponent is not None
        factor = math.ldexp(1.0, -self.exponent)
        if np.asarray(x).dtype == np.float32 and factor < 2.0**120:
            flat = np.asarray(x).reshape(-1)
            y = np.multiply(flat, np.float32(factor))
            if factor < 1.0:  # a tiny negative value may underflow to -0: its floor is -1
                y[(y == 0) & (flat < 0)] = -1.0
        else:
            y = np.ldexp(np.asarray(x, dtype=np.float64).reshape(-1), -self.exponent)
        np.floor(y, out=y)
        y += self.bins
        out: np.ndarray = y.astype(np.intp)
        return out

    def merge(self, other: HistogramObserver) -> None:
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        if other.exponent is None:
            if self.exponent is None:
                self.zeros += other.zeros
            else:
                self.counts[self.bins] += other.zeros
            return
        theirs = other.counts.copy()
        if self.exponent is None:
            self.exponent, self.counts = other.exponent, theirs
            self.counts[self.bins] += self.zeros
            self.zeros = 0
            return
        target = max(self.exponent, other.exponent)
        self._coarsen_to(target)
        helper = HistogramObserver(self.bins)
        helper.exponent, helper.counts = other.exponent, theirs
        helper._coarsen_to(target)
        self.counts += helper.counts

    def result(self) -> Histogram:
        counts = self.counts.copy()
        if self.exponent is None:  # only zeros (or nothing) seen
            counts[self.bins] += self.zeros
            width = 1.0
        else:
            width = math.ldexp(1.0, self.exponent)
        lo = self.min if math.isfinite(self.min) else 0.0
        hi = self.max if math.isfinite(self.max) else 0.0
        return Histogram(counts, width, lo, hi)
