"""Clipping ranges of weights, computed from the weights themselves (pure numpy)."""

from __future__ import annotations

import numpy as np

from onnxq.quant.qparams import compute_qparams, dequantize, quantize
from onnxq.quant.qtypes import QType

__all__ = ["weight_range"]


def _moved(w: np.ndarray, axis: int | None) -> np.ndarray:
    """``w`` as rows: one row per channel of ``axis`` (a single row when None)."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def weight_range(
    w: np.ndarray,
    axis: int | None,
    method: str,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
    percentile: float = 99.99,
    grid: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor (``axis=None``, scalars) or per-channel (1-D) clipping range of ``w``.

    * ``minmax``: the extremes.
    * ``percentile``: the ``percentile`` of ``|w|`` (symmetric) or the ``100 - p`` and
      ``p`` percentiles (asymmetric), per channel.
    * ``mse``: per channel, the range ``s · [min, max]`` (``s`` on a geometric grid of
      ``grid`` values in [0.01, 1]) minimising Σ (w - dequantize(quantize(w)))² exactly.
    """
    rows = _moved(np.asarray(w, np.float32), axis)
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    if method == "percentile":
        if symmetric:
            hi = np.percentile(np.abs(rows), percentile, axis=1)
            lo = -hi
        else:
            lo = np.percentile(rows, 100.0 - percentile, axis=1)
            hi = np.percentile(rows, percentile, axis=1)
    elif method == "mse":
        lo, hi = _mse_rows(rows, lo, hi, qtype, symmetric, restricted, grid)
    elif method != "minmax":
        raise ValueError(f"unknown weight method {method!r}")
    lo, hi = lo.astype(np.float32), hi.astype(np.float32)
    return (lo[0], hi[0]) if axis is None else (lo, hi)


def _mse_rows(
    rows: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    qtype: QType,
    symmetric: bool,
    restricted: bool,
    grid: int,
) -> tuple[np.ndarray, np.ndarray]:
    best_err = np.full(rows.shape[0], np.inf)
    best_lo, best_hi = lo.copy(), hi.copy()
    for s in np.geomspace(0.01, 1.0, grid):
        qp = compute_qparams(
            lo * s, hi * s, qtype, symmetric=symmetric, restricted=restricted, axis=0
        )
        err = np.sum((dequantize(quantize(rows, qp), qp) - rows) ** 2, axis=1, dtype=np.float64)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_lo = np.where(better, lo * s, best_lo)
        best_hi = np.where(better, hi * s, best_hi)
    return best_lo, best_hi
