"""A histogram of a stream that bins every k-th batch whole and the tails of all batches.

Binning every value costs several times a model's inference on large activations, but
the quality estimate and the MSE-optimal range depend on two things: the shape of the
bulk, which a share of the batches shows, and the tails (what clipping would cut), which
rare batches may hold alone (calibration data ordered by class, a few inputs with huge
activations). So batch 0 and every ``stride``-th batch after it are binned whole; of the
others only the values with ``|x| >= edge`` are binned (``edge``: a power of two at or
below the magnitude that 99 % of batch 0's values stay under, hence a bin boundary of every
grid at least as fine). The result counts the tail bins exactly and scales the bulk bins
of the sampled batches so that their total is the number of bulk values seen (up to the
rounding of each scaled bin to a whole count). NaN and inf are never binned, as in
:class:`HistogramObserver`; min and max cover every finite value seen.

With ``stride == 1`` it is exactly :class:`HistogramObserver`. Shards of one stream merge
exactly when each is given the stream's ``edge`` (from its batch 0) and the global index of
its first batch (``start``): each batch is then binned whole or by its tail as in one pass,
and the parts the result reads (both histograms, the bulk count, min and max) are sums
and extremes.
"""

from __future__ import annotations

import math

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver

__all__ = ["SampledHistogram", "tail_edge"]

TAIL_SHARE = 0.01  # share of batch 0's values beyond the edge, at most


class SampledHistogram:
    def __init__(
        self, bins: int, stride: int = 1, *, edge: float | None = None, start: int = 0
    ) -> None:
        """``edge``: from the stream's batch 0 (else from this observer's first batch);
        ``start``: the stream index of the first batch this observer sees."""
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self.bins = bins
        self.stride = stride
        self.whole = HistogramObserver(bins)  # batches binned whole
        self.tail = HistogramObserver(bins)  # tails of the other batches
        self.edge = edge
        self.bulk_skipped = 0  # values inside (-edge, edge) of the batches not binned whole
        self.index = start
        self.lo, self.hi = math.inf, -math.inf  # of the batches not binned whole

    def update(self, x: np.ndarray, bounds: tuple[float, float] | None = None) -> None:
        """Observe the next batch; ``bounds`` are its min and max when known already."""
        index, self.index = self.index, self.index + 1
        if index % self.stride == 0 or self.edge is None:  # also when batch 0 was all zero
            self.whole.update(x, bounds)
            if self.stride > 1 and self.edge is None:
                self.edge = tail_edge(self.whole.result())
            return
        flat = np.asarray(x).reshape(-1)
        if bounds is not None and -self.edge <= bounds[0] and bounds[1] < self.edge:
            self.bulk_skipped += flat.size  # nothing beyond the edge
            self.lo, self.hi = min(self.lo, bounds[0]), max(self.hi, bounds[1])
            return
        # |x| >= edge also takes x == -edge, which lies in the bulk bin just above -edge:
        # binned where it belongs and not counted as skipped bulk, so totals stay exact.
        # NaN is neither inside nor binned (the tail observer drops it, and inf).
        inside = np.abs(flat) < self.edge
        self.bulk_skipped += int(np.count_nonzero(inside))
        if bounds is not None and np.isfinite(bounds).all():
            lo, hi = bounds  # no pass over the bulk: the batch's own min and max
        else:  # values beyond the edge reach min/max through the tail observer
            inner = flat[inside]
            lo, hi = (float(inner.min()), float(inner.max())) if inner.size else (self.lo, self.hi)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.tail.update(flat[~inside])

    def merge(self, other: SampledHistogram) -> None:
        """Add a shard sampled with the same stride and edge (see the module docstring)."""
        if (self.stride, self.edge) != (other.stride, other.edge) or self.bins != other.bins:
            raise ValueError("histograms sampled with different strides or edges cannot be merged")
        self.whole.merge(other.whole)
        self.tail.merge(other.tail)
        self.bulk_skipped += other.bulk_skipped
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.index = max(self.index, other.index)

    def result(self) -> Histogram:
        whole = self.whole.result()
        if self.edge is None or self.tail.exponent is None and self.bulk_skipped == 0:
            return whole  # nothing but whole batches seen
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
        lo = min(whole.min, self.lo, tail.min if self.tail.exponent is not None else math.inf)
        hi = max(whole.max, self.hi, tail.max if self.tail.exponent is not None else -math.inf)
        return Histogram(counts.astype(np.int64), width, lo, hi)


def tail_edge(hist: Histogram) -> float | None:
    """The power of two at or below the first bin edge with at most TAIL_SHARE of
    ``hist``'s magnitudes beyond it (so somewhat more may lie beyond the result)."""
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
        counts: np.ndarray = hist.counts.copy()
        return counts
    bins = hist.bins
    centers = np.arange(hist.counts.size) - bins  # bin index relative to zero
    target = np.floor_divide(centers, factor) + bins
    return np.bincount(target, weights=hist.counts, minlength=2 * bins).astype(np.int64)
