"""Moments of the inputs of weighted nodes, streamed over the calibration data: second
moments ``Σ xᵀx`` of MatMul / Gemm inputs (for GPTQ; one K × K float64 matrix per input)
and per-channel means (for bias correction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxq.calibration.calibrate import Progress
from onnxq.data import Dataset
from onnxq.graph.outputs import with_outputs
from onnxq.prepare import PreparedModel
from onnxq.runtime import Runner

__all__ = ["input_means", "input_moments"]


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


def input_means(
    model: onnx.ModelProto,
    dataset: Dataset,
    axes: Mapping[str, int],
    *,
    samples: int,
    batch_size: int,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Per-channel means of tensors of ``model`` (prepared, float) over the first
    ``samples`` samples (whole batches): the mean along every axis but ``axes[name]``."""
    names = list(axes)
    if not names:
        return {}
    runner = Runner(with_outputs(model, names), threads=threads, what="model")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    done = 0
    for batch in dataset.batches(batch_size):
        for name, value in runner.run(batch.feed, names).items():
            if np.ndim(value) < 2 or not np.issubdtype(np.asarray(value).dtype, np.floating):
                continue
            arr = np.asarray(value, np.float64)
            channels = np.moveaxis(arr, axes[name] % arr.ndim, -1)
            rows = channels.reshape(-1, channels.shape[-1])
            sums[name] = sums.get(name, 0.0) + rows.sum(axis=0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
        done += batch.size
        if done >= samples:
            break
    return {n: sums[n] / counts[n] for n in sums if counts[n]}
