"""Model preparation before calibration and quantization, built on what onnx and
onnxruntime provide: Constant nodes to initializers, opset upgrade (per-axis Q/DQ
needs 13), onnxruntime's basic graph optimizations (constant folding, Conv+BatchNorm
and other semantics-preserving fusions), unique node names, shape inference.

Calibration and quantization prepare a model the same way, so tensor names in a
ranges file match the graph the quantizer plans on.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxq.graph.model_io import fingerprint
from onnxq.graph.prepare import constants_to_initializers, infer_shapes, name_nodes, upgrade_opset
from onnxq.runtime import optimize_model

__all__ = ["MIN_OPSET", "PreparedModel", "prepare"]

MIN_OPSET = 13


@dataclass(frozen=True)
class PreparedModel:
    original: onnx.ModelProto
    model: onnx.ModelProto
    fingerprint: str  # of the original model, as the user gave it
    steps: tuple[str, ...]


def prepare(
    model: onnx.ModelProto, *, min_opset: int = MIN_OPSET, optimize: bool = True
) -> PreparedModel:
    """The model onnxq plans on. Outputs are unchanged beyond float rounding.

    ``min_opset`` is 13 (per-axis Q/DQ) or 21 (4- and 16-bit types, blocked Q/DQ)."""
    steps: list[str] = []
    current = model
    for step in (constants_to_initializers, lambda m: upgrade_opset(m, min_opset)):
        result = step(current)
        current = result.model
        if result.changed:
            steps.append(result.detail)
    if optimize:
        current = optimize_model(current)
        steps.append("onnxruntime basic optimizations")
    for step in (name_nodes, infer_shapes):
        result = step(current)
        current = result.model
        if result.detail:
            steps.append(result.detail)
    return PreparedModel(model, current, fingerprint(model), tuple(steps))
