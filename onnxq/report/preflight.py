"""What onnxruntime's CPU provider will make of a quantized model: which quantized nodes
run as integer kernels, which fall back to float kernels, and how many Q/DQ conversions
remain at run time (each a pass over a tensor that can cost more than it saves)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxq.config import QuantConfig, Scheme
from onnxq.graph.plan import NodeDecision, QuantPlan
from onnxq.graph.rewrite_qdq import rewrite_qdq
from onnxq.quant import compute_qparams
from onnxq.runtime import op_counts, optimized_nodes

__all__ = ["RuntimePreview", "is_integer_kernel", "preview", "runtime_preview"]

_INTEGER_OPS = frozenset(
    {
        "QGemm",
        "MatMulInteger",
        "ConvInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    }
)


def is_integer_kernel(op_type: str) -> bool:
    """True for onnxruntime kernels that compute on integers (``domain:`` prefix ignored)."""
    op = op_type.rsplit(":", 1)[-1]
    return op.startswith("QLinear") or op in _INTEGER_OPS or op.startswith("Nhwc") and "Pool" in op


@dataclass(frozen=True)
class RuntimePreview:
    op_types: dict[str, int]
    float_kernels: tuple[str, ...] = field(default_factory=tuple)
    standalone_qdq: int = 0

    @property
    def integer_kernels(self) -> int:
        return sum(n for op, n in self.op_types.items() if is_integer_kernel(op))

    @property
    def slower_than_float_risk(self) -> bool:
        """More stand-alone Q/DQ conversions than integer kernels: the conversions are
        likely to cost more than the integer kernels save."""
        return self.standalone_qdq > self.integer_kernels

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer_kernels": self.integer_kernels,
            "op_types": self.op_types,
            "float_kernels": list(self.float_kernels),
            "standalone_qdq": self.standalone_qdq,
            "slower_than_float_risk": self.slower_than_float_risk,
        }


def runtime_preview(
    runs: Sequence[tuple[str, str]], decisions: tuple[NodeDecision, ...]
) -> RuntimePreview:
    """Classify a quantized model as onnxruntime's CPU provider runs it, from the
    (name, op type) of the nodes of its optimized graph."""
    ops = dict(sorted(op_counts(runs).items()))
    in_float = set(runs)
    fallback = tuple(d.name for d in decisions if d.quantized and (d.name, d.op_type) in in_float)
    qdq = sum(op in ("QuantizeLinear", "DequantizeLinear") for _, op in runs)
    return RuntimePreview(ops, fallback, qdq)


def preview(model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig) -> RuntimePreview:
    """The runtime preview of the quantization ``plan`` would write, without data: the
    kernels onnxruntime picks depend on the graph, not on the range values, so every
    activation gets a placeholder range."""
    symmetric = config.activations.scheme is Scheme.SYM
    qparams = {
        t: compute_qparams(
            np.float32(-1.0),
            np.float32(1.0),
            config.activations.qtype,
            symmetric=symmetric,
            restricted=config.restricted,
        )
        for t in plan.roots
    }
    result = rewrite_qdq(model, plan, qparams, config)
    return runtime_preview(optimized_nodes(result.model), plan.decisions)
