"""A quantized candidate: the plan it was rewritten from, the activation qparams, and the
chained result of every graph pass that made it (counts are read off its changes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from onnxq.graph.passes.result import ChangeKind, PassResult
from onnxq.graph.plan import NodeDecision, QuantPlan
from onnxq.quant import QParams

__all__ = ["Candidate"]


@dataclass(frozen=True)
class Candidate:
    decisions: tuple[NodeDecision, ...]
    result: PassResult  # the model to write, and every change that made it
    plan: QuantPlan | None = None  # static and weights-only; None for dynamic
    qparams: Mapping[str, QParams] | None = None  # activation qparams of plan.roots
    # the same model with every integer weight behind a DequantizeLinear, which the
    # output check's simulation switches (``result`` may have folded some)
    simulated: onnx.ModelProto | None = None

    @property
    def model(self) -> onnx.ModelProto:
        return self.result.model

    @property
    def switchable(self) -> onnx.ModelProto:
        return self.result.model if self.simulated is None else self.simulated

    @property
    def quantized_nodes(self) -> int:
        return self.result.count(ChangeKind.NODE_QUANTIZED) + self.result.count(
            ChangeKind.EMBEDDING_QUANTIZED
        )

    @property
    def quantized_weights(self) -> int:
        """Weights stored as integers, as codebook indices or as int8 embedding rows."""
        kinds = (
            ChangeKind.WEIGHT_QUANTIZED,
            ChangeKind.WEIGHT_CODEBOOK,
            ChangeKind.EMBEDDING_QUANTIZED,
        )
        return sum(self.result.count(kind) for kind in kinds)

    @property
    def qdq_pairs(self) -> int:
        return self.result.count(ChangeKind.QDQ_PAIR)

    @property
    def activation_codes(self) -> dict[str, str]:
        """Integer tensor of each quantized activation -> the float tensor it holds (the
        rewrite's record; :mod:`onnxq.stages.save` writes it into the model)."""
        return {
            c.name: c.detail for c in self.result.changes if c.kind is ChangeKind.ACTIVATION_CODES
        }

    @property
    def float_biases(self) -> tuple[str, ...]:
        return self.result.names(ChangeKind.BIAS_KEPT_FLOAT)

    @property
    def corrected_biases(self) -> tuple[str, ...]:
        return self.result.names(ChangeKind.BIAS_CORRECTED)

    @property
    def folded_weights(self) -> int:
        return self.result.count(ChangeKind.WEIGHT_FOLDED)
