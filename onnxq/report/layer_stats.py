"""Streaming error statistics of one quantized activation (pure numpy).

For the float model's values ``r`` of a tensor and the quantized model's values at the
same point, ``c = (q − zp)·s`` (its integer codes ``q`` dequantized), over all values seen:

* SQNR = 10 log10(Σ r² / Σ (r − c)²) dB (:func:`onnxq.report.metrics.sqnr_db`): the
  error at this point, which includes what the quantized tensors before it added;
* own SQNR: the same with ``c`` replaced by ``DQ(Q(r))``, the float values through this
  point's scale and zero point alone: what this tensor's own range and step cost,
  whatever came before it (the report ranks tensors by it);
* cosine = Σ r·c / √(Σ r² · Σ c²) over all values flattened (1 when both are zero);
* max |r − c|;
* clipped share: the fraction of ``r`` more than half a step outside the range the codes
  can hold, ``[(qmin − zp)·s, (qmax − zp)·s]`` (there the error exceeds rounding's);
* the observed min and max of ``r``, and a histogram of ``r``
  (:class:`onnxq.calibration.histogram.HistogramObserver`, fixed memory).

Running sums only: memory is one batch of the tensor plus the histogram's bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxq.calibration.histogram import Histogram, HistogramObserver
from onnxq.errors import ModelError
from onnxq.quant import QParams, dequantize, quantize
from onnxq.quant.qparams import broadcast_param
from onnxq.report.metrics import sqnr_db

__all__ = ["HISTOGRAM_BINS", "LayerError", "LayerStats"]

HISTOGRAM_BINS = 64  # half the cells of each tensor's histogram (it keeps 2 × this)


@dataclass(frozen=True)
class LayerError:
    """The error of one quantized activation, float model against quantized model."""

    tensor: str  # in the float model
    codes: str  # the integer tensor in the quantized model
    qtype: str  # the codes' type ("uint8", "int8", "uint16", ...)
    scale: float  # the largest scale (one per tensor for activations)
    zero_point: int  # the zero point of that scale's channel
    values: int  # values compared
    sqnr_db: float
    own_sqnr_db: float
    cosine: float
    max_abs_error: float
    clipped: int  # float values more than half a step outside the range
    range_min: float  # the range the codes hold
    range_max: float
    observed_min: float  # the float model's values
    observed_max: float
    histogram: Histogram | None = field(default=None, compare=False, repr=False)

    @property
    def clipped_share(self) -> float:
        return self.clipped / self.values if self.values else 0.0

    def sort_key(self) -> tuple[float, float]:
        """Worst first: lowest own SQNR (NaN counts as worst), then lowest SQNR."""

        def low(v: float) -> float:
            return -math.inf if math.isnan(v) else v

        return low(self.own_sqnr_db), low(self.sqnr_db)


class LayerStats:
    """Accumulates :class:`LayerError` of one tensor, batch by batch."""

    def __init__(self, tensor: str, codes: str, qparams: QParams) -> None:
        self.tensor, self.codes, self.qparams = tensor, codes, qparams
        self.values = 0
        self._signal = self._noise = self._own = self._dot = self._cand = 0.0
        self._max_err = 0.0
        self._clipped = 0
        self._min, self._max = math.inf, -math.inf
        self._hist = HistogramObserver(HISTOGRAM_BINS)

    def update(self, reference: np.ndarray, codes: np.ndarray) -> None:
        """Add one batch: the float model's ``reference`` and the quantized ``codes``."""
        ref = np.asarray(reference, np.float64)
        if ref.shape != np.shape(codes):
            raise ModelError(
                f"tensor '{self.tensor}' has shape {ref.shape} in the float model but its "
                f"codes '{self.codes}' have shape {np.shape(codes)}; diagnose a model with its "
                "own quantization"
            )
        cand = dequantize(codes, self.qparams).astype(np.float64)
        err = ref - cand
        self.values += ref.size
        self._signal += float(np.sum(ref * ref))
        self._noise += float(np.sum(err * err))
        own = ref - dequantize(quantize(reference, self.qparams), self.qparams)
        self._own += float(np.sum(own * own))
        self._dot += float(np.sum(ref * cand))
        self._cand += float(np.sum(cand * cand))
        self._max_err = max(self._max_err, float(np.abs(err).max(initial=0.0)))
        self._clipped += self._count_clipped(ref)
        if ref.size:
            self._min = min(self._min, float(ref.min()))
            self._max = max(self._max, float(ref.max()))
            self._hist.update(np.asarray(reference))

    def _count_clipped(self, ref: np.ndarray) -> int:
        qp, qt = self.qparams, self.qparams.qtype
        scale = broadcast_param(qp.scale.astype(np.float64), ref.shape, qp)
        zp = broadcast_param(qp.zero_point.astype(np.float64), ref.shape, qp)
        low = (qt.min() - zp - 0.5) * scale
        high = (qt.max - zp + 0.5) * scale
        return int(np.count_nonzero((ref < low) | (ref > high)))

    def result(self) -> LayerError:
        qp, qt = self.qparams, self.qparams.qtype
        scale, zp = np.broadcast_arrays(
            qp.scale.astype(np.float64).reshape(-1), qp.zero_point.astype(np.float64).reshape(-1)
        )
        widest = int(np.argmax(scale))
        low, high = (qt.min() - zp) * scale, (qt.max - zp) * scale
        both = math.sqrt(self._signal * self._cand)
        if both > 0:
            cosine = max(-1.0, min(1.0, self._dot / both))
        else:
            cosine = 1.0 if self._signal == self._cand else 0.0
        return LayerError(
            tensor=self.tensor,
            codes=self.codes,
            qtype=qt.value,
            scale=float(scale[widest]),
            zero_point=int(zp[widest]),
            values=self.values,
            sqnr_db=sqnr_db(self._signal, self._noise),
            own_sqnr_db=sqnr_db(self._signal, self._own),
            cosine=cosine,
            max_abs_error=self._max_err,
            clipped=self._clipped,
            range_min=float(np.min(low)),
            range_max=float(np.max(high)),
            observed_min=self._min if self.values else 0.0,
            observed_max=self._max if self.values else 0.0,
            histogram=self._hist.result() if self.values else None,
        )
