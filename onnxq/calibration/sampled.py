"""A histogram of a stream that bins a bounded share of every batch and the tails of all.

Binning every value costs several times a model's inference (PP-OCR det: 24 s of 37 s;
binning a value is about 13 times the cost of the min and max pass over it), but the
quality estimate and the MSE-optimal range depend on two things: the shape of the bulk,
which a share of the values shows, and the tails (what clipping would cut), which rare
batches may hold alone (calibration data ordered by class, a few inputs with huge
activations). So:

* of batch 0 and every ``stride``-th batch after it, the first ``rows`` rows along axis 0
  are binned whole (a prefix of the flattened batch: every index of the other axes, so
  every channel, is in it; all rows when ``rows`` is None);
* of everything else only the values with ``|x| >= edge`` are binned, ``edge`` being the
  smallest power of two above the magnitude of batch 0 (so a bin boundary of every grid
  fine enough to hold batch 0). A batch whose min and max stay inside ``(-edge, edge)`` is
  not read at all: the common case, as ``edge`` is at least batch 0's range and up to
  twice it.

The result counts the tail bins exactly and scales the bulk bins of the binned share so
that their total is the number of bulk values seen (up to the rounding of each scaled bin
to a whole count). NaN and inf are never binned, as in :class:`HistogramObserver`; min and
max cover every finite value seen.

With ``stride == 1`` and all rows it is exactly :class:`HistogramObserver`. Shards of one
stream merge exactly when each is given the stream's ``edge`` and ``rows`` (from its batch
0) and the global index of its first batch (``start``): each batch is then binned as in
one pass, and the parts the result reads (both histograms, the bulk count, min and max)
are sums and extremes.
"""

from __future__ import annotations

import math

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver

__all__ = ["SampledHistogram", "edge_above"]


class SampledHistogram:
    def __init__(
        self,
        bins: int,
        stride: int = 1,
        *,
        rows: int | None = None,
        edge: float | None = None,
        start: int = 0,
    ) -> None:
        """``rows``: rows of a sampled batch binned whole (None: all); ``edge``: from the
        stream's batch 0 (else from this observer's first batch); ``start``: the stream
        index of the first batch this observer sees."""
        if stride < 1 or rows is not None and rows < 1:
            raise ValueError("stride and rows must be at least 1")
        self.bins = bins
        self.stride = stride
        self.rows = rows
        self.whole = HistogramObserver(bins)  # the share binned whole
        self.tail = HistogramObserver(bins)  # tails of the rest
        self.edge = edge
        self.bulk_skipped = 0  # values inside (-edge, edge) of the rest
        self.index = start
        self.lo, self.hi = math.inf, -math.inf  # of the rest

    @property
    def samples_all(self) -> bool:
        return self.stride == 1 and self.rows is None

    def update(self, x: np.ndarray, bounds: tuple[float, float] | None = None) -> None:
        """Observe the next batch; ``bounds`` are its min and max when known already."""
        index, self.index = self.index, self.index + 1
        arr = np.asarray(x)
        if self.samples_all or arr.size == 0:
            self.whole.update(arr, bounds)
            return
        if self.edge is None:  # the stream's batch 0 (when not planned): set the edge
            self.edge = edge_above(arr, bounds)
            if self.edge is None:  # nothing but zeros (or nothing finite): no tail to keep
                self.whole.update(arr, bounds)
                return
        flat = arr.reshape(-1)
        binned = 0
        if index % self.stride == 0:
            binned = flat.size if self.rows is None or arr.ndim == 0 else self._prefix(arr)
            self.whole.update(flat[:binned])
        rest = flat[binned:]
        if rest.size == 0:
            return
        if bounds is not None and -self.edge < bounds[0] and bounds[1] < self.edge:
            self.bulk_skipped += rest.size  # nothing beyond the edge
            self.lo, self.hi = min(self.lo, bounds[0]), max(self.hi, bounds[1])
            return
        # |x| >= edge also takes x == -edge, which lies in the bulk bin just above -edge:
        # binned where it belongs and not counted as skipped bulk, so totals stay exact.
        # NaN is neither inside nor binned (the tail observer drops it, and inf).
        inside = np.abs(rest) < self.edge
        self.bulk_skipped += int(np.count_nonzero(inside))
        if bounds is not None and np.isfinite(bounds).all():
            lo, hi = bounds  # no pass over the bulk: the batch's own min and max
        else:  # values beyond the edge reach min/max through the tail observer
            inner = rest[inside]
            lo, hi = (float(inner.min()), float(inner.max())) if inner.size else (self.lo, self.hi)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.tail.update(rest[~inside])

    def _prefix(self, arr: np.ndarray) -> int:
        assert self.rows is not None
        return int(min(self.rows, arr.shape[0]) * (arr.size // max(arr.shape[0], 1)))

    def merge(self, other: SampledHistogram) -> None:
        """Add a shard sampled with the same stride, rows and edge (see the module
        docstring)."""
        mine = (self.stride, self.rows, self.edge, self.bins)
        if mine != (other.stride, other.rows, other.edge, other.bins):
            raise ValueError("histograms sampled with different strides or edges cannot be merged")
        self.whole.merge(other.whole)
        self.tail.merge(other.tail)
        self.bulk_skipped += other.bulk_skipped
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.index = max(self.index, other.index)

    def result(self) -> Histogram:
        whole = self.whole.result()
        if self.tail.exponent is None and self.bulk_skipped == 0 and math.isinf(self.lo):
            return whole  # nothing but whole batches seen
        tail = self.tail.result()
        exponents = [e for e in (self.whole.exponent, self.tail.exponent) if e is not None]
        width = math.ldexp(1.0, max(exponents)) if exponents else whole.width
        sampled = _counts_at(whole, width)
        beyond = _counts_at(tail, width) if self.tail.exponent is not None else 0 * sampled
        edge = self.edge if self.edge is not None else math.inf
        lower = (np.arange(sampled.size, dtype=np.float64) - self.bins) * width
        in_tail = (lower >= edge) | (lower + width <= -edge)
        bulk = int(sampled[~in_tail].sum())
        scale = (bulk + self.bulk_skipped) / bulk if bulk else 1.0
        counts = np.where(in_tail, sampled, np.rint(sampled * scale).astype(np.int64)) + beyond
        lo = min(whole.min, self.lo, tail.min if self.tail.exponent is not None else math.inf)
        hi = max(whole.max, self.hi, tail.max if self.tail.exponent is not None else -math.inf)
        return Histogram(counts.astype(np.int64), width, lo, hi)


def edge_above(x: np.ndarray, bounds: tuple[float, float] | None = None) -> float | None:
    """The smallest power of two above the largest finite magnitude of ``x`` (None when
    it has no finite non-zero value); ``bounds``: its min and max when known."""
    if bounds is None or not np.isfinite(bounds).all():
        arr = np.asarray(x)
        arr = arr[np.isfinite(arr)] if arr.size else arr
        if arr.size == 0:
            return None
        bounds = (float(arr.min()), float(arr.max()))
    amax = max(abs(bounds[0]), abs(bounds[1]))
    if amax == 0.0:
        return None
    return math.ldexp(1.0, math.frexp(amax)[1])  # 2**e > amax = m 2**e, 0.5 <= m < 1


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
