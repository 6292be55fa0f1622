"""Pass: top-level ``Constant`` nodes become initializers, so that weights that arrive as
Constant nodes are quantized as weights, not as activations."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["constants_to_initializers"]


def constants_to_initializers(model: onnx.ModelProto) -> PassResult:
    """Turn top-level ``Constant`` nodes (not graph outputs) into initializers."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_outputs = {o.name for o in out.graph.output}
    keep, moved = [], []
    for node in out.graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and not node.domain else None
        if tensor is None or node.output[0] in graph_outputs:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
        moved.append(Change(ChangeKind.CONSTANT_MOVED, node.output[0]))
    if not moved:
        return PassResult.unchanged(model)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return PassResult(out, True, tuple(moved), f"moved {len(moved)} Constant nodes")


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = "float32" if attr.name.startswith("value_float") else "int64"
            return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return None
