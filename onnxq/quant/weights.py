"""Clipping ranges and qparams of weights, computed from the weights themselves
(pure numpy). Granularity is only how values are grouped into rows that share one
range; the qparams formula is the same for all."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from onnxq.quant.methods import CalibrationMethod, Granularity
from onnxq.quant.qparams import QParams, compute_qparams, dequantize, quantize
from onnxq.quant.qtypes import QType

__all__ = [
    "SLAB_BYTES",
    "WeightLayout",
    "in_slabs",
    "slab_axis",
    "slicer",
    "weight_qparams",
    "weight_range",
]

SLAB_BYTES = 16 * 2**20  # float32 bytes of a weight quantized at once by in_slabs


@dataclass(frozen=True)
class WeightLayout:
    """How a weight's values are grouped into ranges.

    * ``Granularity.TENSOR``: one range;
    * ``CHANNEL``: one per index of ``axis`` (the output channel);
    * ``GROUP``: one per ``size`` consecutive indices of ``axis``; a last, partial
      group is allowed (its scale is still written once per channel);
    * ``BLOCK``: one per ``size`` consecutive values along ``axis`` (the reduction
      axis) for every index of the other axes; a last, partial block is allowed.
    """

    kind: Granularity = Granularity.TENSOR
    axis: int | None = None
    size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Granularity(self.kind))  # also from its spelling


def _rows(w: np.ndarray, layout: WeightLayout) -> tuple[np.ndarray, tuple[int, ...]]:
    """``w`` as rows, one per range, and the shape the per-row values take.

    Partial groups and blocks are padded by repeating their last slice, which leaves
    min and max unchanged."""
    if layout.kind is Granularity.TENSOR or layout.axis is None:
        return w.reshape(1, -1), ()
    axis = layout.axis % w.ndim
    moved = np.moveaxis(w, axis, 0)
    if layout.kind is Granularity.CHANNEL:
        return moved.reshape(moved.shape[0], -1), (moved.shape[0],)
    if layout.kind is Granularity.GROUP:
        c, g = moved.shape[0], layout.size
        groups = math.ceil(c / g)
        padded = np.concatenate([moved, np.repeat(moved[-1:], groups * g - c, axis=0)])
        return padded.reshape(groups, -1), (groups,)
    if layout.kind is Granularity.BLOCK:
        last = np.moveaxis(w, axis, -1)
        d, b = last.shape[-1], layout.size
        blocks = math.ceil(d / b)
        pad = np.repeat(last[..., -1:], blocks * b - d, axis=-1)
        padded = np.concatenate([last, pad], axis=-1)
        return padded.reshape(-1, b), (*last.shape[:-1], blocks)
    raise ValueError(f"unknown layout {layout.kind!r}")


def _to_param_shape(
    values: np.ndarray, shape: tuple[int, ...], layout: WeightLayout, ndim: int
) -> np.ndarray:
    """Per-row values in the shape of the ONNX scale: scalar, 1-D per channel (groups
    repeated per channel), or the tensor's shape with the block axis cut in blocks."""
    if not shape:
        return values.reshape(())
    arr = values.reshape(shape)
    if layout.kind is Granularity.GROUP:
        return arr  # expanded to channels by the caller, who knows the channel count
    if layout.kind is Granularity.BLOCK:
        return np.moveaxis(arr, -1, layout.axis % ndim)  # type: ignore[operator]
    return arr


