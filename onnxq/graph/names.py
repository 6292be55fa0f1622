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
        for node in g.node:
            used.add(node.name)
            used.update(node.input)
            used.update(node.output)
        self._used = used

    def new(self, base: str) -> str:
        """``base`` itself if unused, else ``base_1``, ``base_2``, …"""
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name
