"""Streaming, mergeable range observers (pure numpy).

An observer only updates statistics: ``update`` with each batch, ``merge`` with the
observer of another shard, ``result`` at the end. Memory is one value (or one per
channel) per tensor, whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MinMaxObserver", "MovingAverageMinMaxObserver", "RangeQuality", "TensorRange"]


@dataclass(frozen=True)
class RangeQuality:
    """Estimated SQNR (dB) of quantizing a tensor with its range, and the MSE-optimal
    range with its SQNR, for the scheme and bit width calibrated for."""

    sqnr_db: float
    robust_min: float
    robust_max: float
    robust_sqnr_db: float


@dataclass(frozen=True)
class TensorRange:
    """Observed range of one tensor: scalars, or one value per index of ``axis``."""

    min: npt.NDArray[np.float32]
    max: npt.NDArray[np.float32]
    axis: int | None = None
    observed_min: npt.NDArray[np.float32] | None = None  # before clipping, when it differs
    observed_max: npt.NDArray[np.float32] | None = None
    quality: RangeQuality | None = None  # how well the target integer grid holds it

    def per_tensor(self) -> TensorRange:
        """The range of the whole tensor (per-channel values reduced)."""
        return TensorRange(
            np.asarray(self.min.min(), np.float32), np.asarray(self.max.max(), np.float32)
        )


class MinMaxObserver:
    """Running min and max, per tensor (``axis=None``) or per index of ``axis``.

    Starts from +inf / -inf so that merging shards is a plain element-wise min / max,
    and the result does not depend on batch size or order.
    """

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self._min: np.ndarray = np.asarray(np.inf, np.float32)
        self._max: np.ndarray = np.asarray(-np.inf, np.float32)
        self.count = 0
        # the last batch's min and max (per tensor or per channel), None before any or
        # after an empty one: a derived tensor's are read off them (onnxq.calibration.derived)
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, x: np.ndarray) -> tuple[float, float] | None:
        """Observe a batch; returns its min and max over the whole tensor (None if empty)."""
        return self.update_range(*_batch_range(x, self.axis))

    def update_range(
        self, lo: np.ndarray | None, hi: np.ndarray | None
    ) -> tuple[float, float] | None:
        """Observe a batch by its min and max (per tensor, or per index of the axis;
        None: an empty batch), kept as :attr:`last`; returns them over the whole tensor."""
        self.last = None if lo is None or hi is None else (lo, hi)
        if lo is None or hi is None:
            return None
        self._min = np.minimum(self._min, lo, dtype=np.float32)
        self._max = np.maximum(self._max, hi, dtype=np.float32)
        self.count += 1
        if lo.ndim == 0:
            return float(lo), float(hi)
        return float(lo.min()), float(hi.max())

    def merge(self, other: MinMaxObserver) -> None:
        self._min = np.minimum(self._min, other._min).astype(np.float32)
        self._max = np.maximum(self._max, other._max).astype(np.float32)
        self.count += other.count

    def result(self) -> TensorRange:
        """The observed range; a tensor never seen gives [0, 0]."""
        if self.count == 0:
            zero = np.asarray(0.0, np.float32)
            return TensorRange(zero, zero)
        axis = self.axis if self._min.ndim else None
        return TensorRange(self._min.copy(), self._max.copy(), axis)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max:
    ``m <- (1 - c) m + c · batch_min`` (the first batch sets it).

    Less sensitive to a single outlying batch than plain min/max, but by its nature
    it depends on the order and size of batches, and shards cannot be merged.
    """

    def __init__(self, constant: float, axis: int | None = None) -> None:
        super().__init__(axis)
        self.constant = constant

    def update(self, x: np.ndarray) -> tuple[float, float] | None:
        batch = MinMaxObserver(self.axis)
        extremes = batch.update(x)
        if extremes is None:
            return None
        if self.count == 0:
            self._min, self._max = batch._min, batch._max
        else:
            c = np.float32(self.constant)
            self._min = ((1 - c) * self._min + c * batch._min).astype(np.float32)
            self._max = ((1 - c) * self._max + c * batch._max).astype(np.float32)
        self.count += 1
        return extremes

    def update_range(
        self, lo: np.ndarray | None, hi: np.ndarray | None
    ) -> tuple[float, float] | None:
        raise ValueError("a moving average is fed batches, not their extremes")

    def merge(self, other: MinMaxObserver) -> None:
        raise ValueError("moving-average ranges depend on batch order and cannot be merged")


def _batch_range(x: np.ndarray, axis: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    arr = x if type(x) is np.ndarray and x.dtype == np.float32 else np.asarray(x, np.float32)
    if arr.size == 0:
        return None, None
    if axis is None or arr.ndim == 0:
        flat = arr.reshape(-1)  # the ufuncs' own reduce: no per-call dispatch of ndarray.min
        return np.minimum.reduce(flat), np.maximum.reduce(flat)
    axis = axis % arr.ndim
    others = tuple(i for i in range(arr.ndim) if i != axis)
    return arr.min(axis=others), arr.max(axis=others)
