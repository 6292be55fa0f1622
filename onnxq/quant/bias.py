"""int32 biases of integer Conv / Gemm kernels (pure numpy).

An integer kernel accumulates ``Σ (x_q − zp_x)(w_q − zp_w)`` in int32, in units of
``S_x · S_w``; its bias is added in the same units, so it is stored as int32 codes with
``S_b = S_x · S_w`` (one per output channel when the weight has one scale per channel)
and zero point 0::

    b_q = round_half_even(b / (S_x · S_w))

Degenerate cases, where the bias stays float (None is returned): a code that would not
fit in int32 (a tiny scale product, a huge bias); scales that are neither one nor one per
bias value (e.g. blocked weights); a per-channel scale for a bias that is not 1-D.
"""

from __future__ import annotations

import numpy as np

from onnxq.quant.qparams import QParams
from onnxq.quant.qtypes import QType

__all__ = ["INT32_MAX", "bias_codes"]

INT32_MAX = float(np.iinfo(np.int32).max)


def bias_codes(
    bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray
) -> tuple[np.ndarray, QParams] | None:
    """int32 codes (shaped like ``bias``) and their qparams, or None (see module doc)."""
    shape = np.shape(bias)
    values = np.asarray(bias, np.float64).reshape(-1)
    scale = (np.asarray(input_scale, np.float64) * np.asarray(weight_scale, np.float64)).reshape(-1)
    if scale.size not in (1, values.size):
        return None
    q = np.rint(values / scale)
    if np.abs(q).max(initial=0.0) > INT32_MAX:
        return None
    per_channel = scale.size > 1
    if per_channel and len(shape) != 1:
        return None  # a per-axis scale fits a 1-D bias only
    qp = QParams(
        scale=scale.astype(np.float32),
        zero_point=np.zeros(scale.shape if per_channel else (), np.int32),
        qtype=QType.INT32,
        axis=0 if per_channel else None,
    )
    return q.astype(np.int32).reshape(shape), qp
