"""From observed ranges to the ranges (and qparams) the rewrite uses: activations one
integer scale cannot hold are clipped to their MSE-optimal range or kept float."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxq.calibration.observers import TensorRange
from onnxq.config import ActivationSpec, Scheme
from onnxq.quant import QParams, compute_qparams

__all__ = ["WIDE_RANGE", "activation_qparams", "auto_remedy"]

# An activation whose observed magnitude passes this cannot share one 8-bit (16-bit) scale
# with its ordinary values: typically an additive attention mask of -1e4 or -3.4e38.
WIDE_RANGE = {8: 5e3, 16: 1e9}


def _extent(r: TensorRange) -> tuple[float, float]:
    lo, hi = float(np.min(r.min)), float(np.max(r.max))
    if r.observed_min is not None and r.observed_max is not None:
        lo = min(lo, float(np.min(r.observed_min)))
        hi = max(hi, float(np.max(r.observed_max)))
    return lo, hi


def auto_remedy(
    observed: dict[str, TensorRange], bits: int, auto_sqnr: float
) -> tuple[dict[str, str], dict[str, TensorRange]]:
    """Activations one scale cannot hold, and the ranges to use instead.

    * a tensor whose magnitude passes ``WIDE_RANGE`` (an additive mask) stays float;
    * with ``auto_sqnr`` > 0, a tensor whose estimated SQNR on its range is below it gets
      its MSE-optimal range when that reaches ``auto_sqnr``, else stays float.
    Nodes reading or making a float tensor keep integer weights (weights only) or stay
    float. Returns (tensor -> why it stays float, ranges to use).
    """
    limit = WIDE_RANGE[bits]
    forbidden: dict[str, str] = {}
    ranges = dict(observed)
    for name, r in observed.items():
        lo, hi = _extent(r)
        if not max(abs(lo), abs(hi)) <= limit:  # also inf
            forbidden[name] = f"spans [{lo:.3g}, {hi:.3g}], too wide for one {bits}-bit scale"
            continue
        q = r.quality
        if auto_sqnr <= 0 or q is None or q.sqnr_db >= auto_sqnr:
            continue
        if q.robust_sqnr_db >= auto_sqnr:
            f32 = np.float32
            ranges[name] = replace(
                r, min=np.asarray(q.robust_min, f32), max=np.asarray(q.robust_max, f32), axis=None
            )
        else:
            forbidden[name] = (
                f"would keep {q.sqnr_db:.1f} dB on a {bits}-bit grid ({q.robust_sqnr_db:.1f} dB "
                f"clipped), below --auto-sqnr {auto_sqnr:g}"
            )
    return forbidden, ranges


def activation_qparams(r: TensorRange, spec: ActivationSpec, *, restricted: bool) -> QParams:
    """Per-tensor qparams of an activation from its range (per-channel ranges are merged:
    onnxruntime's integer kernels take one activation scale)."""
    whole = r.per_tensor() if r.axis is not None else r
    return compute_qparams(
        np.asarray(whole.min),
        np.asarray(whole.max),
        spec.qtype,
        symmetric=spec.scheme is Scheme.SYM,
        restricted=restricted,
    )
