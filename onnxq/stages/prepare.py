"""Stage: the model onnxq plans on. Built on what onnx and onnxruntime provide: Constant
nodes to initializers, opset upgrade (per-axis Q/DQ needs 13), onnxruntime's basic graph
optimizations (constant folding, Conv+BatchNorm and other semantics-preserving fusions),
then onnxq's own two (a constant Mul/Add after a convolution folded into it, arithmetic
hard-sigmoid and hard-swish written as HardSigmoid), unique node names, shape inference.
A model with external data skips the optimizations (its weights would come back into
memory whole; see docs/large_models.md).

Calibration and quantization prepare a model the same way, so tensor names in a ranges
file match the graph the quantizer plans on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxq.graph.external import uses_external_data
from onnxq.graph.model_io import fingerprint
from onnxq.graph.passes.constants import constants_to_initializers
from onnxq.graph.passes.fold_affine import fold_affine
from onnxq.graph.passes.hard_sigmoid import hard_sigmoids
from onnxq.graph.passes.node_names import name_nodes
from onnxq.graph.passes.opset import upgrade_opset
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.passes.shapes import infer_shapes
from onnxq.runtime import optimize_model

__all__ = ["MIN_OPSET", "PreparedModel", "prepare"]

MIN_OPSET = 13


@dataclass(frozen=True)
class PreparedModel:
    model: onnx.ModelProto
    # of the original model, as the user gave it ("" when not asked for: serialising a large
    # model to digest it costs MiniLM 0.19 s, and only a ranges file is checked against it)
    fingerprint: str
    steps: tuple[str, ...]
    # tensors the user's model gives shapes for: the written model keeps only these (the
    # user's proto itself is not kept: its weights would stay in memory for the whole run)
    value_info: frozenset[str]


def _optimize(model: onnx.ModelProto) -> PassResult:
    detail = "onnxruntime basic optimizations"
    return PassResult(optimize_model(model), True, (Change(ChangeKind.OPTIMIZED, ""),), detail)


def _skip_optimize(model: onnx.ModelProto) -> PassResult:
    return PassResult(model, False, (), "onnxruntime basic optimizations skipped (external data)")


def prepare(
    model: onnx.ModelProto,
    *,
    min_opset: int = MIN_OPSET,
    optimize: bool = True,
    fingerprinted: bool = True,
) -> PreparedModel:
    """The model onnxq plans on. Outputs are unchanged beyond float rounding.

    ``min_opset`` is 13 (per-axis Q/DQ) or 21 (4- and 16-bit types, blocked Q/DQ);
    ``fingerprinted``: digest the original model (for a ranges file)."""

    def opset(m: onnx.ModelProto) -> PassResult:
        return upgrade_opset(m, min_opset)

    passes: list[Callable[[onnx.ModelProto], PassResult]] = [constants_to_initializers, opset]
    if optimize and uses_external_data(model):
        # its graph would come back from onnxruntime with every weight in memory
        passes.append(_skip_optimize)
    elif optimize:
        passes.append(_optimize)
        passes += [fold_affine, hard_sigmoids]
    passes += [name_nodes, infer_shapes]
    result = PassResult.unchanged(model)
    steps: list[str] = []
    for run in passes:
        step = run(result.model)
        result = result.then(step)
        if step.detail:
            steps.append(step.detail)
    value_info = frozenset(vi.name for vi in model.graph.value_info)
    digest = fingerprint(model) if fingerprinted else ""
    return PreparedModel(result.model, digest, tuple(steps), value_info)
