"""The one exception hierarchy of onnxq.

Every error a user can cause is an :class:`OnnxqError` whose message is one line
naming the file, tensor, node or option at fault and what to do about it. The CLI
prints that line and exits with status 2; the library never prints.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "OnnxqError",
    "RangesError",
    "RuntimeFailure",
]


class OnnxqError(Exception):
    """Base class: a problem with the user's input, not a bug in onnxq."""


class ConfigError(OnnxqError):
    """An option or combination of options that onnxq does not accept."""


class DataError(OnnxqError):
    """Calibration or evaluation data that does not fit the model."""


class ModelError(OnnxqError):
    """A model file that is missing, not ONNX, invalid or unsupported."""


class RangesError(OnnxqError):
    """A ranges file that is unreadable or made for another model."""


class RuntimeFailure(OnnxqError):
    """onnxruntime refused to load or run a model."""
