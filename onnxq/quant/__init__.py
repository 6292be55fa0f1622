"""Pure numpy quantization maths. Imports no onnx, onnxruntime, click or rich."""

from onnxq.quant.qparams import QParams, compute_qparams, dequantize, observed_range, quantize
from onnxq.quant.qtypes import QType

__all__ = ["QParams", "QType", "compute_qparams", "dequantize", "observed_range", "quantize"]
