"""``onnxq calibrate``: run data through the float model once and keep the ranges of every
activation any quantization setting may need, as a reviewable, reusable ranges file."""

from __future__ import annotations

from pathlib import Path

from onnxq._version import __version__
from onnxq.calibration.collect import FloatSession, Progress
from onnxq.calibration.parallel import ModelOrigin
from onnxq.calibration.ranges import RangesFile
from onnxq.config import CalibrationConfig
from onnxq.data import DataSource, Preprocess, open_data
from onnxq.graph.activations import calibrated_tensors
from onnxq.graph.model_io import input_specs, load_model
from onnxq.stages.prepare import MIN_OPSET, prepare

__all__ = ["calibrate"]


def calibrate(
    model_path: str | Path,
    data_path: DataSource,
    config: CalibrationConfig | None = None,
    *,
    threads: int = 0,
    progress: Progress | None = None,
    preprocess: Preprocess | None = None,
) -> RangesFile:
    """Ranges of every activation tensor any quantization setting may need, from
    ``data_path``: a path, an array, a dict of arrays or feeds (:data:`DataSource`);
    ``preprocess`` is the preprocessing of a folder of images."""
    config = config or CalibrationConfig()
    model = load_model(model_path)
    dataset = open_data(data_path, input_specs(model), preprocess=preprocess)
    prepared = prepare(model)
    origin = ModelOrigin(str(Path(model_path).resolve()), MIN_OPSET)
    floats = FloatSession(prepared.model, threads=threads, origin=origin)
    tensors = calibrated_tensors(prepared.model)
    ranges = floats.observe(dataset, tensors, config, progress)
    return RangesFile(
        model_fingerprint=prepared.fingerprint,
        model_path=str(model_path),
        method=config.method,
        params={**config.params, "batch_size": config.batch_size},
        granularity=config.granularity,
        samples=dataset.num_samples,
        onnxq_version=__version__,
        tensors=ranges,
    )
