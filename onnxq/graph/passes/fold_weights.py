"""Integer weights of float nodes, dequantized once when onnxruntime loads the model.

A node left weights-only (integer weights, float inputs: every node with
``--weights-only``, and in static mode those next to a float activation) reads its weight
through a DequantizeLinear. onnxruntime never constant-folds DequantizeLinear (it keeps
Q/DQ pairs for its integer-kernel fusions), so such a node dequantizes its weight at every
run and, its weight no longer being a constant, loses the kernels that prepare constant
weights once (NCHWc-packed convolutions, packed GEMM): magika's convolution ran 2.3×
slower than float that way.

Here such a DequantizeLinear (8- or 16-bit codes, one scale per tensor or per axis, all
of its readers float nodes) becomes ``Mul(Sub(Cast(q), zp), scale)`` with the same
initializers and the same arithmetic (``(q − zp) · S`` in float32): the file keeps the
integers, and onnxruntime's constant folding turns them into the float weight at load.
DequantizeLinear nodes that feed an integer kernel (a node whose data input is
dequantized too), blocked scales and 4-bit codes (onnxruntime fuses those into
``MatMulNBits``) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph.dq import constant_dq_params
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.rules import GraphIndex, attribute

__all__ = ["fold_float_weights"]

_CODES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
}


def fold_float_weights(model: onnx.ModelProto) -> PassResult:
    """``model`` with the DequantizeLinear of float nodes' integer weights written as
    load-time arithmetic (see the module docstring); one WEIGHT_FOLDED change each."""
    idx = GraphIndex(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    folded: list[Change] = []
    for node in out.graph.node:
        if _foldable(node, idx):
            nodes.extend(_arithmetic(node, idx, out, names))
            replaced.update(i for i in node.input[1:] if i)
            folded.append(Change(ChangeKind.WEIGHT_FOLDED, node.input[0]))
        else:
            nodes.append(node)
    if not folded:
        return PassResult.unchanged(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    read = {i for n in out.graph.node for i in n.input}
    for t in [t for t in out.graph.initializer if t.name in replaced and t.name not in read]:
        out.graph.initializer.remove(t)  # scales and zero points now read reshaped
    return PassResult(out, True, tuple(folded))


def _foldable(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    if node.op_type != "DequantizeLinear" or attribute(node, "block_size", 0):
        return False
    inputs = [i for i in node.input if i]
    if not all(i in idx.initializers for i in inputs):
        return False
    codes, scale = idx.initializers[inputs[0]], idx.initializers[inputs[1]]
    if codes.data_type not in _CODES or scale.data_type != onnx.TensorProto.FLOAT:
        return False
    if len(scale.dims) > 1 or node.output[0] in idx.graph_outputs:
        return False
    readers = idx.consumers.get(node.output[0], [])
    return bool(readers) and all(_float_reader(r, node.output[0], idx) for r in readers)


def _float_reader(reader: onnx.NodeProto, weight: str, idx: GraphIndex) -> bool:
    """A node that runs in float: none of its other inputs is dequantized (else it may
    be fused into an integer kernel, which needs the DequantizeLinear)."""
    for name in reader.input:
        if not name or name == weight:
            continue
        producer = idx.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return False
    return True


def _arithmetic(
    dq: onnx.NodeProto, idx: GraphIndex, model: onnx.ModelProto, names: NameFactory
) -> list[onnx.NodeProto]:
    rank = len(idx.initializers[dq.input[0]].dims)
    qp = constant_dq_params(dq, idx)
    scale, zp = qp.scale, qp.zero_point.astype(np.float32)
    shape = [1] * rank
    if qp.axis is not None and rank:
        shape[qp.axis % rank] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    base = dq.output[0]
    value = names.new(f"{base}_codes")
    cast = helper.make_node(
        "Cast", [dq.input[0]], [value], names.new(f"{dq.name}_cast"), to=TensorProto.FLOAT
    )
    nodes = [cast]
    if np.any(zp != 0):
        zp_name, centred = names.new(f"{base}_zero_point"), names.new(f"{base}_centred")
        model.graph.initializer.append(numpy_helper.from_array(zp, zp_name))
        nodes.append(
            helper.make_node("Sub", [value, zp_name], [centred], names.new(f"{dq.name}_sub"))
        )
        value = centred
    scale_name = names.new(f"{base}_scale")
    model.graph.initializer.append(numpy_helper.from_array(scale, scale_name))
    nodes.append(helper.make_node("Mul", [value, scale_name], [base], names.new(f"{dq.name}_mul")))
    return nodes
