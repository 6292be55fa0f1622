"""Where the parts of a concatenated graph output begin and end: outputs produced by a
Concat along a non-batch axis whose inputs have known sizes along that axis (read from
the graph's shapes; inferred when the model has none). The per-part rule that decides
whether they are judged apart is :mod:`onnxq.report.task.parts`."""

from __future__ import annotations

import onnx

from onnxq.graph.passes.shapes import infer_shapes
from onnxq.graph.rules import GraphIndex, attribute

__all__ = ["Bounds", "concat_parts"]

Bounds = tuple[int, tuple[tuple[int, int], ...]]  # the Concat's axis, (start, stop) of each part


def concat_parts(model: onnx.ModelProto) -> dict[str, Bounds]:
    """Graph output → the Concat's axis and its parts' bounds (in order), for outputs made
    by such a Concat."""
    idx = GraphIndex(model)
    concats = {
        o.name: idx.producer[o.name]
        for o in model.graph.output
        if o.name in idx.producer and idx.producer[o.name].op_type == "Concat"
    }
    if not concats:
        return {}
    shapes = _shapes(model)
    if not all(i in shapes for n in concats.values() for i in n.input):
        shapes = _shapes(infer_shapes(model).model)
    out: dict[str, Bounds] = {}
    for name, node in concats.items():
        dims = [shapes.get(i) for i in node.input]
        if len(dims) < 2 or any(d is None for d in dims):
            continue
        rank = len(dims[0] or ())
        axis = int(attribute(node, "axis", 0))
        axis = axis + rank if axis < 0 else axis
        sizes = [d[axis] if d is not None and len(d) == rank else None for d in dims]
        if axis == 0 or any(s is None or s <= 0 for s in sizes):
            continue
        bounds, start = [], 0
        for size in sizes:
            assert size is not None
            bounds.append((start, start + size))
            start += size
        out[name] = (axis, tuple(bounds))
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    found: dict[str, tuple[int | None, ...]] = {}
    g = model.graph
    for vi in (*g.value_info, *g.input, *g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            found[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            )
    for init in g.initializer:
        found[init.name] = tuple(init.dims)
    return found
