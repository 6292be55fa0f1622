"""Pass: ONNX shape inference, so every tensor's element type and rank are known.

onnx's inference serializes the model it is given and parses its answer back, weights
and all (MiniLM: 0.16 s to serialize 86 MB, twice the bytes through protobuf). Only the
weights' types and shapes matter to it, so it runs on a stand-in graph whose large float
initializers are graph inputs of the same type and shape (small and integer initializers
stay: shape computations read their values), and the inferred types are copied into the
model.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper, shape_inference

from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["infer_shapes"]

# initializers of more elements than this, of a float type, are left out of the graph the
# inference runs on (their values never decide a shape)
STAND_IN_ELEMENTS = 1024
_FLOATS = frozenset(
    (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
)


def infer_shapes(model: onnx.ModelProto) -> PassResult:
    """``model`` with inferred value_info; unchanged (with a note) when inference fails."""
    try:
        inferred = shape_inference.infer_shapes(_stand_in(model), strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: unknown types only mean fewer candidates
        return PassResult(model, False, (), "shape inference failed")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    # the inferred nodes carry their subgraphs' inferred value_info; the outputs their types
    for name in ("node", "output", "value_info"):
        del getattr(graph, name)[:]
        getattr(graph, name).extend(getattr(inferred.graph, name))
    return PassResult(out, True, (Change(ChangeKind.SHAPES_INFERRED, ""),))


def _stand_in(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its large float initializers: each is a graph input
    of its type and shape instead (the weights are not copied; nodes are)."""
    graph = model.graph
    # kept as they are: an initializer that is also a graph input or has a value_info
    # entry (onnx checks or prefers those declarations), and all of them below IR 4
    # (where onnx ignores the type of an initializer that is not an input)
    declared = {i.name for i in graph.input} | {v.name for v in graph.value_info}
    kept, standing = [], []
    for init in graph.initializer:
        large = init.data_type in _FLOATS and math.prod(init.dims) > STAND_IN_ELEMENTS
        if large and init.name not in declared and model.ir_version >= 4:
            standing.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        else:
            kept.append(init)
    light = onnx.ModelProto()
    for field, value in model.ListFields():  # everything but the graph, as it is
        if field.name == "graph":
            continue
        target = getattr(light, field.name)
        if hasattr(target, "extend"):  # repeated: opset_import, functions, metadata
            target.extend(value)
        elif hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(light, field.name, value)
    lg = light.graph
    lg.name = graph.name
    lg.doc_string = graph.doc_string
    lg.node.extend(graph.node)
    lg.input.extend(graph.input)
    lg.input.extend(standing)
    lg.output.extend(graph.output)
    lg.value_info.extend(graph.value_info)
    lg.initializer.extend(kept)
    lg.sparse_initializer.extend(graph.sparse_initializer)
    return light
