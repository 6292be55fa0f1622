"""Graph outputs and value_info: exposing intermediate tensors for calibration, and
trimming inferred shapes from a written model."""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import helper

__all__ = ["add_outputs", "restrict_value_info", "with_outputs"]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (linear in graph size)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    add_outputs(out, names)
    return out


def add_outputs(model: onnx.ModelProto, names: Iterable[str]) -> None:
    """Make ``names`` graph outputs of ``model`` (in place), with their value_info's type
    and shape when the graph has one."""
    g = model.graph
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


def restrict_value_info(model: onnx.ModelProto, keep: Iterable[str]) -> None:
    """Drop value_info entries not named in ``keep`` (shapes inferred during preparation
    are not worth their bytes in the written model; onnxruntime infers them again)."""
    wanted = set(keep)
    entries = [vi for vi in model.graph.value_info if vi.name in wanted]
    del model.graph.value_info[:]
    model.graph.value_info.extend(entries)
