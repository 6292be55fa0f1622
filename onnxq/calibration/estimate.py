"""From a calibration method to observers and from observers to clipping ranges."""

from __future__ import annotations

import numpy as np

from onnxq.calibration.histogram import HistogramObserver
from onnxq.calibration.methods import entropy_range, mse_range, percentile_range
from onnxq.calibration.observers import MinMaxObserver, MovingAverageMinMaxObserver, TensorRange
from onnxq.config import CalibrationConfig, CalibrationMethod, Scheme

__all__ = ["Observer", "make_observer", "finish"]

Observer = MinMaxObserver | HistogramObserver


def make_observer(config: CalibrationConfig, axis: int | None) -> Observer:
    """The observer ``config.method`` needs (``axis`` only for min/max statistics)."""
    if config.method.uses_histogram:
        return HistogramObserver(config.bins)
    if config.moving_average is not None:
        return MovingAverageMinMaxObserver(config.moving_average, axis)
    return MinMaxObserver(axis)


def finish(observer: Observer, config: CalibrationConfig) -> TensorRange:
    """The clipping range of one tensor, with its observed range kept for review."""
    if isinstance(observer, MinMaxObserver):
        return observer.result()
    hist = observer.result()
    symmetric = config.scheme is Scheme.SYM
    if config.method is CalibrationMethod.PERCENTILE:
        lo, hi = percentile_range(hist, config.percentile, symmetric=symmetric)
    elif config.method is CalibrationMethod.ENTROPY:
        # codes available on the positive side: all of them for non-negative data under
        # an asymmetric scheme (zero point at the lowest code), else half
        one_sided = not symmetric and hist.min >= 0.0
        lo, hi = entropy_range(hist, levels=2 ** (config.bits - (0 if one_sided else 1)))
    else:
        lo, hi = mse_range(hist, config.scheme.qtype(config.bits), symmetric=symmetric)
    f32 = np.float32
    return TensorRange(
        np.asarray(lo, f32),
        np.asarray(hi, f32),
        None,
        observed_min=np.asarray(hist.min, f32),
        observed_max=np.asarray(hist.max, f32),
    )
