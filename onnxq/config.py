"""Configuration: enums whose values are the CLI spellings, and frozen dataclasses
validated on construction. No option dicts anywhere in onnxq."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import PurePath

from onnxq.errors import ConfigError
from onnxq.metrics_config import TaskTarget
from onnxq.quant.codebook import MAX_BITS as CODEBOOK_MAX_BITS
from onnxq.quant.codebook import MIN_BITS as CODEBOOK_MIN_BITS
from onnxq.quant.codebook import LevelKind
from onnxq.quant.methods import CalibrationMethod, Granularity, Rounding
from onnxq.quant.qtypes import QType

__all__ = [
    "ACTIVATION_BITS",
    "WEIGHT_BITS",
    "ActivationSpec",
    "CalibrationConfig",
    "CalibrationMethod",
    "FidelityTarget",
    "Granularity",
    "Mode",
    "OptimizeFor",
    "QuantConfig",
    "QuantFlags",
    "RangeMode",
    "Recipe",
    "RecipeRule",
    "LevelKind",
    "Rounding",
    "Scheme",
    "WeightOverride",
    "WeightSpec",
]


class Scheme(str, Enum):
    """Symmetric (zero point 0, signed codes) or asymmetric (unsigned codes)."""

    SYM = "sym"
    ASYM = "asym"

    def qtype(self, bits: int) -> QType:
        """The integer type this scheme stores at ``bits`` bits."""
        return QType.for_bits(bits, signed=self is Scheme.SYM)


class RangeMode(str, Enum):
    """Full integer range, or restricted (drop the lowest code: [-127, 127] for int8)."""

    FULL = "full"
    RESTRICTED = "restricted"


class Mode(str, Enum):
    """Static: activation ranges fixed by calibration. Dynamic: computed at run time."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class OptimizeFor(str, Enum):
    """What the quantized model is for, when int8 would run little or no faster than float.

    ``size``: write the plan as made (int8 wherever the plan allows), only report a
    slowdown. ``balanced`` (default): time the candidate against float on one sample and,
    when it is not 10 % faster (:data:`onnxq.report.latency.WORTH`), write the
    weights-only model (as small, closer to float) unless int8 ran 10 % faster than it; a
    timing of too few runs to tell keeps int8 unless it ran slower. A model still slower
    than float is reported (``--strict`` fails). ``latency``: the dynamic model
    (activation ranges at run time; the nodes the output check kept float stay float) is
    timed too, and the fastest beyond the timing's noise (3 %) is written, a tie going to
    weights-only, then int8."""

    SIZE = "size"
    BALANCED = "balanced"
    LATENCY = "latency"

    @property
    def measures(self) -> bool:
        """Whether a slower candidate is replaced (``size`` only reports it)."""
        return self is not OptimizeFor.SIZE


WEIGHT_BITS = (4, 8)
ACTIVATION_BITS = (8, 16)


