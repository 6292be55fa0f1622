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
    "Mode",
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
    """How a clipping range is chosen from observed values."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"

    @property
    def uses_histogram(self) -> bool:
        return self is not CalibrationMethod.MINMAX


class Mode(str, Enum):
    """Static: activation ranges fixed by calibration. Dynamic: computed at run time."""

    STATIC = "static"
    DYNAMIC = "dynamic"


def _check_bits(bits: int, option: str) -> None:
    if bits not in SUPPORTED_BITS:
        raise ConfigError(
            f"{option} {bits} is not supported yet: onnxq quantizes to "
            f"{', '.join(map(str, SUPPORTED_BITS))} bits"
        )


@dataclass(frozen=True)
class CalibrationConfig:
    """Settings of one calibration pass.

    ``scheme`` and ``bits`` name the activation quantization the ranges are chosen
    for (entropy and MSE depend on them); a ranges file records them and ``quantize``
    refuses a file made for another activation scheme.
    """

    method: CalibrationMethod = CalibrationMethod.MINMAX
    granularity: Granularity = Granularity.TENSOR
    batch_size: int = 32
    percentile: float = 99.99
    bins: int = 2048
    moving_average: float | None = None
    scheme: Scheme = Scheme.ASYM
    bits: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"--percentile must be in (50, 100], got {self.percentile:g}")
        levels = 2 ** (self.bits - 1)
        if self.bins < 2 * levels or self.bins % 2:
            raise ConfigError(
                f"--bins must be an even number of at least {2 * levels} for {self.bits}-bit "
                f"ranges, got {self.bins}"
            )
        if self.moving_average is not None:
            if self.method is not CalibrationMethod.MINMAX:
                raise ConfigError("--moving-average applies to --method minmax only")
            if not 0.0 < self.moving_average <= 1.0:
                raise ConfigError(
                    f"--moving-average must be in (0, 1], got {self.moving_average:g}"
                )
        if self.method.uses_histogram and self.granularity is Granularity.CHANNEL:
            raise ConfigError(
                f"--method {self.method.value} gives one range per tensor; "
                "use --granularity tensor (per-channel statistics are min/max)"
            )
        _check_bits(self.bits, "--bits")

    @property
    def params(self) -> dict[str, object]:
        """The method's parameters, as recorded in a ranges file."""
        params: dict[str, object] = {"scheme": self.scheme.value, "bits": self.bits}
        if self.method is CalibrationMethod.PERCENTILE:
            params["percentile"] = self.percentile
        if self.method.uses_histogram:
            params["bins"] = self.bins
        if self.moving_average is not None:
            params["moving_average"] = self.moving_average
        return params


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
    mode: Mode = Mode.STATIC
    weight_method: CalibrationMethod = CalibrationMethod.MINMAX
    weight_percentile: float = 99.99

    def __post_init__(self) -> None:
        _check_bits(self.bits, "--bits")
        if self.weight_method is CalibrationMethod.ENTROPY:
            raise ConfigError(
                "--weight-method entropy is not offered: use minmax, percentile or mse"
            )
        if not 50.0 < self.weight_percentile <= 100.0:
            raise ConfigError(
                f"--weight-percentile must be in (50, 100], got {self.weight_percentile:g}"
            )
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
