"""``onnxq diagnose``: where a quantized model loses accuracy, tensor by tensor.

For every quantized activation of the quantized model (matched to the float model's
tensor by :mod:`onnxq.graph.qdq_points`), both models run on the same data, one batch at
a time, with the tensors as extra outputs: the float model's values and the quantized
model's integer codes (fetching them keeps onnxruntime's integer kernels), dequantized
with the point's scale and zero point. Per tensor, running sums give SQNR, cosine, max
error, the share of values clipped by the range and the observed min/max
(:mod:`onnxq.report.layer_stats`); the report lists them worst first. Optionally, the
quantized nodes are ranked by what each costs the outputs alone
(:mod:`onnxq.report.sensitivity`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from onnxq.calibration.collect import batch_for
from onnxq.config import CalibrationConfig
from onnxq.data import Dataset, DataSource, Preprocess, as_source
from onnxq.errors import ModelError
from onnxq.graph.metadata import SETTINGS_KEY, recorded
from onnxq.graph.model_io import input_specs, load_model
from onnxq.graph.node_switches import build_node_switches
from onnxq.graph.outputs import with_outputs
from onnxq.graph.qdq_points import (
    PointMatch,
    QdqPoint,
    float_tensor_names,
    match_points,
    recorded_tensors,
)
from onnxq.report.layer_stats import LayerError, LayerStats
from onnxq.report.schema import diagnose_document
from onnxq.report.sensitivity import Sensitivity, measure_sensitivity
from onnxq.runtime import Runner
from onnxq.stages.prepare import prepare
from onnxq.tuning.check import check_samples

__all__ = ["REPORT_SAMPLES", "DiagnoseReport", "diagnose", "recorded_settings"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

REPORT_SAMPLES = 256  # samples of the per-layer section of quantize's and compare's --html


@dataclass(frozen=True)
class DiagnoseReport:
    float_path: str
    quantized_path: str
    data: str
    samples: int
    matching: str  # "record" (onnxq.tensors) or "structure"
    float_prepared: bool  # the float model was prepared as quantize does, to match names
    layers: tuple[LayerError, ...]  # worst first
    unmatched: tuple[str, ...]  # integer tensors with no float tensor to compare
    settings: dict[str, Any] | None  # the quantized model's recorded onnxq.settings
    sensitivity: Sensitivity | None = None

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON document (:func:`onnxq.report.schema.diagnose_document`)."""
        return diagnose_document(self)


@dataclass(frozen=True)
class _Models:
    float_model: onnx.ModelProto
    quantized: onnx.ModelProto
    match: PointMatch
    prepared: bool


def diagnose(
    float_path: str | Path,
    quantized_path: str | Path,
    data_path: DataSource,
    *,
    limit: int | None = None,
    sensitivity: bool = False,
    batch_size: int = CalibrationConfig().batch_size,
    threads: int = 0,
    progress: Progress | None = None,
    allow_empty: bool = False,
    preprocess: Preprocess | None = None,
) -> DiagnoseReport:
    """Per-tensor error of ``quantized_path`` against ``float_path`` on ``data_path`` (its
    first ``limit`` samples, whole batches, when given: a path, arrays or feeds,
    :data:`onnxq.data.DataSource`); with ``sensitivity``, the nodes
    ranked by what each costs the outputs alone (on at most as many samples as the output
    check uses). ``allow_empty``: no quantized activation found is not an error;
    ``preprocess``: how a folder of images becomes the input."""
    if limit is not None and limit < 1:
        raise ModelError(f"--limit must be at least 1, got {limit}")
    models = _load(Path(float_path), Path(quantized_path), allow_empty)
    source = as_source(data_path, preprocess)
    dataset = source.open(input_specs(models.float_model))
    points = models.match.points
    total = dataset.num_samples if limit is None else min(limit, dataset.num_samples)
    layers, done = _layers(models, dataset, points, total, batch_size, threads, progress)
    ranked = None
    if sensitivity and points:
        switches = build_node_switches(models.float_model, models.quantized, points)
        if switches.units:
            ranked = measure_sensitivity(
                switches,
                dataset,
                samples=min(total, check_samples(dataset)),
                batch_size=batch_size,
                threads=threads,
                progress=progress,
            )
    return DiagnoseReport(
        float_path=str(float_path),
        quantized_path=str(quantized_path),
        data=str(source),
        samples=done,
        matching=models.match.source,
        float_prepared=models.prepared,
        layers=tuple(sorted(layers, key=LayerError.sort_key)),
        unmatched=models.match.unmatched,
        settings=recorded_settings(models.quantized),
        sensitivity=ranked,
    )


