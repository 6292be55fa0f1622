"""Graph passes that make a model ready for planning: each takes a model and returns a
:class:`PassResult` saying whether it changed anything. None of them runs onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference, version_converter

from onnxq.errors import ModelError
from onnxq.graph.model_io import opset_version
from onnxq.graph.names import NameFactory

__all__ = [
    "PassResult",
    "constants_to_initializers",
    "infer_shapes",
    "name_nodes",
    "upgrade_opset",
]


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    changed: bool
    detail: str = ""


def name_nodes(model: onnx.ModelProto) -> PassResult:
    """Give every unnamed or duplicate-named node a unique name (``--exclude`` and
    reports refer to nodes by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = names.new(f"{node.op_type}_{i}")
            renamed += 1
        seen.add(node.name)
    return PassResult(out, renamed > 0, f"named {renamed} nodes" if renamed else "")


def constants_to_initializers(model: onnx.ModelProto) -> PassResult:
    """Turn top-level ``Constant`` nodes into initializers, so that weights that arrive as
    Constant nodes are quantized as weights, not as activations."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_outputs = {o.name for o in out.graph.output}
    keep, moved = [], 0
    for node in out.graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and not node.domain else None
        if tensor is None or node.output[0] in graph_outputs:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
        moved += 1
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return PassResult(out, moved > 0, f"moved {moved} Constant nodes" if moved else "")


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


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> PassResult:
    """Convert the default-domain opset to ``minimum`` when it is lower (onnx's version
    converter). Per-axis QuantizeLinear/DequantizeLinear need opset 13."""
    current = opset_version(model)
    if current >= minimum:
        return PassResult(model, False)
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ModelError(
            f"cannot upgrade the model from opset {current} to {minimum} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"onnxq needs opset {minimum} for the Q/DQ it writes (13: per-axis scales; "
            "21: 4- and 16-bit types, blocked scales)"
        ) from exc
    return PassResult(converted, True, f"opset {current} -> {minimum}")


def infer_shapes(model: onnx.ModelProto) -> PassResult:
    """Run ONNX shape inference so every tensor's element type and rank are known."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: unknown types only mean fewer candidates
        return PassResult(model, False, "shape inference failed")
    return PassResult(inferred, True)
