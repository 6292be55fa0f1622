"""Second moments ``Σ xᵀx`` of the inputs of weighted MatMul / Gemm nodes, streamed over
the calibration data (for GPTQ). Memory: one K × K float64 matrix per input tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxq.calibration.calibrate import Progress
from onnxq.data import Dataset
from onnxq.graph.outputs import with_outputs
from onnxq.prepare import PreparedModel
from onnxq.runtime import Runner

__all__ = ["input_moments"]


def input_moments(
    prepared: PreparedModel,
    dataset: Dataset,
    tensors: Sequence[str],
    *,
    batch_size: int,
    threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """``Σ xᵀx`` over all rows of each tensor (its last axis is the reduction width)."""
    runner = Runner(with_outputs(prepared.model, tensors), threads=threads, what="model")
    sums: dict[str, np.ndarray] = {}
    done = 0
    for batch in dataset.batches(batch_size):
        for name, value in runner.run(batch.feed, list(tensors)).items():
            rows = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
            sums[name] = sums.get(name, 0.0) + rows.T @ rows
        done += batch.size
        if progress is not None:
            progress("GPTQ statistics", done, dataset.num_samples)
    return sums
