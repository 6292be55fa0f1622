"""A histogram of a stream that bins a bounded share of every batch and the tails of all.

Binning every value costs several times a model's inference (PP-OCR det: 24 s of 37 s;
binning a value is about 13 times the cost of the min and max pass over it), but the
quality estimate and the MSE-optimal range depend on two things: the shape of the bulk,
which a share of the values shows, and the tails (what clipping would cut), which rare
batches may hold alone (calibration data ordered by class, a few inputs with huge
activations). So:

* of every ``stride``-th batch from batch 0 on, ``rows`` rows along axis 0 are binned
  whole, spread over the rows (:func:`_picked_rows`: axis 0 may hold heads or time
  steps, not only samples), each row with every index of the other axes, so every
  channel;
* of everything else only the values with ``|x| >= edge`` are binned, ``edge`` being the
  smallest power of two above the magnitude of batch 0 (so a bin boundary of every grid
  fine enough to hold batch 0). A batch whose min and max stay inside ``(-edge, edge)`` is
  not read at all: the common case (always batch 0), as ``edge`` is at least batch 0's
  range and up to twice it. Values inside the edge are a sample of the bulk, batch 0's
  as any other's.

The result counts the tail bins exactly and scales the bulk bins of the binned share so
that their total is the number of bulk values seen (up to the rounding of each scaled bin
to a whole count). NaN and inf are never binned, as in :class:`HistogramObserver`; min and
max cover every finite value seen.

With ``stride == 1`` and all rows it is exactly :class:`HistogramObserver`. Shards of one
stream merge exactly when each is given the stream's sampling (``edge``, ``rows``,
``stride``, ``picks``: from its batch 0) and the global index of its first batch
(``start``): each batch is then binned as in one pass, and the parts the result reads
(both histograms, the bulk count, min and max) are sums and extremes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxq.calibration.derived import DerivedBatch
from onnxq.calibration.histogram import Histogram, HistogramObserver

__all__ = ["SampledHistogram", "Sampling", "edge_above"]


@dataclass(frozen=True)
class Sampling:
    """What the quality histogram of one tensor bins whole: ``rows`` rows (axis 0; None:
    all) of every ``stride``-th batch from batch 0 on (by index in the whole stream),
    spread over the rows and over the stream as ``picks`` rows in all ask
    (:func:`_picked_rows`), and of the rest the values with ``|x| >= edge`` (None: placed
    by the first batch seen, which is then binned whole). Chosen on batch 0 alone
    (:func:`onnxq.calibration.estimate.sampling_for`), so that every shard of the stream
    can be given the same choice."""

    stride: int = 1
    edge: float | None = None
    rows: int | None = None
    picks: int | None = None  # rows binned whole over the stream (None: ``rows``)

    def __post_init__(self) -> None:
        if self.stride < 1 or self.rows is not None and self.rows < 1:
            raise ValueError("stride and rows must be at least 1")

    @property
    def samples_all(self) -> bool:
        return self.stride == 1 and self.rows is None


class SampledHistogram:
    def __init__(self, bins: int, sampling: Sampling = Sampling(), *, start: int = 0) -> None:
        """``sampling``: the stream's (its edge from the stream's batch 0, else from this
        observer's first batch); ``start``: the stream index of the first batch this
        observer sees."""
        self.bins = bins
        self.sampling = sampling
        self.whole = HistogramObserver(bins)  # the share binned whole
        self.tail = HistogramObserver(bins)  # tails of the rest
        self.edge = sampling.edge
        self.bulk_skipped = 0  # values inside (-edge, edge) of the rest
        self.index = start
        self.lo, self.hi = math.inf, -math.inf  # of the rest

    def update(
        self, x: np.ndarray | DerivedBatch, bounds: tuple[float, float] | None = None
    ) -> None:
        """Observe the next batch; ``bounds`` are its min and max when known already."""
        index, self.index = self.index, self.index + 1
        # a derived batch (onnxq.calibration.derived) is made only where read
        arr = x if isinstance(x, DerivedBatch) else np.asarray(x)
        if self.sampling.samples_all or arr.size == 0 or arr.ndim == 0:
            self.whole.update(np.asarray(arr), bounds)
            return
        if self.edge is None:  # not planned: the edge from this batch, binned whole
            self.edge = edge_above(arr, bounds)
            self.whole.update(np.asarray(arr), bounds)
            return
        picked: np.ndarray | None = None
        if index % self.sampling.stride == 0:
            picked = _picked_rows(arr.shape[0], self.sampling, index)
            self.whole.update(arr[picked], bounds)  # the batch's: they hold the rows'
        if bounds is not None and -self.edge < bounds[0] and bounds[1] < self.edge:
            # nothing beyond the edge: the rest is not read
            binned = 0 if picked is None else picked.size * (arr.size // arr.shape[0])
            self.bulk_skipped += arr.size - binned
            self.lo, self.hi = min(self.lo, bounds[0]), max(self.hi, bounds[1])
            return
        if picked is None:
            rest = arr.reshape(-1)
        else:
            keep = np.ones(arr.shape[0], bool)
            keep[picked] = False
            rest = arr[keep].reshape(-1)
        if rest.size == 0:
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

    def merge(self, other: SampledHistogram) -> None:
        """Add a shard sampled with the same stride, rows and edge (see the module
        docstring)."""
        mine = (self.sampling, self.edge, self.bins)
        if mine != (other.sampling, other.edge, other.bins):
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
        if exponents:
            width = math.ldexp(1.0, max(exponents))
        else:  # only zeros binned (blank rows): the grid that holds batch 0 by the edge
            width = self.edge / self.bins if self.edge else whole.width
        # only zeros binned whole: they sit in the zero bin of any grid
        sampled = _counts_at(whole, width) if self.whole.exponent is not None else whole.counts
        beyond = _counts_at(tail, width) if self.tail.exponent is not None else 0 * sampled
        edge = self.edge
        assert edge is not None  # a batch beside the binned ones was seen: batch 0 set it
        lower = (np.arange(sampled.size, dtype=np.float64) - self.bins) * width
        in_tail = (lower >= edge) | (lower + width <= -edge)
        bulk = int(sampled[~in_tail].sum())
        scale = (bulk + self.bulk_skipped) / bulk if bulk else 1.0
        counts = np.where(in_tail, sampled, np.rint(sampled * scale).astype(np.int64)) + beyond
        lo = min(whole.min, self.lo, tail.min if self.tail.exponent is not None else math.inf)
        hi = max(whole.max, self.hi, tail.max if self.tail.exponent is not None else -math.inf)
        return Histogram(counts.astype(np.int64), width, lo, hi)


def _picked_rows(count: int, sampling: Sampling, index: int) -> np.ndarray:
    """The rows of ``count`` rows (axis 0) that ``sampling`` bins whole of the stream's
    batch ``index`` (one of every ``stride``-th), spread over the rows and over the stream:
    rows ``j · step mod count`` for the stream's running number ``j`` of a binned row,
    ``step`` the first number from ``count / picks`` up that shares no factor with
    ``count``. Axis 0 need not be the samples: an attention tensor [samples · heads, …] or
    an LSTM's [time, …] has its heads or time steps there, and consecutive rows would all
    be head 0 or the first steps; a step coprime with ``count`` visits every row, hence
    every head, in turn, and the few rows of a short stream (two, when each batch is
    large) lie apart, not both among the first samples."""
    rows = min(sampling.rows or count, count)
    step = max(1, count // max(sampling.picks or rows, rows))
    while math.gcd(step, count) != 1:
        step += 1
    first = (index // sampling.stride) * rows
    return np.asarray((np.arange(first, first + rows) * step) % count, np.intp)


def edge_above(
    x: np.ndarray | DerivedBatch, bounds: tuple[float, float] | None = None
) -> float | None:
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
