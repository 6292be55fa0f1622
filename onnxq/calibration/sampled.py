"""A histogram of a stream that bins every k-th batch whole and the tails of all batches.

Binning every value costs several times a model's inference on large activations, but
the quality estimate and the MSE-optimal range depend on two things: the shape of the
bulk, which a share of the batches shows, and the tails (what clipping would cut), which
rare batches may hold alone (calibration data ordered by class, a few inputs with huge
activations). So batch 0 and every ``stride``-th batch after it are binned whole; of the
others only the values beyond ``edge`` are binned (``x >= edge`` or ``x < -edge``; ``edge``
a power of two beyond about 99 % of batch 0's magnitudes, hence a bin boundary of every
grid at least as fine). The result counts the tail bins exactly and scales the bulk bins
of the sampled batches so that their total is the exact number of bulk values seen.

With ``stride == 1`` it is exactly :class:`HistogramObserver`. Not mergeable once
sampled (the edges of two streams differ).
"""

from __future__ import annotations

import math

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver

__all__ = ["SampledHistogram"]

TAIL_SHARE = 0.01  # share of batch 0's values beyond the edge, at most


class SampledHistogram:
    def __init__(self, bins: int, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self.bins = bins
        self.stride = stride
        self.whole = HistogramObserver(bins)  # batches binned whole
        self.tail = HistogramObserver(bins)  # tails of the other batches
        self.edge: float | None = None
        self.bulk_skipped = 0  # values inside (-edge, edge) of the batches not binned whole
        self.index = 0

    def update(self, x: np.ndarray, bounds: tuple[float, float] | None = None) -> None:
        """Observe the next batch; ``bounds`` are its min and max when known already."""
        index, self.index = self.index, self.index + 1
        if index % self.stride == 0 or self.edge is None:  # also when batch 0 was all zero
            self.whole.update(x, bounds)
            if self.stride > 1 and self.edge is None:
                self.edge = _edge(self.whole.result())
            return
        flat = np.asarray(x).reshape(-1)
        if bounds is not None and -self.edge <= bounds[0] and bounds[1] < self.edge:
            self.bulk_skipped += flat.size  # nothing beyond the edge
            return
        # |x| >= edge also takes x == -edge, which lies in the bulk bin just above -edge:
        # binned where it belongs and not counted as skipped bulk, so totals stay exact
        beyond = flat[np.abs(flat) >= self.edge]
        self.bulk_skipped += flat.size - beyond.size
        self.tail.update(beyond)

    def merge(self, other: SampledHistogram) -> None:
        if self.stride > 1 or other.stride > 1:
            raise ValueError("sampled histograms cannot be merged")
        self.whole.merge(other.whole)
        self.index += other.index

    def result(self) -> Histogram:
        whole = self.whole.result()
        if self.edge is None or self.tail.exponent is None and self.bulk_skipped == 0:
            return whole
        tail = self.tail.result()
        exponent = max(e for e in (self.whole.exponent, self.tail.exponent) if e is not None)
        width = math.ldexp(1.0, exponent)
        sampled = _counts_at(whole, width)
        beyond = _counts_at(tail, width) if self.tail.exponent is not None else 0 * sampled
        lower = (np.arange(sampled.size, dtype=np.float64) - self.bins) * width
        in_tail = (lower >= self.edge) | (lower + width <= -self.edge)
        bulk = int(sampled[~in_tail].sum())
        scale = (bulk + self.bulk_skipped) / bulk if bulk else 1.0
        counts = np.where(in_tail, sampled, np.rint(sampled * scale).astype(np.int64)) + beyond
        lo = min(whole.min, tail.min) if self.tail.exponent is not None else whole.min
        hi = max(whole.max, tail.max) if self.tail.exponent is not None else whole.max
        return Histogram(counts.astype(np.int64), width, lo, hi)


def _edge(hist: Histogram) -> float | None:
    """The smallest power of two with at most TAIL_SHARE of ``hist`` beyond it."""
    total = hist.total
    if total == 0 or hist.max <= 0 and hist.min >= 0:
        return None
    mag = hist.magnitude()  # |x| in [j w, (j + 1) w)
    beyond = total - np.cumsum(mag)  # values with |x| >= (j + 1) w
    j = int(np.argmax(beyond <= TAIL_SHARE * total))  # first such j
    return 2.0 ** math.floor(math.log2((j + 1) * hist.width))


def _counts_at(hist: Histogram, width: float) -> np.ndarray:
    """``hist``'s counts on the grid of bin width ``width`` (a power-of-two multiple)."""
    factor = int(round(width / hist.width))
    if factor == 1:
        return hist.counts.copy()
    bins = hist.bins
    centers = np.arange(hist.counts.size) - bins  # bin index relative to zero
    target = np.floor_divide(centers, factor) + bins
    return np.bincount(target, weights=hist.counts, minlength=2 * bins).astype(np.int64)
