"""Scale and zero point from a clipping range, and (de)quantization.

onnxq writes formulas in ONNX's sign convention (QuantizeLinear / DequantizeLinear)::

    q = saturate(round_half_even(r / S) + zp)        r~ = (q - zp) * S

The survey writes ``Q(r) = Int(r/S) - Z``; its ``Z`` is ``-zp``.

Granularity is only a reduction axis: ``axis=None`` gives one range for the
whole tensor, ``axis=k`` one range per index along axis ``k``. The same
function computes scale and zero point for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from onnxq.quant.qtypes import QType

__all__ = [
    "QParams",
    "broadcast_param",
    "compute_qparams",
    "dequantize",
    "observed_range",
    "quantize",
]

_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (scalars) or one per channel (1-D, ``axis``)."""

    scale: npt.NDArray[np.float32]
    zero_point: npt.NDArray[np.generic]
    qtype: QType
    axis: int | None = None
    block_size: int | None = None  # blocked: scale has the tensor's rank, axis cut in blocks
    restricted: bool = False  # codes stop at qtype.min(restricted=True)


def observed_range(
    x: npt.ArrayLike, axis: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Min and max of ``x``: scalars when ``axis`` is None, else one per index of ``axis``."""
    arr = np.asarray(x, dtype=np.float32)
    if axis is None:
        return np.asarray(arr.min(), np.float32), np.asarray(arr.max(), np.float32)
    axis = axis % arr.ndim
    others = tuple(i for i in range(arr.ndim) if i != axis)
    return arr.min(axis=others).astype(np.float32), arr.max(axis=others).astype(np.float32)


def compute_qparams(
    rmin: npt.ArrayLike,
    rmax: npt.ArrayLike,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
    axis: int | None = None,
    block_size: int | None = None,
) -> QParams:
    """Scale and zero point that map the clipping range [rmin, rmax] onto ``qtype``.

    The range is first widened to contain 0, so that zero is exactly representable
    (padding and ReLU outputs depend on it), and clamped to finite float32 values.
    With ``qmin, qmax`` the codes of ``qtype`` (``qmin`` one higher when restricted):

    * asymmetric: ``S = (rmax - rmin) / (qmax - qmin)``,
      ``zp = clip(round(qmin - rmin / S), qmin, qmax)``;
    * symmetric: ``a = max(|rmin|, |rmax|)``, ``S = 2a / (qmax - qmin)``, and
      ``zp = (qmin + qmax + 1) // 2``, the middle code (0 for signed types). Full-range
      int8 gives the survey's ``S = 2 max|r| / (2^b - 1)``; restricted int8 gives ``max|r| / 127``.

    Degenerate cases: a range of width zero (all values zero) gets ``S = 1``,
    and any scale below float32's smallest normal number is raised to it, so
    ``S`` is always a positive normal float32; a NaN bound (a tensor that held only NaN)
    counts as 0, so scale and zero point are always finite.
    """
    qmin, qmax = qtype.min(restricted=restricted), qtype.max
    lo = np.minimum(_finite_bound(rmin), 0.0)
    hi = np.maximum(_finite_bound(rmax), 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        lo, hi = -amax, amax
    width = hi - lo
    scale64 = np.where(width > 0, width / (qmax - qmin), 1.0)
    scale = np.maximum(scale64, _F32_TINY).astype(np.float32)
    if symmetric:
        zp = np.full(scale.shape, (qmin + qmax + 1) // 2)
    else:
        zp = np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax)
    return QParams(
        scale=scale,
        zero_point=zp.astype(qtype.dtype),
        qtype=qtype,
        axis=axis,
        block_size=block_size,
        restricted=restricted,
    )


def _finite_bound(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A range bound in float64, clamped to finite float32 values (NaN: 0)."""
    arr = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)
    return np.clip(arr, -_F32_MAX, _F32_MAX)


def broadcast_param(values: np.ndarray, shape: tuple[int, ...], qp: QParams) -> np.ndarray:
    """``values`` (``qp``'s scale or zero point) shaped to broadcast against ``shape``.

    Per tensor (or a scalar whatever the axis): the scalar. Per axis: [1, .., C, .., 1].
    Blocked: every block's value repeated over its block along ``qp.axis`` (the last block
    may be partial), so the result has ``shape``. :func:`quantize`, :func:`dequantize` and
    the rounding modes use it; raises ``ValueError`` when ``values`` do not fit.
    """
    arr = np.asarray(values)
    if qp.axis is None or arr.ndim == 0:
        if arr.size != 1:
            raise ValueError(f"per-tensor qparams need one value, got shape {arr.shape}")
        return arr.reshape(())
    if not -len(shape) <= qp.axis < len(shape):
        raise ValueError(f"qparams axis {qp.axis} is out of range for shape {shape}")
    axis = qp.axis % len(shape)
    if qp.block_size is None:
        if arr.size != shape[axis]:
            raise ValueError(
                f"per-axis qparams along axis {axis} need {shape[axis]} values, got {arr.size}"
            )
        out = [1] * len(shape)
        out[axis] = shape[axis]
        return arr.reshape(out)
    blocks = list(shape)
    blocks[axis] = -(-shape[axis] // qp.block_size)
    if arr.shape != tuple(blocks):
        raise ValueError(
            f"blocked qparams (block {qp.block_size} along axis {axis}) for shape {shape} "
            f"need shape {tuple(blocks)}, got {arr.shape}"
        )
    return np.take(np.repeat(arr, qp.block_size, axis=axis), np.arange(shape[axis]), axis=axis)


def quantize(x: npt.ArrayLike, qp: QParams) -> np.ndarray:
    """``saturate(round_half_even(x / S) + zp)`` in ``qp.qtype``, as ONNX QuantizeLinear
    (saturating at the restricted lowest code when ``qp.restricted``; onnxq only uses that
    for weights, which it quantizes ahead of time)."""
    arr = np.asarray(x, dtype=np.float32)
    scale = broadcast_param(qp.scale, arr.shape, qp)
    zp = broadcast_param(qp.zero_point.astype(np.float64), arr.shape, qp)
    q = np.rint(arr / scale) + zp
    codes: np.ndarray = np.clip(q, qp.qtype.min(restricted=qp.restricted), qp.qtype.max)
    return codes.astype(qp.qtype.dtype)


def dequantize(q: npt.ArrayLike, qp: QParams) -> npt.NDArray[np.float32]:
    """``(q - zp) * S`` as ONNX DequantizeLinear."""
    arr = np.asarray(q)
    scale = broadcast_param(qp.scale, arr.shape, qp)
    zp = broadcast_param(qp.zero_point.astype(np.int64), arr.shape, qp)
    out: npt.NDArray[np.float32] = ((arr.astype(np.int64) - zp) * scale).astype(np.float32)
    return out
