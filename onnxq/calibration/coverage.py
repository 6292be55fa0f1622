"""How much of a tensor's data a given range holds (pure numpy): the check of a ranges
file against data.

A :class:`Coverage` counts, batch by batch, the finite values of a tensor that fall
inside a fixed range ``[lo, hi]`` (per tensor, or per index of the range's axis) and
the extremes of those values. It is streaming and mergeable like the observers: merging
the coverage of two shards equals one pass over both.

The share of values inside, not the overlap of the two intervals, is what it reports: a
percentile, entropy or MSE range legitimately clips a long tail and so covers only a
small part of the observed extremes, yet nearly all of the values.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from onnxq.calibration.observers import TensorRange

__all__ = ["Coverage"]


class Coverage:
    """Values of one tensor inside the ``expected`` range (NaN and inf are counted as outside)."""

    def __init__(self, expected: TensorRange) -> None:
        self.expected = expected
        self.inside = 0
        self.total = 0
        self.min = math.inf  # of the finite values seen
        self.max = -math.inf

    def update(self, values: npt.ArrayLike) -> None:
        with np.errstate(over="ignore"):  # float64 beyond float32: inf, counted outside
            arr = np.asarray(values, np.float32)
        lo, hi = self._bounds(arr)
        with np.errstate(invalid="ignore"):
            self.inside += int(np.count_nonzero((arr >= lo) & (arr <= hi)))
        self.total += int(arr.size)
        finite = arr[np.isfinite(arr)]
        if finite.size:
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))

    def merge(self, other: Coverage) -> None:
        self.inside += other.inside
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def share(self) -> float:
        """The fraction of values inside the range (1 when none were seen)."""
        return self.inside / self.total if self.total else 1.0

    def _bounds(
        self, arr: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The range shaped to broadcast against ``arr``: per channel along the range's
        axis when the shapes fit, else its per-tensor envelope."""
        r = self.expected
        lo, hi = np.asarray(r.min, np.float32), np.asarray(r.max, np.float32)
        if r.axis is None or lo.ndim == 0:
            return lo, hi
        axis = r.axis % arr.ndim if arr.ndim else 0
        if arr.ndim == 0 or arr.shape[axis] != lo.size:
            return np.asarray(lo.min(), np.float32), np.asarray(hi.max(), np.float32)
        shape = [1] * arr.ndim
        shape[axis] = lo.size
        return lo.reshape(shape), hi.reshape(shape)
