"""Pass: give every unnamed or duplicate-named node a unique name (``--exclude``, recipes
and reports refer to nodes by name)."""

from __future__ import annotations

import onnx

from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["name_nodes"]


def name_nodes(model: onnx.ModelProto) -> PassResult:
    """``model`` with unique node names (unnamed nodes get ``OpType_index``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    seen: set[str] = set()
    changes = []
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = names.new(f"{node.op_type}_{i}")
            changes.append(Change(ChangeKind.NODE_NAMED, node.name))
        seen.add(node.name)
    detail = f"named {len(changes)} nodes" if changes else ""
    return PassResult(out, bool(changes), tuple(changes), detail)
