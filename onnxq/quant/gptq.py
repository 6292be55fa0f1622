"""GPTQ (Frantar et al., 2022): post-training rounding that compensates each weight's
quantization error on the weights not yet quantized, using the second moment of the
layer's inputs. A PTQ repair method of the survey's section III-G (pure numpy).

For ``y = x W`` with ``W`` of shape [K, N] and inputs ``x`` of width K, with
``H = Σ xᵀx + λ I`` and ``U`` the upper Cholesky factor of ``H⁻¹``, the rows of ``W``
(input dimensions) are quantized in order; after row ``k``, the error
``e = (w_k − q_k) / U[k, k]`` is spread over the later rows: ``W[j] −= U[k, j] · e``.
Scales of a block of rows are fixed when the block is reached (block-wise), or from the
whole weight up front (per channel, per tensor).
"""

from __future__ import annotations

import numpy as np

from onnxq.quant.qparams import QParams, compute_qparams, dequantize, quantize
from onnxq.quant.qtypes import QType

__all__ = ["gptq"]


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(h.shape[0])
    inverse = np.linalg.inv(np.linalg.cholesky(h))  # L⁻¹ with H = L Lᵀ
    upper: np.ndarray = np.linalg.cholesky(inverse.T @ inverse).T  # upper U, H⁻¹ = Uᵀ U
    return upper


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    qtype: QType,
    *,
    symmetric: bool,
    block: int | None = None,
    per_channel: bool = True,
    restricted: bool = False,
    damp: float = 0.01,
) -> tuple[np.ndarray, QParams]:
    """Codes and qparams of ``w`` [K, N] for inputs with second moment ``h`` [K, K].

    With ``block``, scales are per (block of ``block`` rows, column), blocked along axis
    0 as ONNX's blocked DequantizeLinear takes them; else per column (axis 1) or per
    tensor. Degenerate inputs (a dimension never active) get a unit diagonal.
    """
    work = np.asarray(w, np.float64).copy()
    k, n = work.shape
    u = _inverse_cholesky(h, damp)
    codes = np.zeros((k, n), np.int64)
    scales = np.zeros((-(-k // block) if block else 1, n), np.float64)
    zps = np.zeros_like(scales)
    qp = None
    if not block:
        lo = work.min(axis=0) if per_channel else work.min()
        hi = work.max(axis=0) if per_channel else work.max()
        qp = compute_qparams(
            lo,
            hi,
            qtype,
            symmetric=symmetric,
            restricted=restricted,
            axis=0 if per_channel else None,
        )
    for i in range(k):
        if block and i % block == 0:
            rows = work[i : i + block]
            qp = compute_qparams(
                rows.min(axis=0),
                rows.max(axis=0),
                qtype,
                symmetric=symmetric,
                restricted=restricted,
                axis=0,
            )
            scales[i // block], zps[i // block] = qp.scale, qp.zero_point
        assert qp is not None
        q = quantize(work[i].astype(np.float32), qp)
        codes[i] = q
        err = (work[i] - dequantize(q, qp)) / u[i, i]
        work[i + 1 :] -= np.outer(u[i, i + 1 :], err)
    if block:
        final = QParams(
            scales.astype(np.float32),
            zps.astype(qtype.dtype),
            qtype,
            axis=0,
            block_size=block,
            restricted=restricted,
        )
    else:
        assert qp is not None
        final = QParams(
            qp.scale, qp.zero_point, qtype, axis=1 if per_channel else None, restricted=restricted
        )
    return codes.astype(qtype.dtype), final
