"""From a calibration method to observers and from observers to clipping ranges."""

from __future__ import annotations

import math

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver
from onnxq.calibration.methods import entropy_range, mse_range, percentile_range, range_sqnr
from onnxq.calibration.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    RangeQuality,
    TensorRange,
)
from onnxq.calibration.sampled import SampledHistogram
from onnxq.config import CalibrationConfig, CalibrationMethod, Scheme

__all__ = ["TensorObserver", "finish", "make_observer"]

QUALITY_BINS = 512  # histogram kept beside min/max to judge how well a range fits
# about how many values of each tensor the histogram kept beside min/max bins whole (every
# k-th batch, plus the tails of all: onnxq.calibration.sampled); binning every value of a
# large model cost several times its inference (PP-OCR det: 24 s of 37 s)
QUALITY_VALUES = 2**24


class TensorObserver:
    """The statistics of one tensor: min/max (per tensor or per channel) when the method
    needs them, and always a histogram, which the range methods and the quality
    estimate read. Mergeable like its parts while the histogram is not sampled."""

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
        self.seen = 0  # batches

    def update(self, x: np.ndarray, batches: int = 1) -> None:
        """Observe the next of about ``batches`` batches (whole tensors, never a subsample
        of one: that would miss the few outlying channels, e.g. of transformer LayerNorm
        and FFN outputs, that decide whether one scale can hold a tensor)."""
        bounds = self.minmax.update(x) if self.minmax is not None else None
        if np.asarray(x).dtype != np.float32:  # min/max are taken in float32
            bounds = None
        if self.seen == 0 and self.sampled:
            stride = math.ceil(np.size(x) * batches / QUALITY_VALUES)
            if stride > 1:
                self.hist = SampledHistogram(QUALITY_BINS, stride)
        self.seen += 1
        self.hist.update(x, bounds)

    def merge(self, other: TensorObserver) -> None:
        mine, theirs = self.hist, other.hist
        if not (isinstance(mine, HistogramObserver) and isinstance(theirs, HistogramObserver)):
            raise ValueError("observers with a sampled histogram cannot be merged")
        if self.minmax is not None and other.minmax is not None:
            self.minmax.merge(other.minmax)
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
    whole = base.per_tensor() if base.axis is not None else base
    finite = bool(np.isfinite(whole.min) and np.isfinite(whole.max))
    seen = whole if observer.sampled and finite else TensorRange(f32(hist.min), f32(hist.max))
    qtype = config.scheme.qtype(config.bits)
    symmetric = config.scheme is Scheme.SYM
    sqnr = range_sqnr(hist, float(whole.min), float(whole.max), qtype, symmetric=symmetric)
    r_lo, r_hi = mse_range(hist, qtype, symmetric=symmetric)
    r_sqnr = range_sqnr(hist, r_lo, r_hi, qtype, symmetric=symmetric)
    quality = RangeQuality(sqnr, r_lo, r_hi, r_sqnr)
    return TensorRange(
        base.min,
        base.max,
        base.axis,
        observed_min=np.asarray(seen.min, f32),
        observed_max=np.asarray(seen.max, f32),
        quality=quality,
    )
