"""``onnxq inspect``: what a model holds and what onnxq would quantize in it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxq.config import QuantConfig
from onnxq.graph.model_io import load_model
from onnxq.graph.plan import NodeDecision, make_plan
from onnxq.graph.summary import ModelSummary, summarize
from onnxq.prepare import prepare

__all__ = ["Inspection", "inspect_model"]


@dataclass(frozen=True)
class Inspection:
    path: str
    summary: ModelSummary
    preparation: tuple[str, ...]
    decisions: tuple[NodeDecision, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "onnxq-inspect",
            "schema_version": 1,
            "path": self.path,
            **asdict(self.summary),
            "preparation": list(self.preparation),
            "nodes_after_preparation": [asdict(d) for d in self.decisions],
            "quantized_nodes": sum(d.action == "quantize" for d in self.decisions),
        }


def inspect_model(path: str | Path, config: QuantConfig | None = None) -> Inspection:
    model = load_model(path)
    prepared = prepare(model)
    plan = make_plan(prepared.model, config or QuantConfig())
    return Inspection(str(path), summarize(model), prepared.steps, plan.decisions)
