"""Reading a DequantizeLinear whose codes, scale and zero point are initializers."""

from __future__ import annotations

import numpy as np
import onnx

from onnxq.graph.external import tensor_values
from onnxq.graph.rules import GraphIndex, attribute
from onnxq.quant import QParams, QType

__all__ = ["constant_dq_params"]


def constant_dq_params(dq: onnx.NodeProto, idx: GraphIndex) -> QParams:
    """The QParams of ``dq`` (scale, zero point — 0 when omitted —, axis, block size and
    the codes' integer type), all of whose inputs are initializers in ``idx``."""
    codes = idx.initializers[dq.input[0]]
    scale = tensor_values(idx.initializers[dq.input[1]]).astype(np.float32)
    zp = (
        tensor_values(idx.initializers[dq.input[2]]).astype(np.int64)
        if len(dq.input) > 2 and dq.input[2]
        else np.zeros(scale.shape, np.int64)
    )
    block = int(attribute(dq, "block_size", 0))
    return QParams(
        scale=scale,
        zero_point=zp,
        qtype=QType(onnx.TensorProto.DataType.Name(codes.data_type).lower()),
        axis=int(attribute(dq, "axis", 1)) if scale.ndim else None,
        block_size=block or None,
    )