def weight_range(
    w: np.ndarray,
    layout: WeightLayout,
    method: CalibrationMethod,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
    percentile: float = 99.99,
    grid: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    """Clipping range of every row of ``w`` under ``layout`` (flat arrays, one per row).

    * ``minmax``: the extremes.
    * ``percentile``: the ``percentile`` of ``|w|`` (symmetric) or the ``100 - p`` and
      ``p`` percentiles (asymmetric), per row.
    * ``mse``: per row, the range ``s · [min, max]`` (``s`` on a geometric grid of
      ``grid`` values in [0.01, 1]) minimising Σ (w - dequantize(quantize(w)))² exactly.
    """
    rows, _ = _rows(np.asarray(w, np.float32), layout)
    method = CalibrationMethod(method)
    return _row_ranges(rows, method, qtype, symmetric, restricted, percentile, grid)


def _row_ranges(
    rows: np.ndarray,
    method: CalibrationMethod,
    qtype: QType,
    symmetric: bool,
    restricted: bool,
    percentile: float,
    grid: int = 48,
) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    if method is CalibrationMethod.PERCENTILE:
        if symmetric:
            hi = np.percentile(np.abs(rows), percentile, axis=1)
            lo = -hi
        else:
            lo = np.percentile(rows, 100.0 - percentile, axis=1)
            hi = np.percentile(rows, percentile, axis=1)
    elif method is CalibrationMethod.MSE:
        lo, hi = _mse_rows(rows, lo, hi, qtype, symmetric, restricted, grid)
    elif method is not CalibrationMethod.MINMAX:
        raise ValueError(f"unknown weight method {method!r}")
    return lo.astype(np.float32), hi.astype(np.float32)


def weight_qparams(
    w: np.ndarray,
    layout: WeightLayout,
    method: CalibrationMethod,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
    percentile: float = 99.99,
) -> QParams:
    """QParams of ``w`` under ``layout``, shaped as ONNX's (De)QuantizeLinear takes them:
    scalar (tensor), 1-D along ``axis`` (channel, group) or blocked (block)."""
    arr = np.asarray(w, np.float32)
    rows, shape = _rows(arr, layout)
    method = CalibrationMethod(method)
    lo, hi = _row_ranges(rows, method, qtype, symmetric, restricted, percentile)
    lo_s = _to_param_shape(lo, shape, layout, arr.ndim)
    hi_s = _to_param_shape(hi, shape, layout, arr.ndim)
    if layout.kind is Granularity.GROUP:
        channels = arr.shape[layout.axis % arr.ndim]  # type: ignore[operator]
        lo_s = np.repeat(lo_s, layout.size)[:channels]
        hi_s = np.repeat(hi_s, layout.size)[:channels]
    axis = (
        None if layout.kind is Granularity.TENSOR or layout.axis is None else layout.axis % arr.ndim
    )
    block = layout.size if layout.kind is Granularity.BLOCK else None
    return compute_qparams(
        lo_s, hi_s, qtype, symmetric=symmetric, restricted=restricted, axis=axis, block_size=block
    )


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


def slab_axis(layout: WeightLayout, ndim: int) -> int | None:
    """The axis along which a weight splits into slabs whose qparams and codes do not
    depend on one another: the channel axis (``CHANNEL``), the first axis (``BLOCK``; cut
    at whole blocks when it is the block axis); None when one range spans every index of
    every axis (``TENSOR``, ``GROUP``). Axis 0 is contiguous in the stored tensor, so a
    slab of it can be read from a file on its own."""
    if layout.axis is None or ndim == 0:
        return None
    if layout.kind is Granularity.CHANNEL:
        return layout.axis % ndim
    if layout.kind is Granularity.BLOCK:
        return 0
    return None


def in_slabs(
    shape: tuple[int, ...],
    layout: WeightLayout,
    read: Callable[[int, int], np.ndarray],
    quantize_slab: Callable[[np.ndarray], tuple[np.ndarray, QParams]],
    max_bytes: int = SLAB_BYTES,
) -> tuple[np.ndarray, QParams]:
    """``quantize_slab(w)`` of the weight ``w`` of ``shape``, computed slab by slab along
    :func:`slab_axis` when ``w`` holds more than ``max_bytes`` as float32. ``read(start,
    stop)`` returns indices ``start:stop`` of that axis (all of ``w`` with ``(0, n)``), so
    neither ``w`` nor the temporaries of quantizing it are held whole. The codes and
    qparams are those of the whole (each range lies inside one slab); per-channel scales
    join along their one axis, blocked scales along the slab axis."""
    axis = slab_axis(layout, len(shape))
    size = math.prod(shape)
    if axis is None or size * 4 <= max_bytes or shape[axis] < 2:
        whole = shape[0 if axis is None else axis] if shape else 0
        return quantize_slab(read(0, whole))
    step = max(1, max_bytes // (size // shape[axis] * 4))
    if (
        layout.kind is Granularity.BLOCK
        and layout.axis is not None
        and layout.axis % len(shape) == 0
    ):
        step = max(layout.size, step // layout.size * layout.size)  # whole blocks only
    codes, scales, zeros = [], [], []
    qp: QParams | None = None
    for start in range(0, shape[axis], step):
        c, qp = quantize_slab(read(start, min(start + step, shape[axis])))
        codes.append(c)
        scales.append(qp.scale)
        zeros.append(qp.zero_point)
    assert qp is not None  # at least one slab
    joint = 0 if layout.kind is Granularity.CHANNEL else axis
    return np.concatenate(codes, axis=axis), replace(
        qp, scale=np.concatenate(scales, axis=joint), zero_point=np.concatenate(zeros, axis=joint)
    )


def slicer(w: np.ndarray, axis: int | None) -> Callable[[int, int], np.ndarray]:
    """``read`` for :func:`in_slabs` over an array held in memory (all of it when there
    is no slab axis)."""
    if axis is None or w.ndim == 0:
        return lambda start, stop: w
    return lambda start, stop: np.take(w, np.arange(start, stop), axis=axis)
