"""Stage: what one quantize run is asked to do, checked before anything runs, and its
inputs read (the model, the calibration and evaluation data, a ranges file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from onnxq.calibration.collect import Progress
from onnxq.calibration.ranges import RangesFile, read_ranges
from onnxq.config import CalibrationConfig, Mode, QuantConfig, Rounding
from onnxq.data import Dataset, Preprocess, Source, path_of
from onnxq.errors import ConfigError
from onnxq.graph.external import model_bytes
from onnxq.graph.model_io import check_distinct, check_writable, input_specs, load_model

__all__ = ["Inputs", "Progress", "QuantizeRequest", "load_inputs"]


@dataclass(frozen=True)
class QuantizeRequest:
    """One quantize run: paths, settings, and how to report progress."""

    model_path: Path
    output_path: Path
    config: QuantConfig = field(default_factory=QuantConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    data: Source | None = None
    ranges: Path | None = None
    eval_data: Source | None = None
    labels: str | None = None
    threads: int = 0
    progress: Progress | None = None
    preprocess: Preprocess | None = None  # of image folders
    # weights to <output>.data (True), into the one file (False), or (None) the former
    # when the input has external data or the output passes ~2 GB
    external_data: bool | None = None

    def __post_init__(self) -> None:
        # the ranges are chosen for the activations the config quantizes
        acts = self.config.activations
        object.__setattr__(
            self, "calibration", replace(self.calibration, scheme=acts.scheme, bits=acts.bits)
        )
        if self.data is not None and self.ranges is not None:
            raise ConfigError(
                "give one of --data (calibrate now) or --ranges (reuse a file), not both"
            )
        if self.config.needs_ranges and self.data is None and self.ranges is None:
            raise ConfigError(
                "give --data (calibrate now) or --ranges (a file from onnxq calibrate)"
            )
        if self.config.rounding is Rounding.ADAROUND and self.data is None:
            raise ConfigError("--rounding adaround learns from each layer's inputs: give --data")
        if self.config.equalize and self.ranges is not None:
            raise ConfigError(
                "--equalize changes the activations a ranges file was measured on: "
                "give --data instead of --ranges"
            )
        if not self.config.needs_ranges and self.ranges is not None:
            raise ConfigError(
                "--mode dynamic and --weights-only need no activation ranges: drop --ranges"
            )
        self._check_goals()
        self._check_shards()

    def _check_shards(self) -> None:
        """Sharded calibration where it cannot run, refused before any work."""
        c = self.calibration
        if not c.sharded:
            return
        flag = "--scheduler" if c.scheduler is not None else f"--workers {c.workers}"
        if self.config.equalize:
            raise ConfigError(
                f"{flag} rebuilds the float model from its file in each worker, but "
                "--equalize changes it in memory first: drop one of them"
            )
        if self.ranges is not None or not self.config.needs_ranges:
            raise ConfigError(
                f"{flag} shards calibration, and this run calibrates nothing (--ranges, "
                "--weights-only or --mode dynamic): drop it"
            )

    def _check_goals(self) -> None:
        """Goals on task metrics are the output check's target: refused where no check
        runs (else they would be ignored silently)."""
        if not self.config.target.task.goals:
            return
        if self.config.mode is Mode.DYNAMIC:
            raise ConfigError(
                "--min-metric/--max-metric aim the output check, which "
                "--mode dynamic does not run: drop them, or judge with compare"
            )
        if self.data is None:
            raise ConfigError(
                "--min-metric/--max-metric aim the output check, which runs on --data: give --data"
            )

    @property
    def wants_data(self) -> bool:
        """Whether calibration samples are read (ranges, GPTQ, the check, bias correction)."""
        c = self.config
        if c.mode is Mode.DYNAMIC:
            return False
        adaround = c.rounding is Rounding.ADAROUND
        return not c.weights_only or c.gptq or c.target.enabled or c.bias_correction or adaround

    def settings(self) -> dict[str, object]:
        """Every setting of the run, JSON-ready (the report and the model record them)."""
        return {
            "quantize": self.config.settings(),
            "calibration": _plain_calibration(self.calibration),
            "data": None if self.data is None else str(self.data),
            "ranges": None if self.ranges is None else str(self.ranges),
            "eval_data": None if self.eval_data is None else str(self.eval_data),
            "labels": self.labels,
            "preprocess": None if self.preprocess is None else self.preprocess.settings(),
        }


def _plain_calibration(c: CalibrationConfig) -> dict[str, object]:
    return {
        "method": c.method.value,
        "granularity": c.granularity.value,
        "batch_size": c.batch_size,
        **c.params,
    }


@dataclass(frozen=True)
class Inputs:
    """The data and ranges a run reads (the model is returned beside them: it is prepared
    once and not kept)."""

    calib: Dataset | None  # calibration samples, when the settings use them
    eval: Dataset | None  # what the report measures (the calibration data when not given)
    eval_path: str | None
    ranges: RangesFile | None
    # bytes of the model on disk, with its external data files: read here, where the
    # process is small (reading the model again at the report's end was the peak of a
    # weights-only MiniLM run: 1004 MB)
    float_bytes: int


def load_inputs(request: QuantizeRequest) -> tuple[onnx.ModelProto, Inputs]:
    """Refuse outputs that would overwrite an input, then read the inputs (each
    validated once; the calibration data doubles as evaluation data when no other is given)."""
    r = request
    for source, what in (
        (r.model_path, "model"),
        (path_of(r.data), "data"),
        (r.ranges, "ranges file"),
        (path_of(r.eval_data), "evaluation data"),
    ):
        check_distinct(source, r.output_path, what)
    check_writable(r.output_path)
    model = load_model(r.model_path)
    specs = input_specs(model)
    calib = r.data.open(specs) if r.data is not None and r.wants_data else None
    eval_path = r.eval_data if r.eval_data is not None else r.data
    if eval_path is not None and calib is not None and eval_path == r.data and r.labels is None:
        evaluation: Dataset | None = calib  # validated once
    elif eval_path is not None:
        evaluation = eval_path.open(specs, label_key=r.labels)
    else:
        evaluation = None
    ranges = read_ranges(r.ranges) if r.ranges is not None else None
    path = None if eval_path is None else str(eval_path)
    return model, Inputs(calib, evaluation, path, ranges, model_bytes(r.model_path))
