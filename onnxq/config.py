"""Configuration: enums whose values are the CLI spellings, and frozen dataclasses
validated on construction. No option dicts anywhere in onnxq."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from onnxq.errors import ConfigError
from onnxq.quant.qtypes import QType

__all__ = [
    "CalibrationConfig",
    "CalibrationMethod",
    "Granularity",
    "QuantConfig",
    "RangeMode",
    "Scheme",
]

SUPPORTED_BITS = (8,)


class Scheme(str, Enum):
    """Symmetric (zero point 0, signed codes) or asymmetric (unsigned codes)."""

    SYM = "sym"
    ASYM = "asym"

    def qtype(self, bits: int) -> QType:
        """The integer type this scheme stores at ``bits`` bits."""
        return QType.for_bits(bits, signed=self is Scheme.SYM)


class Granularity(str, Enum):
    """How many clipping ranges a tensor gets: one, or one per channel."""

    TENSOR = "tensor"
    CHANNEL = "channel"


class RangeMode(str, Enum):
    """Full integer range, or restricted (drop the lowest code: [-127, 127] for int8)."""

    FULL = "full"
    RESTRICTED = "restricted"


class CalibrationMethod(str, Enum):
    """How a clipping range is chosen from observed activations."""

    MINMAX = "minmax"


def _check_bits(bits: int, option: str) -> None:
    if bits not in SUPPORTED_BITS:
        raise ConfigError(
            f"{option} {bits} is not supported yet: onnxq quantizes to "
            f"{', '.join(map(str, SUPPORTED_BITS))} bits"
        )


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of one calibration pass."""

    method: CalibrationMethod = CalibrationMethod.MINMAX
    granularity: Granularity = Granularity.TENSOR
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class QuantConfig:
    """Settings of one quantization.

    Defaults follow common practice on CPUs: asymmetric uint8 activations, symmetric
    int8 weights, one range per output channel of each weight, full integer range.
    """

    weight_scheme: Scheme = Scheme.SYM
    activation_scheme: Scheme = Scheme.ASYM
    granularity: Granularity = Granularity.CHANNEL
    range_mode: RangeMode = RangeMode.FULL
    bits: int = 8
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_bits(self.bits, "--bits")
        for name in self.exclude:
            if not name:
                raise ConfigError("--exclude needs a node name or op type, got an empty string")

    @property
    def weight_qtype(self) -> QType:
        return self.weight_scheme.qtype(self.bits)

    @property
    def activation_qtype(self) -> QType:
        return self.activation_scheme.qtype(self.bits)

    @property
    def restricted(self) -> bool:
        return self.range_mode is RangeMode.RESTRICTED
