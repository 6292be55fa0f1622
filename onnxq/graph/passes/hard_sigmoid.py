"""Pass: hard-sigmoid and hard-swish written as arithmetic (``Clip(x + 3, 0, 6) / 6``, and
``x · Clip(x + 3, 0, 6) / 6``: exports of PP-OCR and of models made before opset 14)
become one ``HardSigmoid(x)`` (α = 1/6, β = 0.5), times ``x`` for hard-swish: the same
function up to float rounding, one or two passes over the tensor instead of four. The
arithmetic form also misleads the plan: each of its Add and Mul after an int8
convolution would be rounded to integers again (PP-OCR rec: four float element-wise
ops per block, 28 blocks)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from onnxq.graph.edit import drop_unused_initializers
from onnxq.graph.external import tensor_values
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.rules import GraphIndex

__all__ = ["hard_sigmoids"]

ALPHA, BETA = 1.0 / 6.0, 0.5


@dataclass(frozen=True)
class _Match:
    x: str  # the input
    nodes: tuple[onnx.NodeProto, ...]  # Add, Clip, [Mul by x,] the division by 6
    swish: bool  # times x


def hard_sigmoids(model: onnx.ModelProto) -> PassResult:
    """``model`` with each arithmetic hard-sigmoid (``Add 3 → Clip 0..6 → Div 6`` or ``Mul
    1/6``) replaced by ``HardSigmoid``, and each arithmetic hard-swish (the same with a
    ``Mul`` by the input before or after the division) by ``x · HardSigmoid(x)``. Only
    chains of float32 constants (so of float32 tensors) whose intermediate tensors have no
    other reader are replaced."""
    idx = GraphIndex(model)
    matches = [m for node in model.graph.node if (m := _match(node, idx)) is not None]
    if not matches:
        return PassResult.unchanged(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    removed = {n.output[0] for m in matches for n in m.nodes}  # outputs name nodes
    replacement = {m.nodes[-1].output[0]: _written(m, names) for m in matches}
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.output and node.output[0] in replacement:
            nodes.extend(replacement[node.output[0]])
        elif not node.output or node.output[0] not in removed:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    drop_unused_initializers(out)
    changes = tuple(Change(ChangeKind.HARD_SIGMOID, m.nodes[-1].output[0]) for m in matches)
    swish = sum(m.swish for m in matches)
    detail = f"wrote {len(matches)} arithmetic hard-sigmoids as HardSigmoid ({swish} hard-swish)"
    return PassResult(out, True, changes, detail)


def _written(match: _Match, names: NameFactory) -> list[onnx.NodeProto]:
    last = match.nodes[-1]
    if not match.swish:
        return [
            helper.make_node(
                "HardSigmoid",
                [match.x],
                [last.output[0]],
                names.new(f"{last.name}_hsig"),
                alpha=ALPHA,
                beta=BETA,
            )
        ]
    gate = names.new(f"{last.output[0]}_hsig")
    return [
        helper.make_node(
            "HardSigmoid",
            [match.x],
            [gate],
            names.new(f"{last.name}_hsig"),
            alpha=ALPHA,
            beta=BETA,
        ),
        helper.make_node(
            "Mul", [match.x, gate], [last.output[0]], names.new(f"{last.name}_hswish")
        ),
    ]


def _match(last: onnx.NodeProto, idx: GraphIndex) -> _Match | None:
    """The chain that ``last`` (a division by 6 or product with 1/6) ends, if any."""
    scaled = _scaled_input(last, idx)
    if scaled is None:
        return None
    node = _only_producer(scaled, idx)
    swish_x = None
    if node is not None and node.op_type == "Mul" and not node.domain and len(node.input) == 2:
        for a, b in ((0, 1), (1, 0)):  # x · clip(...), then / 6
            clip = _only_producer(node.input[b], idx)
            if clip is not None and clip.op_type == "Clip":
                swish_x, mul, node = node.input[a], node, clip
                break
        else:
            return None
    else:
        mul = None
    chain = _clip_of_add(node, idx)
    if chain is None:
        return None
    x, add, clip = chain
    if swish_x is not None:
        if swish_x != x:
            return None
        assert mul is not None
        return _Match(x, (add, clip, mul, last), True)
    # / 6 first, then a product with x: the Mul after ``last``
    readers = idx.consumers.get(last.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Mul" and not readers[0].domain:
        after = readers[0]
        if sorted(after.input) == sorted([x, last.output[0]]) and x != last.output[0]:
            if last.output[0] not in idx.graph_outputs:
                return _Match(x, (add, clip, last, after), True)
    return _Match(x, (add, clip, last), False)


def _scaled_input(node: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """The tensor ``node`` divides by 6 (or multiplies by 1/6), if it does."""
    if node.domain or len(node.input) != 2:  # float32 by its float32 constant
        return None
    if node.op_type == "Div" and _is(node.input[1], 6.0, idx):
        return str(node.input[0])
    if node.op_type == "Mul":
        for a, b in ((0, 1), (1, 0)):
            if _is(node.input[b], 1.0 / 6.0, idx, rel=1e-6):
                return str(node.input[a])
    return None


def _clip_of_add(
    clip: onnx.NodeProto | None, idx: GraphIndex
) -> tuple[str, onnx.NodeProto, onnx.NodeProto] | None:
    """(x, Add, Clip) when ``clip`` is ``Clip(x + 3, 0, 6)``."""
    if clip is None or clip.op_type != "Clip" or clip.domain or len(clip.input) < 3:
        return None
    if not (_is(clip.input[1], 0.0, idx) and _is(clip.input[2], 6.0, idx)):
        return None
    add = _only_producer(clip.input[0], idx)
    if add is None or add.op_type != "Add" or add.domain or len(add.input) != 2:
        return None
    for a, b in ((0, 1), (1, 0)):
        if _is(add.input[b], 3.0, idx) and add.input[a] not in idx.initializers:
            return add.input[a], add, clip
    return None


def _only_producer(tensor: str, idx: GraphIndex) -> onnx.NodeProto | None:
    """The node making ``tensor`` when it is its only reader's input (and not a graph
    output): a chain node that can be removed."""
    if tensor in idx.graph_outputs or len(idx.consumers.get(tensor, [])) != 1:
        return None
    return idx.producer.get(tensor)


def _is(name: str, value: float, idx: GraphIndex, rel: float = 0.0) -> bool:
    """Whether ``name`` is a float32 constant of rank 0 or 1 holding the single value
    ``value``."""
    if not idx.is_float_constant(name) or len(idx.initializers[name].dims) > 1:
        return False  # rank > 1 would broadcast x to a wider rank
    values = tensor_values(idx.initializers[name]).reshape(-1)
    if values.size != 1:
        return False
    return abs(float(values[0]) - value) <= rel * abs(value)
