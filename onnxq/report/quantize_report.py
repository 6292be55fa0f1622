"""What one quantize run made and what it cost: the data behind the ``onnxq-quantize``
JSON document (:mod:`onnxq.report.schema`) and the rendered summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.graph.plan import NodeDecision
from onnxq.report.fidelity import Fidelity
from onnxq.report.latency import LatencyCheck
from onnxq.report.preflight import RuntimePreview
from onnxq.report.schema import quantize_document
from onnxq.tuning.fit import FitReport, describe_target

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
    ranges_warnings: tuple[str, ...] = ()  # --ranges ranges that miss the data's values
    latency: LatencyCheck | None = None  # the written model timed against float
    # the input (attention_mask) whose 0s left padded positions out of the statistics
    # behind the written weights (bias-correction means, GPTQ / AdaRound moments)
    padding_mask: str | None = None

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

    @property
    def warnings(self) -> tuple[str, ...]:
        """What a CI job should know (``quantize --strict`` exits 1 on any): the output
        check missed its target; onnxruntime will likely run the model slower than float;
        a ranges file's range leaves most of a tensor's values outside."""
        out = list(self.ranges_warnings)
        if self.check is not None and not self.check.met:
            out.append(_missed(self.check))
        rt = self.runtime
        slower = None if self.latency is None else self.latency.warning()
        if slower is not None:
            out.append(slower)
        if rt.slower_than_float_risk:
            out.append(
                f"onnxruntime's CPU provider runs {rt.standalone_qdq} stand-alone Q/DQ "
                f"conversions and only {rt.integer_kernels} integer kernels: the quantized "
                "model is likely slower than float (measure with onnxq compare)"
            )
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (:func:`onnxq.report.schema.quantize_document`)."""
        return quantize_document(self)


def _missed(check: FitReport) -> str:
    t, after = check.target, check.after
    got = f"SQNR {after.sqnr_db:.1f} dB"
    if t.task.goals:
        got = ", ".join(f"{g.name} {after.task.get(g.name, math.nan):.4g}" for g in t.task.goals)
    elif after.worst_top1 is not None:
        got += f", top-1 {100 * after.worst_top1:.2f}%"
    why = "" if check.unsearched is None else f" ({check.unsearched})"
    return (
        f"the output check missed its target ({describe_target(t)}) "
        f"on {after.samples} calibration samples: {got}{why}"
    )
