"""onnxq: post-training quantization of ONNX models.

The public API is small: :func:`calibrate` makes a ranges file, :func:`quantize`
writes a quantized model and reports what it cost, :func:`diagnose` finds where a
quantized model loses accuracy tensor by tensor, :func:`compare` measures a
candidate against its reference. Configuration is :class:`QuantConfig` and
:class:`CalibrationConfig`; every user error is an :class:`OnnxqError`.
"""

from onnxq._version import __version__
from onnxq.calibration.calibrate import calibrate
from onnxq.calibration.ranges import RangesFile, read_ranges
from onnxq.config import (
    ActivationSpec,
    CalibrationConfig,
    CalibrationMethod,
    FidelityTarget,
    Granularity,
    LevelKind,
    Mode,
    OptimizeFor,
    QuantConfig,
    RangeMode,
    Rounding,
    Scheme,
    WeightSpec,
)
from onnxq.data import DataSource, Preprocess
from onnxq.errors import ConfigError, DataError, ModelError, OnnxqError, RangesError, RuntimeFailure
from onnxq.pipeline import quantize
from onnxq.report.compare import CompareReport, Thresholds, compare
from onnxq.report.diagnose import DiagnoseReport, diagnose
from onnxq.report.quantize_report import QuantizeReport

__all__ = [
    "ActivationSpec",
    "CalibrationConfig",
    "CalibrationMethod",
    "CompareReport",
    "ConfigError",
    "DataError",
    "DataSource",
    "DiagnoseReport",
    "FidelityTarget",
    "Granularity",
    "LevelKind",
    "Mode",
    "ModelError",
    "OnnxqError",
    "OptimizeFor",
    "Preprocess",
    "QuantConfig",
    "QuantizeReport",
    "RangeMode",
    "RangesError",
    "RangesFile",
    "Rounding",
    "RuntimeFailure",
    "Scheme",
    "Thresholds",
    "WeightSpec",
    "__version__",
    "calibrate",
    "compare",
    "diagnose",
    "quantize",
    "read_ranges",
]
