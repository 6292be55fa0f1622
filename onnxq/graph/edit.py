"""Small edits shared by the graph passes: rewiring inputs and outputs, restoring a
topological order, dropping initializers nobody reads."""

from __future__ import annotations

import heapq

import onnx

from onnxq.graph.rules import node_reads

__all__ = ["drop_unused_initializers", "replace_input", "replace_output", "topological"]


def replace_input(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new
    for attr in node.attribute:  # outer-scope references inside subgraphs
        if attr.type == onnx.AttributeProto.GRAPH:
            for sub in attr.g.node:
                replace_input(sub, old, new)


def replace_output(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, name in enumerate(node.output):
        if name == old:
            node.output[i] = new


def topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Kahn's order, stable with respect to the given order."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting: dict[int, int] = {}
    dependents: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producer[t] for t in node_reads(n) if t not in available and t in producer}
        waiting[i] = len(deps)
        for d in deps:
            dependents.setdefault(d, []).append(i)
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in dependents.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise RuntimeError("rewrite produced a cycle; this is a bug in onnxq")
    return order


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove float initializers that no node reads any more (and their graph inputs)."""
    used: set[str] = {o.name for o in model.graph.output}
    for node in model.graph.node:
        used.update(node_reads(node))
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [v for v in model.graph.input if v.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
