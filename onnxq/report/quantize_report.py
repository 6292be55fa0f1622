"""What one quantize run made and what it cost: the data behind the ``onnxq-quantize``
JSON document (:mod:`onnxq.report.schema`) and the rendered summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.graph.plan import NodeDecision
from onnxq.report.fidelity import Fidelity
from onnxq.report.preflight import RuntimePreview
from onnxq.report.schema import quantize_document
from onnxq.tuning.fit import FitReport

__all__ = ["QuantizeReport"]


@dataclass(frozen=True)
class QuantizeReport:
    model_path: str
    output_path: str
    float_bytes: int
    quantized_bytes: int
    quantized_nodes: int
    quantized_weights: int
    qdq_pairs: int
    decisions: tuple[NodeDecision, ...]
    ranges_source: str
    preparation: tuple[str, ...]
    runtime: RuntimePreview
    fidelity: Fidelity | None
    fidelity_data: str | None
    float_biases: tuple[str, ...] = ()
    check: FitReport | None = None  # the output check on calibration samples
    corrected_biases: tuple[str, ...] = ()  # weights-only nodes whose bias was corrected
    folded_weights: int = 0  # integer weights of float nodes dequantized at load
    settings: dict[str, Any] = field(default_factory=dict)  # every setting of the run
    # what equalisation, AdaRound and codebooks did, node by node or pair by pair
    methods: tuple[Change, ...] = ()
    float_change: Fidelity | None = None  # equalisation's ReLU6 -> Relu, float vs float

    def method_changes(self, kind: ChangeKind) -> tuple[Change, ...]:
        return tuple(c for c in self.methods if c.kind is kind)

    @property
    def size_ratio(self) -> float:
        return self.quantized_bytes / self.float_bytes if self.float_bytes else 0.0

    @property
    def integer_kernels(self) -> int:
        return self.runtime.integer_kernels

    @property
    def float_kernels(self) -> tuple[str, ...]:
        return self.runtime.float_kernels

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (:func:`onnxq.report.schema.quantize_document`)."""
        return quantize_document(self)
