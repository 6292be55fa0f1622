"""Streaming, mergeable range observers (pure numpy).

An observer only updates statistics: ``update`` with each batch, ``merge`` with the
observer of another shard, ``result`` at the end. Memory is one value (or one per
channel) per tensor, whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MinMaxObserver", "TensorRange"]


@dataclass(frozen=True)
class TensorRange:
    """Observed range of one tensor: scalars, or one value per index of ``axis``."""

    min: npt.NDArray[np.float32]
    max: npt.NDArray[np.float32]
    axis: int | None = None

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

    def update(self, x: np.ndarray) -> None:
        arr = np.asarray(x, dtype=np.float32)
        if arr.size == 0:
            return
        if self.axis is None or arr.ndim == 0:
            lo, hi = arr.min(), arr.max()
        else:
            axis = self.axis % arr.ndim
            others = tuple(i for i in range(arr.ndim) if i != axis)
            lo, hi = arr.min(axis=others), arr.max(axis=others)
        self._min = np.minimum(self._min, lo).astype(np.float32)
        self._max = np.maximum(self._max, hi).astype(np.float32)
        self.count += 1

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
