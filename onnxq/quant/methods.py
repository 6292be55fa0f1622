"""Enums the quantization maths is parameterised by: how values are grouped into
ranges (granularity) and how a range is chosen from values (method). Their values are
the CLI spellings; :mod:`onnxq.config` re-exports them."""

from __future__ import annotations

from enum import Enum

__all__ = ["CalibrationMethod", "Granularity", "Rounding"]


class Granularity(str, Enum):
    """How many clipping ranges a weight gets: one (tensor), one per output channel,
    one per group of consecutive output channels, or one per block of consecutive
    values along the reduction axis inside each output channel (sub-channel)."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"
    BLOCK = "block"


class CalibrationMethod(str, Enum):
    """How a clipping range is chosen from observed values."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"

    @property
    def uses_histogram(self) -> bool:
        return self is not CalibrationMethod.MINMAX


class Rounding(str, Enum):
    """How a weight value becomes a code: to the nearest level (half to even, as ONNX's
    QuantizeLinear), or up or down at random with probability given by the distance to
    each (unbiased in expectation, seeded: survey III-H)."""

    NEAREST = "nearest"
    STOCHASTIC = "stochastic"
    ADAROUND = "adaround"  # learnt up/down per value from the layer's output error
