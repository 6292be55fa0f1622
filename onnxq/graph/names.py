"""The one helper that makes new, collision-free tensor and node names."""

from __future__ import annotations

import onnx

__all__ = ["NameFactory"]


class NameFactory:
    """Hands out names not yet used by any tensor or node of a graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        used: set[str] = set()
        used.update(t.name for t in g.initializer)
        used.update(v.name for v in (*g.input, *g.output, *g.value_info))
        _collect(g, used)
        self._used = used

    def new(self, base: str) -> str:
        """``base`` itself if unused, else ``base_1``, ``base_2``, …"""
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name


def _collect(graph: onnx.GraphProto, used: set[str]) -> None:
    """Every node and tensor name in ``graph`` and, recursively, in its subgraphs."""
    used.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
    used.update(t.name for t in graph.initializer)
    for node in graph.node:
        used.add(node.name)
        used.update(node.input)
        used.update(node.output)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _collect(sub, used)