def _check_bits(bits: int, option: str, allowed: tuple[int, ...] = (8, 16)) -> None:
    if bits not in allowed:
        raise ConfigError(f"{option} {bits} is not supported: use {' or '.join(map(str, allowed))}")


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
    # sharded calibration (onnxq.calibration.parallel): local processes, or the shards of
    # a Dask cluster at this address (one per Dask worker unless workers > 1)
    workers: int = 1
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        self._check_shards()
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"--percentile must be in (50, 100], got {self.percentile:g}")
        levels = 2 ** (self.bits - 1)
        if self.bins < 2 or self.bins % 2:
            raise ConfigError(f"--bins must be an even number of at least 2, got {self.bins}")
        if self.method is CalibrationMethod.ENTROPY and self.bins < 2 * levels:
            raise ConfigError(
                f"--method entropy needs --bins of at least {2 * levels} for {self.bits}-bit "
                f"activations, got {self.bins}"
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
        _check_bits(self.bits, "--activation-bits", ACTIVATION_BITS)

    def _check_shards(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.scheduler is not None and not self.scheduler.strip():
            raise ConfigError("--scheduler needs the address of a Dask scheduler (tcp://host:port)")
        if self.moving_average is not None and self.sharded:
            flag = "--scheduler" if self.scheduler is not None else f"--workers {self.workers}"
            raise ConfigError(
                f"--moving-average and {flag} exclude each other: a moving average depends on "
                "the order of all batches; drop one"
            )

    @property
    def sharded(self) -> bool:
        """Whether calibration runs in shards in other processes."""
        return self.workers > 1 or self.scheduler is not None

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
class WeightSpec:
    """How the weights of one node are stored: the global settings, or a recipe's."""

    scheme: Scheme = Scheme.SYM
    bits: int = 8
    granularity: Granularity = Granularity.CHANNEL
    group_size: int = 4
    block_size: int = 32
    method: CalibrationMethod = CalibrationMethod.MINMAX
    percentile: float = 99.99
    levels: LevelKind = LevelKind.UNIFORM  # else a codebook of 2^bits float levels

    def __post_init__(self) -> None:
        if not CODEBOOK_MIN_BITS <= self.bits <= CODEBOOK_MAX_BITS:
            raise ConfigError(
                f"--weight-bits {self.bits} is not supported: use 4 or 8 (integers), or 2 to 8 "
                "with --weights-only (a codebook)"
            )
        if self.codebook:
            self._check_codebook()
        if self.method is CalibrationMethod.ENTROPY:
            raise ConfigError(
                "--weight-method entropy is not offered: use minmax, percentile or mse"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"--weight-percentile must be in (50, 100], got {self.percentile:g}")
        if self.group_size < 1:
            raise ConfigError(f"--group-size must be at least 1, got {self.group_size}")
        if self.block_size < 2:
            raise ConfigError(f"--block-size must be at least 2, got {self.block_size}")

    def _check_codebook(self) -> None:
        if self.granularity not in (Granularity.TENSOR, Granularity.CHANNEL):
            raise ConfigError(
                f"{self.describe()}: a codebook is fitted per tensor or per channel: "
                f"use --granularity tensor or channel, not {self.granularity.value}"
            )

    @property
    def codebook(self) -> bool:
        """Stored as indices into float levels (decoded in the graph), not as integers:
        k-means or log levels, or uniform ones at a width ONNX has no integer type for
        (2, 3, 5, 6, 7 bits)."""
        return self.levels is not LevelKind.UNIFORM or self.bits not in WEIGHT_BITS

    @property
    def qtype(self) -> QType:
        return self.scheme.qtype(self.bits if self.bits in WEIGHT_BITS else 8)

    def describe(self) -> str:
        size = {Granularity.GROUP: f" {self.group_size}", Granularity.BLOCK: f" {self.block_size}"}
        gran = f"{self.granularity.value}{size.get(self.granularity, '')}"
        if self.codebook:
            return f"{self.bits}-bit {self.levels.value} codebook per {gran}"
        return f"{self.qtype.value} {self.scheme.value} per {gran} ({self.method.value})"


@dataclass(frozen=True)
class ActivationSpec:
    """How activations are stored: asymmetric uint8 by default (16 bits for hard cases)."""

    scheme: Scheme = Scheme.ASYM
    bits: int = 8

    def __post_init__(self) -> None:
        _check_bits(self.bits, "--activation-bits", ACTIVATION_BITS)

    @property
    def qtype(self) -> QType:
        return self.scheme.qtype(self.bits)


@dataclass(frozen=True)
class FidelityTarget:
    """What the output check asks of the quantized model on calibration samples: every
    float output's SQNR at least ``sqnr_db`` and, on classifier-shaped outputs, top-1
    agreement with the float model at least ``top1``, a fraction from 0 to 1 like every
    agreement onnxq measures (the command line's ``--target-top1`` is in percent and is
    divided by 100 there). ``sqnr_db`` 0 turns the check off."""

    sqnr_db: float = 35.0
    top1: float = 0.99
    # declared task metrics; with goals they are the check's target instead of SQNR
    task: TaskTarget = field(default_factory=TaskTarget)

    def __post_init__(self) -> None:
        if not (self.sqnr_db >= 0 and math.isfinite(self.sqnr_db)):
            raise ConfigError(
                f"--target-sqnr must be a finite number of dB ≥ 0, got {self.sqnr_db}"
            )
        if not 0.0 <= self.top1 <= 1.0:
            raise ConfigError(
                f"FidelityTarget.top1 (--target-top1 / 100) must be a fraction in [0, 1], "
                f"got {self.top1}"
            )

    @property
    def enabled(self) -> bool:
        """On unless ``sqnr_db`` is 0 with no goal on a task metric."""
        return self.sqnr_db > 0 or bool(self.task.goals)


@dataclass(frozen=True)
class QuantConfig:
    """Settings of one quantization.

    Defaults follow common practice on CPUs: asymmetric uint8 activations, symmetric
    int8 weights, one range per output channel of each weight, full integer range.
    ``recipe`` overrides weight settings and exclusion node by node.
    """

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    range_mode: RangeMode = RangeMode.FULL
    exclude: tuple[str, ...] = ()
    mode: Mode = Mode.STATIC
    weights_only: bool = False
    recipe: Recipe | None = None
    auto_sqnr: float = 26.0  # activations whose 8-bit grid gives less: MSE-clipped or float
    gptq: bool = False  # error-compensating rounding of MatMul/Gemm weights (needs data)
    target: FidelityTarget = field(default_factory=FidelityTarget)  # the output check
    bias_correction: bool = True  # of weights-only nodes, from input means (needs data)
    fold_weights: bool = True  # float nodes' integer weights: Cast/Sub/Mul folded at load
    rounding: Rounding = Rounding.NEAREST  # of weights (GPTQ rounds its own)
    seed: int = 0  # of stochastic rounding
    adaround_iters: int = 500  # optimisation steps per weight of --rounding adaround
    equalize: bool = False  # cross-layer equalisation (and high-bias absorption) first
    relu6_to_relu: bool = False  # let equalisation replace ReLU6 by Relu (changes the model)
    absorb_high_bias: bool = False  # equalisation's high-bias absorption (exact on --data only)
    optimize_for: OptimizeFor = OptimizeFor.BALANCED  # when int8 would be no faster

    def __post_init__(self) -> None:
        self._check_methods()
        if self.rounding is not Rounding.NEAREST and self.gptq:
            raise ConfigError(f"--rounding {self.rounding.value} and --gptq exclude each other")
        if self.rounding is not Rounding.NEAREST and self.mode is Mode.DYNAMIC:
            raise ConfigError(
                f"--rounding {self.rounding.value} applies to static and weights-only"
            )
        for name in self.exclude:
            if not name:
                raise ConfigError("--exclude needs a node name or op type, got an empty string")
        if not (self.auto_sqnr >= 0 and math.isfinite(self.auto_sqnr)):
            raise ConfigError(
                f"--auto-sqnr must be a finite number of dB ≥ 0, got {self.auto_sqnr}"
            )
        if self.mode is Mode.DYNAMIC:
            self._check_dynamic()

    def _check_methods(self) -> None:
        if self.adaround_iters < 0:
            raise ConfigError(f"--adaround-iters must be ≥ 0, got {self.adaround_iters}")
        for flag, on in (
            ("--relu6-to-relu", self.relu6_to_relu),
            ("--absorb-high-bias", self.absorb_high_bias),
        ):
            if on and not self.equalize:
                raise ConfigError(f"{flag} is part of --equalize: add --equalize")
        specs = [self.weights, *(self.recipe.specs(self.weights) if self.recipe else [])]
        book = next((s for s in specs if s.codebook), None)
        if book is None:
            return
        if not self.weights_only:
            raise ConfigError(
                f"{book.describe()} weights are float levels that integer kernels cannot "
                "read: add --weights-only"
            )
        if self.gptq or self.rounding is not Rounding.NEAREST:
            raise ConfigError(
                f"{book.describe()} weights take each value's nearest level: "
                "drop --gptq and --rounding"
            )

    def _check_dynamic(self) -> None:
        if self.weights_only:
            raise ConfigError("--weights-only and --mode dynamic exclude each other: pick one")
        if self.activations.bits != 8:
            raise ConfigError("--mode dynamic quantizes activations to 8 bits only")
        if self.gptq:
            raise ConfigError("--gptq applies to static and weights-only quantization")
        if self.recipe is not None:
            raise ConfigError(
                "--recipe applies to static and weights-only quantization, not --mode dynamic"
            )
        if self.activations.scheme is not Scheme.ASYM:
            raise ConfigError(
                "--mode dynamic quantizes activations to asymmetric uint8 "
                "(DynamicQuantizeLinear); use --activation-scheme asym"
            )
        if self.weights.bits != 8 or self.weights.granularity not in (
            Granularity.TENSOR,
            Granularity.CHANNEL,
        ):
            raise ConfigError(
                "--mode dynamic stores int8 weights per tensor or per channel "
                "(MatMulInteger takes one zero point per column)"
            )

    @property
    def restricted(self) -> bool:
        return self.range_mode is RangeMode.RESTRICTED

    @property
    def needs_ranges(self) -> bool:
        """Static quantization of activations: calibrated ranges are needed."""
        return self.mode is Mode.STATIC and not self.weights_only

    @property
    def min_opset(self) -> int:
        """Opset the written model needs: 21 for 4/16-bit types and blocked Q/DQ, 18 for
        codebook weights, else 13."""
        specs = [self.weights, *(self.recipe.specs(self.weights) if self.recipe else [])]
        if self.activations.bits == 16 and self.needs_ranges:
            return 21
        grid = [s for s in specs if not s.codebook]
        if any(s.bits == 4 or s.granularity is Granularity.BLOCK for s in grid):
            return 21
        if len(grid) < len(specs):
            return 18  # BitwiseAnd decodes codebook indices
        return 13

    @classmethod
    def from_flags(cls, flags: QuantFlags, recipe: Recipe | None = None) -> QuantConfig:
        """The configuration the command-line flags ask for (``--bits`` sets both widths,
        ``--scheme`` both schemes; the specific flags win)."""
        f = flags
        if f.bits is not None and f.activation_bits is None and not f.weights_only:
            if f.bits not in ACTIVATION_BITS:
                raise ConfigError(
                    f"--bits {f.bits} would set activations to {f.bits} bits, but activations "
                    f"take 8 or 16: use --weight-bits {f.bits}, or add --weights-only"
                )
        default_w, default_a = WeightSpec(), ActivationSpec()
        act_bits = f.activation_bits or (f.bits if f.bits and not f.weights_only else None)
        return cls(
            weights=WeightSpec(
                scheme=f.weight_scheme or f.scheme or default_w.scheme,
                bits=f.weight_bits or f.bits or default_w.bits,
                granularity=f.granularity,
                group_size=f.group_size,
                block_size=f.block_size,
                method=f.weight_method,
                percentile=f.weight_percentile,
                levels=f.weight_levels,
            ),
            activations=ActivationSpec(
                scheme=f.activation_scheme or f.scheme or default_a.scheme,
                bits=act_bits or default_a.bits,
            ),
            range_mode=f.range_mode,
            exclude=f.exclude,
            mode=f.mode,
            weights_only=f.weights_only,
            recipe=recipe,
            auto_sqnr=f.auto_sqnr,
            gptq=f.gptq,
            target=FidelityTarget(f.target_sqnr, f.target_top1),
            bias_correction=f.bias_correction,
            fold_weights=f.fold_weights,
            rounding=f.rounding,
            seed=f.seed,
            adaround_iters=f.adaround_iters,
            equalize=f.equalize,
            relu6_to_relu=f.relu6_to_relu,
            absorb_high_bias=f.absorb_high_bias,
            optimize_for=f.optimize_for,
        )

    def settings(self) -> dict[str, object]:
        """Every setting, as JSON-ready values (for the report and the model's metadata)."""
        plain = _plain(asdict(self))
        assert isinstance(plain, dict)
        return plain


@dataclass(frozen=True)
class QuantFlags:
    """The quantize command's flags as given (None: not given). Defaults come from the
    configuration dataclasses, so the CLI repeats no number."""

    scheme: Scheme | None = None
    weight_scheme: Scheme | None = None
    activation_scheme: Scheme | None = None
    bits: int | None = None
    weight_bits: int | None = None
    activation_bits: int | None = None
    granularity: Granularity = WeightSpec.granularity
    group_size: int = WeightSpec.group_size
    block_size: int = WeightSpec.block_size
    weight_method: CalibrationMethod = WeightSpec.method
    weight_percentile: float = WeightSpec.percentile
    range_mode: RangeMode = RangeMode.FULL
    exclude: tuple[str, ...] = ()
    mode: Mode = Mode.STATIC
    weights_only: bool = False
    auto_sqnr: float = QuantConfig.auto_sqnr
    gptq: bool = False
    target_sqnr: float = FidelityTarget.sqnr_db
    target_top1: float = FidelityTarget.top1  # a fraction (the CLI's percent / 100)
    bias_correction: bool = QuantConfig.bias_correction
    fold_weights: bool = QuantConfig.fold_weights
    rounding: Rounding = QuantConfig.rounding
    seed: int = QuantConfig.seed
    adaround_iters: int = QuantConfig.adaround_iters
    equalize: bool = QuantConfig.equalize
    relu6_to_relu: bool = QuantConfig.relu6_to_relu
    absorb_high_bias: bool = QuantConfig.absorb_high_bias
    optimize_for: OptimizeFor = QuantConfig.optimize_for
    weight_levels: LevelKind = WeightSpec.levels


def _plain(value: object) -> object:
    """``value`` with enums as their values and tuples as lists (JSON-ready)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class WeightOverride:
    """The weight settings one recipe rule sets (None: left as they are)."""

    scheme: Scheme | None = None
    bits: int | None = None
    granularity: Granularity | None = None
    group_size: int | None = None
    block_size: int | None = None
    method: CalibrationMethod | None = None

    def apply(self, spec: WeightSpec) -> WeightSpec:
        """``spec`` with these settings (validated by WeightSpec)."""
        return WeightSpec(
            scheme=spec.scheme if self.scheme is None else self.scheme,
            bits=spec.bits if self.bits is None else self.bits,
            granularity=spec.granularity if self.granularity is None else self.granularity,
            group_size=spec.group_size if self.group_size is None else self.group_size,
            block_size=spec.block_size if self.block_size is None else self.block_size,
            method=spec.method if self.method is None else self.method,
            percentile=spec.percentile,
            levels=spec.levels,
        )

    def merge(self, other: WeightOverride) -> tuple[WeightOverride, str | None]:
        """Both overrides in one, and the first setting they give different values."""
        merged = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine is not None and theirs is not None and mine != theirs:
                return self, f.name
            merged[f.name] = mine if theirs is None else theirs
        return WeightOverride(**merged), None

    def names(self) -> tuple[str, ...]:
        """The settings this override sets."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)


@dataclass(frozen=True)
class RecipeRule:
    """One rule of a recipe: nodes whose name or op type matches ``match`` (a glob)."""

    match: str
    exclude: bool | None = None
    weights: WeightOverride = field(default_factory=WeightOverride)

    def apply(self, spec: WeightSpec) -> WeightSpec:
        """``spec`` with this rule's weight settings (validated)."""
        return self.weights.apply(spec)


@dataclass(frozen=True)
class Recipe:
    """Per-node settings read from a recipe file."""

    rules: tuple[RecipeRule, ...]
    source: str = "recipe"

    def specs(self, base: WeightSpec) -> list[WeightSpec]:
        """Every weight spec a rule can produce on top of ``base`` (for opset needs)."""
        return [rule.apply(base) for rule in self.rules]
