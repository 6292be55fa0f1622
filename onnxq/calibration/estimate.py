"""From a calibration method to observers and from observers to clipping ranges."""

from __future__ import annotations

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver
from onnxq.calibration.methods import entropy_range, mse_range, percentile_range, range_sqnr
from onnxq.calibration.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    RangeQuality,
    TensorRange,
)
from onnxq.config import CalibrationConfig, CalibrationMethod, Scheme

__all__ = ["TensorObserver", "finish", "make_observer"]

QUALITY_BINS = 512  # histogram kept beside min/max to judge how well a range fits


class TensorObserver:
    """The statistics of one tensor: min/max (per tensor or per channel) when the method
    needs them, and always a histogram, which the range methods and the quality
    estimate read. Mergeable like its parts."""

    def __init__(self, config: CalibrationConfig, axis: int | None) -> None:
        self.minmax: MinMaxObserver | None = None
        if not config.method.uses_histogram:
            self.minmax = (
                MovingAverageMinMaxObserver(config.moving_average, axis)
                if config.moving_average is not None
                else MinMaxObserver(axis)
            )
        self.hist = HistogramObserver(config.bins if config.method.uses_histogram else QUALITY_BINS)

    def update(self, x: np.ndarray) -> None:
        if self.minmax is not None:
            self.minmax.update(x)
        # every value, also for the quality estimate: a subsample misses the few outlying
        # channels (transformer LayerNorm and FFN outputs) that decide whether one scale
        # can hold a tensor
        self.hist.update(x)

    def merge(self, other: TensorObserver) -> None:
        if self.minmax is not None and other.minmax is not None:
            self.minmax.merge(other.minmax)
        self.hist.merge(other.hist)


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
        observed_min=np.asarray(hist.min, f32),
        observed_max=np.asarray(hist.max, f32),
        quality=quality,
    )
