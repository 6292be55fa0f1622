"""A float model in which each quantization decision can be switched on or off at run time.

Used by the output-driven fallback (:mod:`onnxq.tuning`): every activation root of the plan
and every integer weight of the rewritten model becomes a *unit* with a boolean graph input
``mask``; the simulated value is ``If(mask, DQ(Q(x)), x)`` (a switched-off unit costs
nothing), so one onnxruntime session
answers "what does the output look like with exactly these units quantized" for any set of
units, without re-planning or re-loading anything. Activations are quantized with the plan's
qparams after the activation node they are fused with (a Relu stays in the graph, the Q/DQ
sits on its output: the same values as the fused clamp); weights use the very
DequantizeLinear nodes and codes of the rewritten model (GPTQ included; a codebook weight
its decode subgraph), with their float biases (bias corrections,
:mod:`onnxq.graph.bias`, are not simulated). Integer biases are
not simulated (their rounding error is far below the activation's), nor are embedding
tables; passthrough nodes run on the simulated float values, which equals running them on
the integers for MaxPool and shape ops (a linear Resize on integers also rounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxq.graph.edit import replace_input, topological
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.codebook import find_codebook
from onnxq.graph.plan import QuantPlan
from onnxq.graph.rules import GraphIndex, Role
from onnxq.quant import QParams

__all__ = ["Simulation", "Unit", "UnitKind", "build_simulation"]


class UnitKind(str, Enum):
    ACTIVATION = "activation"
    WEIGHT = "weight"


@dataclass(frozen=True)
class Unit:
    """One switchable quantization decision."""

    kind: UnitKind
    tensor: str  # the activation root, or the float weight initializer
    nodes: tuple[str, ...]  # nodes whose weight this is (weights), or () (activations)
    mask: str  # the scalar graph input that switches it

    def describe(self) -> str:
        if self.kind is UnitKind.ACTIVATION:
            return f"activation '{self.tensor}'"
        return f"weight '{self.tensor}' of {', '.join(self.nodes)}"


@dataclass(frozen=True)
class Simulation:
    model: onnx.ModelProto
    units: tuple[Unit, ...]

    def feed(self, active: frozenset[int] | set[int]) -> dict[str, np.ndarray]:
        """Mask inputs with the units of ``active`` (indices into ``units``) switched on."""
        on, off = np.array(True), np.array(False)
        return {u.mask: on if i in active else off for i, u in enumerate(self.units)}


def build_simulation(  # noqa: C901 - one walk over the graph; split it when it next changes
    model: onnx.ModelProto,
    plan: QuantPlan,
    quantized: onnx.ModelProto,
    qparams: Mapping[str, QParams],
) -> Simulation:
    """The switchable simulation of ``quantized`` (the rewrite of the prepared float
    ``model`` under ``plan`` with activation ``qparams``)."""
    sim = onnx.ModelProto()
    sim.CopyFrom(model)
    g = sim.graph
    names = NameFactory(sim)
    for t in quantized.graph.initializer:  # codes and scales of the rewritten model
        names.new(t.name)
    idx = GraphIndex(sim)
    by_name = {n.name: n for n in g.node}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    units: list[Unit] = []

    def mask_input(base: str) -> str:
        name = names.new(f"onnxq_mask_{base}")
        g.input.append(helper.make_tensor_value_info(name, TensorProto.BOOL, []))
        return name

    def switch(exact: str, quantized: list[onnx.NodeProto], mask: str, out: str) -> None:
        """out = If(mask, the ``quantized`` nodes' last output, exact): a switched-off
        unit costs nothing, a switched-on one its Q/DQ only."""
        then_out, else_out = names.new(f"{out}_sim_on"), names.new(f"{out}_sim_off")
        quantized[-1].output[0] = then_out
        then_g = helper.make_graph(
            quantized, names.new(f"{out}_sim_then"), [], [_float_info(then_out)]
        )
        else_g = helper.make_graph(
            [helper.make_node("Identity", [exact], [else_out], names.new(else_out))],
            names.new(f"{out}_sim_else"),
            [],
            [_float_info(else_out)],
        )
        node = helper.make_node(
            "If", [mask], [out], names.new(f"{out}_sim_if"), then_branch=then_g, else_branch=else_g
        )
        new_nodes.append(node)

    # activations: Q/DQ with the plan's qparams, mixed with the float value
    for root in plan.roots:
        qp = qparams[root]
        scale = names.new(f"{root}_sim_scale")
        zp = names.new(f"{root}_sim_zp")
        new_inits.append(numpy_helper.from_array(qp.scale.astype(np.float32), scale))
        new_inits.append(numpy_helper.from_array(qp.zero_point, zp))
        mask = mask_input(root)
        q, dq = names.new(f"{root}_sim_q"), names.new(f"{root}_sim_dq")
        producer = idx.producer.get(root)
        if producer is None:  # graph input: consumers read a new tensor
            exact, out = root, names.new(f"{root}_sim")
            for node in idx.consumers.get(root, []):
                if node.name not in plan.float_readers:
                    replace_input(node, root, out)
        else:  # the producer writes a renamed tensor; the mix writes the original name
            exact, out = names.new(f"{root}_sim_float"), root
            node = by_name[producer.name]
            for i, o in enumerate(node.output):
                if o == root:
                    node.output[i] = exact
            for reader in idx.consumers.get(root, []):
                if reader.name in plan.float_readers:
                    replace_input(reader, root, exact)
        qdq = [
            helper.make_node("QuantizeLinear", [exact, scale, zp], [q], q),
            helper.make_node("DequantizeLinear", [q, scale, zp], [dq], dq),
        ]
        switch(exact, qdq, mask, out)
        units.append(Unit(UnitKind.ACTIVATION, root, (), mask))

    # weights: the rewritten model's DequantizeLinear (or codebook decode subgraph), mixed
    # with the float initializer
    q_idx = GraphIndex(quantized)
    q_nodes = {n.name: n for n in quantized.graph.node}
    by_dq: dict[str, tuple[str, list[tuple[str, int]], list[onnx.NodeProto]]] = {}
    for use in plan.weights:
        if use.role is Role.BIAS or use.node not in q_nodes:
            continue
        dq_out = q_nodes[use.node].input[use.index]
        if dq_out not in by_dq:
            stored = _stored_weight(q_idx, dq_out)
            if stored is None:
                continue
            by_dq[dq_out] = (use.tensor, [], stored)
        by_dq[dq_out][1].append((use.node, use.index))
    copied: set[str] = set()
    for tensor, readers, stored in by_dq.values():
        copies: list[onnx.NodeProto] = []
        for node in stored:  # a chain: each node reads the one before (Gather: input 1)
            for name in node.input:
                if name in q_idx.initializers and name not in copied:
                    new_inits.append(q_idx.initializers[name])
                    copied.add(name)
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            if copies:
                copy.input[1 if node.op_type == "Gather" else 0] = copies[-1].output[0]
            if len(copies) < len(stored) - 1:  # the last output is named by switch()
                copy.output[0] = names.new(copy.output[0])
            copies.append(copy)
        nodes = tuple(dict.fromkeys(n for n, _ in readers))
        mask = mask_input(tensor)
        out = names.new(f"{tensor}_sim")
        switch(tensor, copies, mask, out)
        for node_name, index in readers:
            by_name[node_name].input[index] = out
        units.append(Unit(UnitKind.WEIGHT, tensor, nodes, mask))

    position = {n.name: i for i, n in enumerate(model.graph.node)}
    made_by = {o: position[n.name] for n in model.graph.node for o in n.output}

    def place(unit: Unit) -> int:  # neighbours in the graph stay neighbours in the search
        if unit.kind is UnitKind.ACTIVATION:
            return made_by.get(unit.tensor, -1)
        return min(position[n] for n in unit.nodes)

    ordered = topological([*g.node, *new_nodes], g)
    del g.node[:]
    g.node.extend(ordered)
    g.initializer.extend(new_inits)
    return Simulation(sim, tuple(sorted(units, key=place)))


def _stored_weight(idx: GraphIndex, weight: str) -> list[onnx.NodeProto] | None:
    """The nodes that make stored weight ``weight`` of the rewritten model from its
    initializers: its DequantizeLinear, or its codebook decode subgraph; else None."""
    node = idx.producer.get(weight)
    if node is not None and node.op_type == "DequantizeLinear":
        return [node]
    book = find_codebook(idx, weight)
    return None if book is None else list(book.nodes)


def _float_info(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
