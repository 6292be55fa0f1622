"""Where a quantized model holds each float activation as integers, and with which scale.

A *point* is one quantized activation: the float model's tensor, the tensor of the
quantized model that holds its integer codes (a QuantizeLinear output, or the output of
an op that runs on the integers such as MaxPool), and the scale and zero point that turn
those codes back into floats. ``onnxq diagnose`` fetches the codes and compares
``(q - zp) · s`` with the float model's value.

The match comes from what onnxq recorded when it wrote the model (metadata_props
``onnxq.tensors``: integer tensor -> float tensor, made by the rewrite); for a model made
by another tool it comes from the graph:

* a QuantizeLinear whose input is a tensor of the float model holds that tensor;
* otherwise, a DequantizeLinear reading the QuantizeLinear (directly) whose output is a
  tensor of the float model (onnxq's own layout: the float value is renamed, the
  DequantizeLinear takes over the name);
* a DequantizeLinear whose input comes from an op running on integers (not from a
  QuantizeLinear) holds the float model's tensor of its output name.

Tensor names are compared as they are, never parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.graph.external import tensor_values
from onnxq.graph.metadata import TENSORS_KEY, recorded
from onnxq.graph.rules import GraphIndex, attribute
from onnxq.quant import QParams, QType

__all__ = [
    "PointMatch",
    "QdqPoint",
    "float_tensor_names",
    "match_points",
    "recorded_tensors",
    "structural_tensors",
]

_PASSTHROUGH_DEPTH = 16  # integer-only ops walked back to their QuantizeLinear


@dataclass(frozen=True)
class QdqPoint:
    """One quantized activation of the quantized model."""

    float_tensor: str  # in the float model
    codes: str  # the integer tensor in the quantized model
    qparams: QParams

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The range the codes can hold, per channel (or scalars):
        ``[(qmin − zp)·s, (qmax − zp)·s]``."""
        qt, qp = self.qparams.qtype, self.qparams
        zp = qp.zero_point.astype(np.float64)
        scale = qp.scale.astype(np.float64)
        return (qt.min() - zp) * scale, (qt.max - zp) * scale

    @property
    def range(self) -> tuple[float, float]:
        """The widest range over channels (one range for per-tensor scales)."""
        low, high = self.bounds
        return float(np.min(low)), float(np.max(high))


@dataclass(frozen=True)
class PointMatch:
    points: tuple[QdqPoint, ...]
    source: str  # "record" (onnxq.tensors) or "structure" (found in the graph)
    unmatched: tuple[str, ...]  # integer tensors whose float tensor the float model lacks


def recorded_tensors(model: onnx.ModelProto) -> dict[str, str] | None:
    """The ``onnxq.tensors`` record of ``model``, or None when it has none (or an
    unreadable one)."""
    value = recorded(model, TENSORS_KEY)
    if value is None or not all(isinstance(v, str) for v in value.values()):
        return None
    return {str(k): str(v) for k, v in value.items()}


def float_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Graph inputs and node outputs of ``model``: the tensors it can be asked for."""
    names = {v.name for v in model.graph.input}
    names.update(o for n in model.graph.node for o in n.output if o)
    return names


def structural_tensors(quantized: onnx.ModelProto, float_names: set[str]) -> dict[str, str]:
    """Integer tensor -> float tensor, found in the graph (see the module docstring)."""
    idx = GraphIndex(quantized)
    found: dict[str, str] = {}
    for node in quantized.graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type == "QuantizeLinear" and source and source not in idx.initializers:
            if source in float_names:
                found[node.output[0]] = source
                continue
            for reader in idx.consumers.get(node.output[0], []):
                if reader.op_type == "DequantizeLinear" and reader.output[0] in float_names:
                    found[node.output[0]] = reader.output[0]
                    break
        elif node.op_type == "DequantizeLinear" and source not in idx.initializers:
            producer = idx.producer.get(source)
            made_by_q = producer is not None and producer.op_type == "QuantizeLinear"
            if not made_by_q and node.output[0] in float_names:
                found.setdefault(source, node.output[0])
    return found


def match_points(quantized: onnx.ModelProto, float_names: set[str]) -> PointMatch:
    """Every quantized activation of ``quantized`` whose float tensor is in
    ``float_names``, from the record when there is one, else from the graph."""
    recorded = recorded_tensors(quantized)
    source = "record" if recorded is not None else "structure"
    mapping = recorded if recorded is not None else structural_tensors(quantized, float_names)
    idx = GraphIndex(quantized)
    points, unmatched = [], []
    for codes, tensor in mapping.items():
        qp = codes_qparams(idx, codes)
        if qp is None or tensor not in float_names:
            unmatched.append(codes)
            continue
        points.append(QdqPoint(tensor, codes, qp))
    return PointMatch(tuple(points), source, tuple(unmatched))


def codes_qparams(idx: GraphIndex, codes: str) -> QParams | None:
    """The scale and zero point of integer tensor ``codes``: those of a DequantizeLinear
    that reads it, else of the QuantizeLinear that made it (walking back through ops that
    run on the integers, which keep them); None when they are not initializers."""
    for reader in idx.consumers.get(codes, []):
        if reader.op_type == "DequantizeLinear" and reader.input[0] == codes:
            return _node_qparams(idx, reader)
    name = codes
    for _ in range(_PASSTHROUGH_DEPTH):
        producer = idx.producer.get(name)
        if producer is None or not producer.input:
            return None
        if producer.op_type == "QuantizeLinear":
            return _node_qparams(idx, producer)
        name = producer.input[0]
    return None


def _node_qparams(idx: GraphIndex, node: onnx.NodeProto) -> QParams | None:
    """QParams of a QuantizeLinear/DequantizeLinear whose scale (and zero point) are
    initializers; the type is the zero point's (uint8 when it is left out, as ONNX says)."""
    inits: Mapping[str, onnx.TensorProto] = idx.initializers
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    scale = tensor_values(inits[node.input[1]]).astype(np.float32)
    has_zp = len(node.input) > 2 and bool(node.input[2])
    if has_zp and node.input[2] not in inits:
        return None
    if has_zp:
        zp_tensor = inits[node.input[2]]
        zero_point = tensor_values(zp_tensor).astype(np.int64)
        type_name = onnx.TensorProto.DataType.Name(zp_tensor.data_type).lower()
    else:
        zero_point = np.zeros(scale.shape, np.int64)
        type_name = "uint8"
    try:
        qtype = QType(type_name)
    except ValueError:
        return None  # float8 and other types onnxq does not model
    axis = int(attribute(node, "axis", 1)) if scale.ndim else None
    return QParams(scale=scale, zero_point=zero_point, qtype=qtype, axis=axis)