def recorded_settings(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The ``onnxq.settings`` a model was quantized with, or None (another tool's)."""
    return recorded(model, SETTINGS_KEY)


def _load(float_path: Path, quantized_path: Path, allow_empty: bool) -> _Models:
    """Both models, and the quantized activations matched to the float model's tensors.
    The float model is prepared as ``onnxq quantize`` prepares it when the quantized model
    holds onnxq's record (its tensor and node names are the prepared model's) or when
    names are missing from it."""
    float_model, quantized = load_model(float_path), load_model(quantized_path)
    if [s.name for s in input_specs(quantized)] != [s.name for s in input_specs(float_model)]:
        raise ModelError(
            f"'{quantized_path}' and '{float_path}' have different inputs; diagnose a model "
            "with its own quantization"
        )
    match = match_points(quantized, float_tensor_names(float_model))
    prepared = False
    if recorded_tensors(quantized) is not None or match.unmatched or not match.points:
        again = prepare(float_model).model
        second = match_points(quantized, float_tensor_names(again))
        if len(second.points) >= len(match.points):
            float_model, match, prepared = again, second, True
    if not match.points and not allow_empty:
        raise ModelError(
            f"found no quantized activation in '{quantized_path}' that matches a tensor of "
            f"'{float_path}' (onnxq looks for QuantizeLinear/DequantizeLinear pairs and its "
            "own onnxq.tensors record); diagnose a static Q/DQ model against its float model "
            "(weights-only and dynamic models quantize no activation: use onnxq compare)"
        )
    if match.unmatched:
        log.info("%d quantized activations have no float tensor to compare", len(match.unmatched))
    return _Models(float_model, quantized, match, prepared)


def _layers(
    models: _Models,
    dataset: Dataset,
    points: Sequence[QdqPoint],
    total: int,
    batch_size: int,
    threads: int,
    progress: Progress | None,
) -> tuple[list[LayerError], int]:
    """Stream ``dataset`` through both models and return each point's statistics."""
    if not points:
        return [], 0
    floats = list(dict.fromkeys(p.float_tensor for p in points))
    codes = [p.codes for p in points]
    float_runner = Runner(
        with_outputs(models.float_model, floats), threads=threads, what="float model"
    )
    quant_runner = Runner(
        with_outputs(_typed(models.quantized, points), codes),
        threads=threads,
        what="quantized model",
    )
    stats = [LayerStats(p.float_tensor, p.codes, p.qparams) for p in points]
    probe = next(dataset.batches(1))
    per_sample = sum(v.nbytes for v in float_runner.run(probe.feed, floats).values())
    batch_size = batch_for(per_sample // max(probe.size, 1) * 2, batch_size)
    done = 0
    for batch in dataset.batches(batch_size):
        ref = float_runner.run(batch.feed, floats)
        got = quant_runner.run(batch.feed, codes)
        for s in stats:
            s.update(ref[s.tensor], got[s.codes])
        del ref, got  # before the next run allocates its outputs
        done += batch.size
        if progress is not None:
            progress("diagnosing", min(done, total), total)
        if done >= total:
            break
    return [s.result() for s in stats], done


def _typed(model: onnx.ModelProto, points: Sequence[QdqPoint]) -> onnx.ModelProto:
    """``model`` with the element type of each point's codes declared, so that they can be
    graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    known = {vi.name for vi in (*out.graph.value_info, *out.graph.output)}
    for p in points:
        if p.codes not in known:
            elem = helper.np_dtype_to_tensor_dtype(p.qparams.qtype.dtype)
            out.graph.value_info.append(helper.make_tensor_value_info(p.codes, elem, None))
    return out
