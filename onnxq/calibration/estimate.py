"""From a calibration method to observers and from observers to clipping ranges."""

from __future__ import annotations

import math

import numpy as np

from onnxq.calibration.derived import DerivedBatch
from onnxq.calibration.histogram import Histogram, HistogramObserver
from onnxq.calibration.methods import entropy_range, mse_range, percentile_range, range_sqnrs
from onnxq.calibration.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    RangeQuality,
    TensorRange,
)
from onnxq.calibration.sampled import SampledHistogram, Sampling, edge_above
from onnxq.config import CalibrationConfig, CalibrationMethod, Scheme

__all__ = [
    "Sampling",
    "TensorObserver",
    "finish",
    "make_observer",
    "derivable",
    "sampling_for",
]

QUALITY_BINS = 512  # histogram kept beside min/max to judge how well a range fits
# about how many values of each tensor the histogram kept beside min/max bins whole (whole
# rows of a share of the batches, plus the tails of all: onnxq.calibration.sampled).
# 65,536 values put about 128 in each of the 512 bins the bulk of a tensor spans; binning
# costs about 13 times the min/max pass over the same values, so binning every value was
# most of a calibration (encoder, 64 samples: 0.39 s of 1.0 s, the forward pass 0.1 s),
# and binning batch 0 whole still most of observing (conv16, 64 samples: 8 of 9 rows
# binned were batch 0's, 0.02 s of 0.04 s)
QUALITY_VALUES = 2**16
MIN_ROWS = 2  # rows binned whole over the stream, however large a row (one would be the
# first sample's: a blank first input would stand for the whole tensor)


def sampling_for(
    x: np.ndarray | DerivedBatch, bounds: tuple[float, float] | None, batches: int
) -> Sampling:
    """The sampling of a stream of about ``batches`` batches whose batch 0 is ``x`` (with
    min and max ``bounds`` when known): about QUALITY_VALUES values in whole rows (at
    least MIN_ROWS rows), spread over the stream from batch 0 on: rows of every batch
    while the stream has fewer batches than rows wanted, else one row of every
    ``stride``-th batch. All values when that is all of them, or when batch 0 has no
    finite non-zero value to place the edge by."""
    arr = x if isinstance(x, DerivedBatch) else np.asarray(x)  # a derived one: not made
    if arr.size * max(batches, 1) <= QUALITY_VALUES or arr.ndim == 0:
        return Sampling()
    edge = edge_above(arr, bounds)
    if edge is None:
        return Sampling()
    count = max(arr.shape[0], 1)
    # rows in all, at least MIN_ROWS
    wanted = max(MIN_ROWS, math.ceil(QUALITY_VALUES * count / arr.size))
    batches = max(batches, 1)
    if wanted >= batches:
        rows = math.ceil(wanted / batches)
        return Sampling() if rows >= count else Sampling(1, edge, rows, rows * batches)
    stride = batches // wanted
    if stride == 1 and count == 1:  # every row of every batch
        return Sampling()
    return Sampling(stride, edge, 1, math.ceil(batches / stride))


