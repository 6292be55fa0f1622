"""Per-channel statistics folded batch by batch: each tensor's rows (one row per position,
one column per channel of its axis) reduced per column and merged across batches (bias
correction's input means, equalisation's channel statistics). Pure numpy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxq.calibration.positions import rows_at

__all__ = ["ChannelFolder", "Fold", "Moments", "Sum"]


class ChannelFolder:
    """``fold`` of each tensor's rows (one row per position, one column per channel of
    ``axes[name]``) over the batches added, and the rows counted."""

    def __init__(self, axes: Mapping[str, int], fold: Fold) -> None:
        self.axes = dict(axes)
        self.fold = fold
        self.acc: dict[str, tuple[np.ndarray, int]] = {}

    def add(self, values: Mapping[str, np.ndarray], real: np.ndarray | None = None) -> None:
        """Fold one batch; ``real``: its real positions (:mod:`onnxq.calibration.positions`),
        the only rows folded of the tensors laid out by position."""
        for name, axis in self.axes.items():
            arr = np.asarray(values[name])
            if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.floating):
                continue
            axis %= arr.ndim
            rows = rows_at(arr, axis, real)
            if rows is None:
                part = self.fold.reduce(arr, axis)
                count = arr.size // max(arr.shape[axis], 1)
            elif rows.shape[0] == 0:  # every position padding: nothing to fold
                continue
            else:
                part, count = self.fold(np.asarray(rows, np.float64)), rows.shape[0]
            prior = self.acc.get(name)
            folded = part if prior is None else self.fold.merge(prior[0], part)
            self.acc[name] = (folded, (prior[1] if prior else 0) + count)


class Fold:
    """A per-column reduction of rows that merges across batches."""

    def reduce(self, arr: np.ndarray, axis: int) -> np.ndarray:
        """The reduction of ``arr``'s rows: one row per position, one column per index
        of ``axis`` (in float64)."""
        channels = np.moveaxis(np.asarray(arr, np.float64), axis, -1)
        return self(channels.reshape(-1, channels.shape[-1]))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Sum(Fold):
    """Column sums; inf - inf gives NaN silently (the caller drops non-finite means)."""

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(rows.sum(axis=0))

    def reduce(self, arr: np.ndarray, axis: int) -> np.ndarray:
        """Summed over the other axes in place, in float64, without a rearranged copy."""
        others = tuple(a for a in range(arr.ndim) if a != axis)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(arr.sum(axis=others, dtype=np.float64))

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(a + b)


class Moments(Fold):
    """Rows 0-3: the minimum, maximum, sum and sum of squares of each column."""

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            sums = [rows.sum(axis=0), (rows * rows).sum(axis=0)]
        return np.stack([rows.min(axis=0), rows.max(axis=0), *sums])

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            sums = [a[2] + b[2], a[3] + b[3]]
        return np.stack([np.minimum(a[0], b[0]), np.maximum(a[1], b[1]), *sums])
