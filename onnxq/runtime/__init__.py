"""The only part of onnxq that talks to onnxruntime."""

from onnxq.runtime.memory import return_freed
from onnxq.runtime.session import (
    OptLevel,
    Runner,
    Spooled,
    loadable,
    measure_latency,
    op_counts,
    optimize_model,
    optimized_nodes,
    optimized_op_types,
    owned,
    runtime_version,
)

__all__ = [
    "OptLevel",
    "Runner",
    "Spooled",
    "loadable",
    "op_counts",
    "measure_latency",
    "optimize_model",
    "optimized_nodes",
    "optimized_op_types",
    "owned",
    "return_freed",
    "runtime_version",
]
