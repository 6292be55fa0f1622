"""Pass: ONNX shape inference, so every tensor's element type and rank are known."""

from __future__ import annotations

import onnx
from onnx import shape_inference

from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["infer_shapes"]


def infer_shapes(model: onnx.ModelProto) -> PassResult:
    """``model`` with inferred value_info; unchanged (with a note) when inference fails."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: unknown types only mean fewer candidates
        return PassResult(model, False, (), "shape inference failed")
    return PassResult(inferred, True, (Change(ChangeKind.SHAPES_INFERRED, ""),))