class TensorObserver:
    """The statistics of one tensor: min/max (per tensor or per channel) when the method
    needs them, and always a histogram, which the range methods and the quality
    estimate read. Mergeable like its parts: observers of shards of one stream merge
    exactly when each was given the stream's sampling (:meth:`plan`)."""

    def __init__(self, config: CalibrationConfig, axis: int | None) -> None:
        self.minmax: MinMaxObserver | None = None
        if not config.method.uses_histogram:
            self.minmax = (
                MovingAverageMinMaxObserver(config.moving_average, axis)
                if config.moving_average is not None
                else MinMaxObserver(axis)
            )
        bins = config.bins if config.method.uses_histogram else QUALITY_BINS
        self.hist: HistogramObserver | SampledHistogram = HistogramObserver(bins)
        # a histogram that sets the range sees every value; one kept beside plain min/max
        # (which knows the extremes) may be sampled
        self.sampled = type(self.minmax) is MinMaxObserver
        # chosen on the first batch unless given (plan); never sampled when not allowed
        self.sampling: Sampling | None = None if self.sampled else Sampling()
        self.seen = 0  # batches

    def plan(self, sampling: Sampling, start: int = 0) -> None:
        """Sample the quality histogram as ``sampling`` says (when this observer may),
        the first batch it sees being batch ``start`` of the stream. Before any update."""
        if self.seen:
            raise ValueError("an observer's sampling is chosen before its first batch")
        self.sampling = sampling if self.sampled else Sampling()
        if not self.sampling.samples_all:
            self.hist = SampledHistogram(QUALITY_BINS, self.sampling, start=start)

    def update(
        self,
        x: np.ndarray | DerivedBatch,
        batches: int = 1,
        extremes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Observe the next of about ``batches`` batches. Min and max see every value;
        the quality histogram sees whole rows (every channel: a subsample within rows
        would miss the few outlying channels, e.g. of transformer LayerNorm and FFN
        outputs, that decide whether one scale can hold a tensor) and every value beyond
        its edge. ``extremes``: the batch's min and max (per channel when this observer's
        are), known already (a derived tensor's: onnxq.calibration.derived)."""
        bounds = None
        if self.minmax is not None:
            if extremes is not None:
                bounds = self.minmax.update_range(*extremes)
            else:
                bounds = self.minmax.update(np.asarray(x))
        if x.dtype != np.float32:  # min/max are taken in float32
            bounds = None
        if self.sampling is None:
            self.plan(sampling_for(x, bounds, batches))
        self.seen += 1
        if isinstance(self.hist, SampledHistogram):
            self.hist.update(x, bounds)
        else:
            self.hist.update(np.asarray(x), bounds)

    def merge(self, other: TensorObserver) -> None:
        """Add the observer of the next shard of the stream (shards merged in order)."""
        if self.sampling != other.sampling:
            raise ValueError("observers whose histograms are sampled differently cannot be merged")
        if self.minmax is not None and other.minmax is not None:
            self.minmax.merge(other.minmax)
        mine, theirs = self.hist, other.hist
        if isinstance(mine, SampledHistogram) and isinstance(theirs, SampledHistogram):
            mine.merge(theirs)
        elif isinstance(mine, HistogramObserver) and isinstance(theirs, HistogramObserver):
            mine.merge(theirs)
        self.seen += other.seen


def make_observer(config: CalibrationConfig, axis: int | None) -> TensorObserver:
    """The observer ``config.method`` needs (``axis`` only for min/max statistics)."""
    return TensorObserver(config, axis)


def _method_range(hist: Histogram, config: CalibrationConfig) -> tuple[float, float]:
    symmetric = config.scheme is Scheme.SYM
    if config.method is CalibrationMethod.PERCENTILE:
        return percentile_range(hist, config.percentile, symmetric=symmetric)
    if config.method is CalibrationMethod.ENTROPY:
        # codes available on the positive side: all of them for non-negative data under
        # an asymmetric scheme (zero point at the lowest code), else half
        one_sided = not symmetric and hist.min >= 0.0
        return entropy_range(hist, levels=2 ** (config.bits - (0 if one_sided else 1)))
    return mse_range(hist, config.scheme.qtype(config.bits), symmetric=symmetric)


def finish(observer: TensorObserver, config: CalibrationConfig) -> TensorRange:
    """The clipping range of one tensor, its observed range, and the quality estimate."""
    hist = observer.hist.result()
    f32 = np.float32
    if observer.minmax is not None:
        base = observer.minmax.result()
    else:
        lo, hi = _method_range(hist, config)
        base = TensorRange(np.asarray(lo, f32), np.asarray(hi, f32), None)
    return _estimated(base, hist, observer.sampled, config)


def derivable(config: CalibrationConfig) -> bool:
    """Whether a derived tensor's observer can be fed its source's batch extremes
    (:mod:`onnxq.calibration.derived`) under ``config``: plain min/max only (a moving
    average has its own per-batch state; a method's histogram sees every value)."""
    return not config.method.uses_histogram and config.moving_average is None


def _estimated(
    base: TensorRange, hist: Histogram, sampled: bool, config: CalibrationConfig
) -> TensorRange:
    """``base`` with its observed range and the quality estimate read off ``hist``
    (``sampled``: a histogram beside plain min/max, which saw every value)."""
    f32 = np.float32
    whole = base.per_tensor() if base.axis is not None else base
    finite = bool(np.isfinite(whole.min) and np.isfinite(whole.max))
    seen = whole if sampled and finite else TensorRange(f32(hist.min), f32(hist.max))
    qtype = config.scheme.qtype(config.bits)
    symmetric = config.scheme is Scheme.SYM
    r_lo, r_hi = mse_range(hist, qtype, symmetric=symmetric)
    lows, highs = [float(whole.min), r_lo], [float(whole.max), r_hi]
    sqnr, r_sqnr = range_sqnrs(hist, lows, highs, qtype, symmetric=symmetric).tolist()
    quality = RangeQuality(sqnr, r_lo, r_hi, r_sqnr)
    return TensorRange(
        base.min,
        base.max,
        base.axis,
        observed_min=np.asarray(seen.min, f32),
        observed_max=np.asarray(seen.max, f32),
        quality=quality,
    )
