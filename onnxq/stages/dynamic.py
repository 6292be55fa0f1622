"""Stage (``--mode dynamic``): weights stored as integers ahead of time, activation
ranges computed at run time (:mod:`onnxq.graph.rewrite_dynamic`), embedding tables as
int8 rows."""

from __future__ import annotations

import onnx

from onnxq.config import QuantConfig
from onnxq.graph.candidate import Candidate
from onnxq.graph.passes.embeddings import quantize_embeddings
from onnxq.graph.rewrite_dynamic import dynamic_decisions, rewrite_dynamic

__all__ = ["DYNAMIC_SOURCE", "quantize_dynamic"]

DYNAMIC_SOURCE = "dynamic (computed at run time)"


def quantize_dynamic(model: onnx.ModelProto, config: QuantConfig) -> Candidate:
    """The dynamically quantized candidate of ``model`` (prepared)."""
    decisions = dynamic_decisions(model, config)
    result = rewrite_dynamic(model, decisions, config)
    result = result.then(quantize_embeddings(result.model, decisions))
    return Candidate(decisions, result)
