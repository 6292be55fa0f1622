"""The calibration pass: run data through onnxruntime once, batch by batch, feeding
every needed activation to its observer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from onnxq._version import __version__
from onnxq.calibration.estimate import finish, make_observer
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.ranges import RangesFile
from onnxq.config import CalibrationConfig, Granularity
from onnxq.data import Dataset, open_dataset
from onnxq.graph.model_io import input_specs, load_model
from onnxq.graph.outputs import with_outputs
from onnxq.graph.plan import candidate_tensors, channel_axis
from onnxq.graph.rules import GraphIndex
from onnxq.prepare import PreparedModel, prepare
from onnxq.runtime import Runner

__all__ = ["Progress", "activation_bytes", "affordable_batch", "calibrate", "observe"]

log = logging.getLogger("onnxq")

Progress = Callable[[str, int, int], None]  # (stage, done, in all)


def calibrate(
    model_path: str | Path,
    data_path: str | Path,
    config: CalibrationConfig | None = None,
    *,
    threads: int = 0,
    progress: Progress | None = None,
) -> RangesFile:
    """Ranges of every activation tensor any quantization setting may need."""
    config = config or CalibrationConfig()
    model = load_model(model_path)
    dataset = open_dataset(data_path, input_specs(model))
    prepared = prepare(model)
    tensors = candidate_tensors(prepared.model)
    ranges = observe(prepared, dataset, tensors, config, threads=threads, progress=progress)
    return RangesFile(
        model_fingerprint=prepared.fingerprint,
        model_path=str(model_path),
        method=config.method.value,
        params={**config.params, "batch_size": config.batch_size},
        granularity=config.granularity.value,
        samples=dataset.num_samples,
        onnxq_version=__version__,
        tensors=ranges,
    )


OUTPUT_BUDGET = 64 * 2**20  # bytes of observed activations fetched by one onnxruntime run


def activation_bytes(model: onnx.ModelProto, dataset: Dataset, *, threads: int = 0) -> int:
    """Bytes of all float activations of ``model`` (prepared) on one sample of
    ``dataset``: a measure of what one sample costs to run and to hold."""
    tensors = candidate_tensors(model)
    if not tensors:
        return 0
    runner = Runner(with_outputs(model, tensors), threads=threads, what="model")
    return _sample_bytes(runner, dataset, tensors)


def affordable_batch(
    model: onnx.ModelProto,
    dataset: Dataset,
    requested: int,
    *,
    threads: int = 0,
    sample_bytes: int | None = None,
) -> int:
    """The batch size for running ``model`` (prepared) on ``dataset`` within the memory
    budget, judged by the size of all its float activations on one sample (measured
    unless ``sample_bytes`` gives it)."""
    if sample_bytes is None:
        sample_bytes = activation_bytes(model, dataset, threads=threads)
    return _batch_for(sample_bytes, requested)


def _sample_bytes(runner: Runner, dataset: Dataset, tensors: Sequence[str]) -> int:
    probe = next(dataset.batches(1))
    per_sample = sum(v.nbytes for v in runner.run(probe.feed, list(tensors)).values())
    return per_sample // max(probe.size, 1)


def _batch_for(per_sample: int, requested: int) -> int:
    """``requested``, lowered so that one run's observed activations fit OUTPUT_BUDGET.
    Ranges do not depend on the batch size, and a run's outputs are the only activations
    held, so memory stays flat in the number of samples."""
    affordable = max(1, min(requested, OUTPUT_BUDGET // max(per_sample, 1)))
    if affordable < requested:
        log.info(
            "calibrating %d samples per run (%.0f MB of activations per sample)",
            affordable,
            per_sample / 2**20,
        )
    return affordable


def observe(
    prepared: PreparedModel,
    dataset: Dataset,
    tensors: Sequence[str],
    config: CalibrationConfig,
    *,
    threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, TensorRange]:
    """Stream ``dataset`` through the model once and return each tensor's range."""
    idx = GraphIndex(prepared.model)
    channel = config.granularity is Granularity.CHANNEL
    observers = {
        t: make_observer(config, channel_axis(t, idx) if channel else None) for t in tensors
    }
    log.info("observing %d tensors with %s", len(tensors), config.method.value)
    runner = Runner(with_outputs(prepared.model, tensors), threads=threads, what="model")
    batch_size = _batch_for(_sample_bytes(runner, dataset, tensors), config.batch_size)
    done = 0
    batches = dataset.num_batches(batch_size)
    for batch in dataset.batches(batch_size):
        values = runner.run(batch.feed, list(tensors))
        for name, value in values.items():
            observers[name].update(value, batches)
        del values  # before the next run allocates its outputs
        done += batch.size
        if progress is not None:
            progress("calibrating", done, dataset.num_samples)
    ranges = {}
    for i, (name, obs) in enumerate(observers.items()):
        ranges[name] = finish(obs, config)
        if progress is not None and config.method.uses_histogram:
            progress(f"{config.method.value} search", i + 1, len(observers))
    return ranges
