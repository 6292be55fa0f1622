"""Pass: a constant ``Mul`` or ``Add`` right after a convolution, per tensor or per output
channel, folded into the convolution's weight and bias (``c·conv(x, W, b) = conv(x, cW,
cb)``, ``conv(x, W, b) + c = conv(x, W, b + c)``): the same function up to float
rounding, one node instead of two or three. Exports of PaddlePaddle's PP-LCNet (PP-OCR
det and rec) write each block's learnable affine after the convolution this way; kept
apart, the affine is a float pass over the activation between the int8 convolution and
its consumers (PP-OCR rec: 56 of them)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxq.graph.edit import drop_unused_initializers
from onnxq.graph.external import tensor_values, uses_external_data
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.rules import GraphIndex

__all__ = ["fold_affine"]


def fold_affine(model: onnx.ModelProto) -> PassResult:
    """``model`` with each constant Mul/Add that is the only reader of a float32 Conv's
    output (not a graph output) folded into that Conv, repeatedly (``Conv → Mul → Add``
    becomes one Conv). The constant must be a scalar or one value per output channel; it
    and the Conv's weight and bias must be constants no feed can replace. A model with
    external data is left alone (its weights would be read into memory)."""
    if uses_external_data(model):
        return PassResult.unchanged(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    changes: list[Change] = []
    while True:
        idx = GraphIndex(out)
        found = _next_fold(out, idx)
        if found is None:
            break
        conv, op = found
        _fold(out, idx, conv, op, names)
        changes.append(Change(ChangeKind.AFFINE_FOLDED, op.name, conv.name))
    if not changes:
        return PassResult.unchanged(model)
    drop_unused_initializers(out)
    detail = f"folded {len(changes)} constant Mul/Add into convolutions"
    return PassResult(out, True, tuple(changes), detail)


def _next_fold(
    model: onnx.ModelProto, idx: GraphIndex
) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    outputs = {o.name for o in model.graph.output}
    for conv in model.graph.node:
        if conv.op_type != "Conv" or conv.domain or not _foldable_conv(conv, idx):
            continue
        y = conv.output[0]
        readers = idx.consumers.get(y, [])
        if y in outputs or len(readers) != 1:
            continue
        op = readers[0]
        if op.op_type in ("Mul", "Add") and not op.domain and _constant(op, y, conv, idx):
            return conv, op
    return None


def _foldable_conv(conv: onnx.NodeProto, idx: GraphIndex) -> bool:
    w = conv.input[1]
    b = conv.input[2] if len(conv.input) > 2 else ""
    return idx.is_float_constant(w) and (not b or idx.is_float_constant(b))


def _constant(op: onnx.NodeProto, y: str, conv: onnx.NodeProto, idx: GraphIndex) -> bool:
    """Whether ``op`` applies a per-tensor or per-output-channel constant to ``y``."""
    if len(op.input) != 2 or y not in op.input:
        return False
    other = op.input[1] if op.input[0] == y else op.input[0]
    if other == y or not idx.is_float_constant(other):
        return False
    shape = tuple(idx.initializers[other].dims)
    dims = idx.initializers[conv.input[1]].dims  # the output's rank is the weight's
    return _per_channel(shape, int(dims[0]), len(dims))


def _per_channel(shape: tuple[int, ...], channels: int, rank: int) -> bool:
    """Whether a constant of ``shape`` is one value, or one per channel of an output of
    ``rank`` with ``channels`` channels (axis 1), without widening the output."""
    if len(shape) > rank:
        return False
    if int(np.prod(shape, dtype=np.int64)) == 1:
        return True
    padded = (1,) * (rank - len(shape)) + shape
    return padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1)


def _fold(
    model: onnx.ModelProto,
    idx: GraphIndex,
    conv: onnx.NodeProto,
    op: onnx.NodeProto,
    names: NameFactory,
) -> None:
    y = conv.output[0]
    other = op.input[1] if op.input[0] == y else op.input[0]
    c = tensor_values(idx.initializers[other]).astype(np.float64).reshape(-1)
    w = tensor_values(idx.initializers[conv.input[1]]).astype(np.float64)
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = (
        tensor_values(idx.initializers[conv.input[2]]).astype(np.float64)
        if has_bias
        else np.zeros(w.shape[0])
    )
    if op.op_type == "Mul":
        w = w * c.reshape((-1,) + (1,) * (w.ndim - 1))
        bias = bias * c
    else:
        bias = bias + c
    w_name, b_name = names.new(f"{conv.input[1]}_folded"), names.new(f"{conv.name}_bias")
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(w.astype(np.float32), w_name),
            numpy_helper.from_array(bias.astype(np.float32), b_name),
        ]
    )
    inputs = [conv.input[0], w_name, b_name]
    del conv.input[:]
    conv.input.extend(inputs)
    conv.output[0] = op.output[0]  # the folded node's output keeps its name for its readers
    model.graph.node.remove(op)
    kept = [v for v in model.graph.value_info if v.name != y]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
