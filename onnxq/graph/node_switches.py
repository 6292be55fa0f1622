"""The float model with each quantized node's inputs behind a switch: what ``onnxq diagnose
--sensitivity`` runs to measure one node quantized alone.

A *unit* is a node of the quantized model that reads dequantized values (activations
through a QuantizeLinear/DequantizeLinear point, weights and biases through a
DequantizeLinear of stored integers) and exists in the float model under the same name
and op type. In the float model, each such input becomes ``Where(mask, quantized, float)``
with one boolean graph input ``mask`` per unit: the activation as
``DQ(Q(x))`` with the quantized model's scale and zero point, the weight as the quantized
model's own DequantizeLinear and integer initializers (copied). With every mask off the
model is the float model; with one on, only that node computes on quantized inputs, as an
excluded node would not (``--exclude`` keeps a node float and lets it read float inputs).
Weights written for load-time folding (``--fold-weights``) are not switched.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph.edit import topological
from onnxq.graph.model_io import opset_version
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.opset import upgrade_opset
from onnxq.graph.qdq_points import QdqPoint
from onnxq.graph.rules import GraphIndex

__all__ = ["NodeSwitches", "NodeUnit", "build_node_switches"]


@dataclass(frozen=True)
class NodeUnit:
    """One quantized node whose inputs switch together."""

    node: str
    op_type: str
    mask: str  # the boolean graph input that switches it
    inputs: tuple[str, ...]  # the float model's inputs of the node that were switched


@dataclass(frozen=True)
class NodeSwitches:
    model: onnx.ModelProto
    units: tuple[NodeUnit, ...]

    def feed(self, active: Collection[int]) -> dict[str, np.ndarray]:
        """Mask inputs with the units of ``active`` (indices into ``units``) switched on."""
        on, off = np.array(True), np.array(False)
        return {u.mask: on if i in active else off for i, u in enumerate(self.units)}


@dataclass(frozen=True)
class _Edge:
    index: int  # input position in the node
    point: QdqPoint | None  # an activation point, or None for a stored weight
    dq: onnx.NodeProto | None  # the weight's DequantizeLinear (weights only)


class _Builder:
    """New nodes, initializers and mask inputs added to the float model's copy."""

    def __init__(self, model: onnx.ModelProto, quantized: onnx.ModelProto) -> None:
        self.model = model
        self.names = NameFactory(model)
        for t in quantized.graph.initializer:  # copied initializers may keep no name
            self.names.new(t.name)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.names.new(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def mask(self, node: str) -> str:
        name = self.names.new(f"onnxq_switch_{node}")
        self.model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, axis: int | None = None) -> str:
        out = self.names.new(base)
        node = helper.make_node(op, list(inputs), [out], self.names.new(out))
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        self.nodes.append(node)
        return out

    def activation(self, source: str, point: QdqPoint) -> str:
        """``DQ(Q(source))`` with the point's scale and zero point."""
        qp = point.qparams
        scale = self.constant(f"{source}_switch_scale", qp.scale.astype(np.float32))
        zp = self.constant(f"{source}_switch_zp", qp.zero_point.astype(qp.qtype.dtype))
        q = self.node("QuantizeLinear", [source, scale, zp], f"{source}_switch_q", qp.axis)
        return self.node("DequantizeLinear", [q, scale, zp], f"{source}_switch_dq", qp.axis)

    def weight(self, dq: onnx.NodeProto, quantized: GraphIndex) -> str:
        """A copy of the quantized model's DequantizeLinear ``dq`` and its initializers."""
        inputs = []
        for name in dq.input:
            if not name:
                inputs.append(name)
                continue
            copy = TensorProto()
            copy.CopyFrom(quantized.initializers[name])
            copy.name = self.names.new(f"{name}_switch")
            self.inits.append(copy)
            inputs.append(copy.name)
        out = self.names.new(f"{dq.output[0]}_switch")
        node = onnx.NodeProto()
        node.CopyFrom(dq)
        node.name = self.names.new(out)
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = out
        self.nodes.append(node)
        return out


def build_node_switches(
    float_model: onnx.ModelProto, quantized: onnx.ModelProto, points: Sequence[QdqPoint]
) -> NodeSwitches:
    """The switchable float model (see the module docstring); ``points`` are the
    quantized model's activation points (:func:`onnxq.graph.qdq_points.match_points`)."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    if opset_version(quantized) > opset_version(model):  # 16-bit or blocked Q/DQ
        model = upgrade_opset(model, opset_version(quantized)).model
    edges = _edges(model, quantized, points)
    b = _Builder(model, quantized)
    q_idx = GraphIndex(quantized)
    by_name = {n.name: n for n in model.graph.node}
    units = []
    for name, found in edges.items():
        node = by_name[name]
        mask = b.mask(name)
        switched = []
        for edge in found:
            exact = node.input[edge.index]
            if edge.point is not None:
                quant = b.activation(exact, edge.point)
            else:
                assert edge.dq is not None
                quant = b.weight(edge.dq, q_idx)
            node.input[edge.index] = b.node("Where", [mask, quant, exact], f"{exact}_switched")
            switched.append(exact)
        units.append(NodeUnit(name, node.op_type, mask, tuple(switched)))
    g = model.graph
    ordered = topological([*g.node, *b.nodes], g)
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(b.inits)
    return NodeSwitches(model, tuple(units))


def _edges(
    float_model: onnx.ModelProto, quantized: onnx.ModelProto, points: Sequence[QdqPoint]
) -> dict[str, list[_Edge]]:
    """Per node of both models (same name and op type; float model order), the inputs
    that read a dequantized activation point or a dequantized stored weight."""
    q_idx = GraphIndex(quantized)
    by_codes = {p.codes: p for p in points}
    dequantized: dict[str, QdqPoint] = {}  # DQ output -> its activation point
    weights: dict[str, onnx.NodeProto] = {}  # DQ output -> the DQ of stored integers
    for node in quantized.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        if node.input[0] in by_codes:
            dequantized[node.output[0]] = by_codes[node.input[0]]
        elif all(not name or name in q_idx.initializers for name in node.input):
            weights[node.output[0]] = node
    q_nodes = {n.name: n for n in quantized.graph.node if n.name}
    found: dict[str, list[_Edge]] = {}
    for node in float_model.graph.node:
        twin = q_nodes.get(node.name)
        if twin is None or twin.op_type != node.op_type:
            continue
        for i, name in enumerate(twin.input[: len(node.input)]):
            point = dequantized.get(name)
            if point is not None and point.float_tensor == node.input[i]:
                found.setdefault(node.name, []).append(_Edge(i, point, None))
            elif name in weights and node.input[i]:
                found.setdefault(node.name, []).append(_Edge(i, None, weights[name]))
    return found
