"""``onnxq inspect``: what a model holds and what onnxq would quantize in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxq.config import QuantConfig
from onnxq.graph.model_io import load_model
from onnxq.graph.plan import NodeDecision, make_plan
from onnxq.graph.summary import ModelSummary, summarize
from onnxq.report.preflight import RuntimePreview, preview
from onnxq.report.schema import inspect_document
from onnxq.stages.prepare import prepare

__all__ = ["Inspection", "inspect_model"]


@dataclass(frozen=True)
class Inspection:
    path: str
    summary: ModelSummary
    preparation: tuple[str, ...]
    decisions: tuple[NodeDecision, ...]
    runtime: RuntimePreview | None = None  # with target "cpu"

    def to_dict(self) -> dict[str, Any]:
        return inspect_document(self)


def inspect_model(
    path: str | Path, config: QuantConfig | None = None, *, target: str | None = None
) -> Inspection:
    """Summary and quantization plan of a model; with ``target="cpu"`` also which
    quantized nodes onnxruntime's CPU provider will run as integer or float kernels."""
    config = config or QuantConfig()
    model = load_model(path)
    prepared = prepare(model, min_opset=config.min_opset)
    plan = make_plan(prepared.model, config)
    runtime = preview(prepared.model, plan, config) if target == "cpu" else None
    return Inspection(str(path), summarize(model), prepared.steps, plan.decisions, runtime)
