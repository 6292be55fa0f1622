"""Exposing intermediate tensors as graph outputs, for calibration."""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import helper

__all__ = ["with_outputs"]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (linear in graph size)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    present = {o.name for o in g.output}
    known = {vi.name: vi for vi in g.value_info}
    known.update({vi.name: vi for vi in g.input})
    for name in names:
        if name in present:
            continue
        present.add(name)
        if name in known:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(known[name])
        else:
            vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        g.output.append(vi)
    return out
