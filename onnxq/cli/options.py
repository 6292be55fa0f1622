"""Options shared by the commands, as decorators. Every default is read from the
configuration dataclasses, so no number is written twice."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq.cli import render
from onnxq.config import (
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
from onnxq.data.preprocess import PREPROCESS_KEYS, ColourOrder, ImageLayout, declared_preprocess

F = TypeVar("F", bound=Callable[..., Any])

CAL = CalibrationConfig()
WEIGHTS = WeightSpec()
QUANT = QuantConfig()
TARGET = FidelityTarget()


def choice(enum: type[Enum], *exclude: Enum) -> click.Choice[str]:
    """A choice of an enum's values (the CLI spellings)."""
    return click.Choice([str(e.value) for e in enum if e not in exclude])


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        render.setup_logging(True)
    return value


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Log details to stderr; show tracebacks of bugs.",
)

QUIET = "onnxq.quiet"  # ctx.meta key, shared by the group's context and the command's


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[QUIET] = True
    return value


# before or after the command name (the group and every command carry it)
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    expose_value=False,
    callback=_set_quiet,
    help="No progress and no notes on stderr (warnings and errors still print).",
)


def is_quiet() -> bool:
    """-q/--quiet was given, before or after the command name."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(QUIET))


class Percent(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A percentage from 0 to 100, optionally written with a ``%`` suffix (``99``,
    ``99.5%``). With ``agreement``, a value in (0, 1] without ``%`` is refused as
    ambiguous: 0.99 is 99 % written as a fraction more often than it is 0.99 %."""

    name = "percent"

    def __init__(self, agreement: bool = False) -> None:
        self.agreement = agreement

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        text = value.strip() if isinstance(value, str) else value
        explicit = isinstance(text, str) and text.endswith("%")
        if explicit:
            text = text[:-1].strip()
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            self.fail(f"{value!r} is not a percentage from 0 to 100", param, ctx)
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a percentage from 0 to 100", param, ctx)
        if not 0.0 <= number <= 100.0:  # also refuses NaN
            self.fail(f"{value} is not a percentage from 0 to 100", param, ctx)
        if self.agreement and 0.0 < number <= 1.0 and not explicit:
            self.fail(
                f"{value} is ambiguous: percentages run from 0 to 100; write "
                f"{100 * number:g} for {100 * number:g} %, or {number:g}% for {number:g} %",
                param,
                ctx,
            )
        return number

    def to_config(self, value: float) -> float | str:
        """``value`` as a config file writes it so that reading it gives it back."""
        return f"{value:g}%" if self.agreement and 0.0 < value <= 1.0 else value


class FiniteFloat(click.FloatRange):
    """A float that is a finite number, optionally bounded like ``click.FloatRange``:
    ``nan``, ``inf`` and ``-inf`` are refused (a threshold of NaN would switch its gate
    off, one of inf would make it meaningless)."""

    name = "float"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        number = float(super().convert(value, param, ctx))
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def data_option(required: bool = True, help_text: str = "") -> Callable[[F], F]:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path),
        required=required,
        help=help_text
        or ".npz file (keys = input names), .npy file (one-input models), or a folder of "
        ".npz/.npy files or of images.",
    )


run_options = stack(
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=CAL.batch_size,
        show_default=True,
        help="Samples per onnxruntime run (data in the batched layout).",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="onnxruntime intra-op threads (0: onnxruntime's default; compare: all cores).",
    ),
    quiet_option,
    debug_option,
)

shard_options = stack(
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=CAL.workers,
        show_default=True,
        help="Calibrate in N local processes, each on a run of the batches; the ranges are "
        "the same, bit for bit.",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Calibrate on the Dask cluster at ADDRESS (tcp://host:port), one shard per "
        "worker (or --workers N); every worker must read the model and data at the same "
        "paths. Needs pip install 'onnxq[distributed]'.",
    ),
)

method_options = stack(
    click.option(
        "--method",
        type=choice(CalibrationMethod),
        default=CAL.method.value,
        show_default=True,
        help="How activation ranges are chosen: extremes, percentile, KL divergence "
        "(entropy) or least squared error (mse).",
    ),
    click.option(
        "--percentile",
        type=FiniteFloat(),
        default=CAL.percentile,
        show_default=True,
        help="Percentile kept by --method percentile.",
    ),
    click.option(
        "--bins",
        type=int,
        default=CAL.bins,
        show_default=True,
        help="Histogram resolution of percentile, entropy and mse.",
    ),
    click.option(
        "--moving-average",
        type=FiniteFloat(),
        default=None,
        help="With --method minmax: moving average of batch extremes, this constant.",
    ),
)

weight_options = stack(
    click.option(
        "--scheme",
        type=choice(Scheme),
        help="Scheme of weights and activations (sym: int8, zero point 0; asym: uint8).",
    ),
    click.option(
        "--weight-scheme",
        type=choice(Scheme),
        help=f"Override --scheme for weights.  [default: {WEIGHTS.scheme.value}]",
    ),
    click.option(
        "--activation-scheme",
        type=choice(Scheme),
        help=f"Override --scheme for activations.  [default: {QUANT.activations.scheme.value}]",
    ),
    click.option(
        "--granularity",
        type=choice(Granularity),
        default=WEIGHTS.granularity.value,
        show_default=True,
        help="Weight ranges per tensor, per output channel, per group of channels or per "
        "block along the reduction axis.",
    ),
    click.option(
        "--range",
        "range_mode",
        type=choice(RangeMode),
        default=QUANT.range_mode.value,
        show_default=True,
        help="Integer range: full, or restricted (int8 [-127, 127], uint8 [1, 255]).",
    ),
    click.option("--bits", type=int, help="Bit width of weights and activations (sets both)."),
    click.option(
        "--weight-bits",
        type=int,
        help="Weight bit width: 8 or 4 as integers; 2 to 8 with --weights-only as a codebook "
        "(--weight-levels; 2, 3, 5, 6, 7 bits are a uniform codebook).  "
        f"[default: {WEIGHTS.bits}]",
    ),
    click.option(
        "--activation-bits",
        type=int,
        help=f"Activation bit width: 8 or 16.  [default: {QUANT.activations.bits}]",
    ),
    click.option(
        "--group-size",
        type=click.IntRange(min=1),
        default=WEIGHTS.group_size,
        show_default=True,
        help="Output channels per range with --granularity group.",
    ),
    click.option(
        "--block-size",
        type=click.IntRange(min=2),
        default=WEIGHTS.block_size,
        show_default=True,
        help="Values per range along the reduction axis with --granularity block.",
    ),
    click.option(
        "--weight-method",
        type=choice(CalibrationMethod, CalibrationMethod.ENTROPY),
        default=WEIGHTS.method.value,
        show_default=True,
        help="How weight ranges are chosen.",
    ),
    click.option(
        "--weight-percentile",
        type=FiniteFloat(),
        default=WEIGHTS.percentile,
        show_default=True,
        help="Percentile kept by --weight-method percentile.",
    ),
    click.option(
        "--weight-levels",
        type=choice(LevelKind),
        default=WEIGHTS.levels.value,
        show_default=True,
        help="uniform: the integer grid (Q/DQ). kmeans or log: a codebook of 2^bits float "
        "levels per tensor or channel (k-means from the uniform grid, or powers of two), "
        "stored as packed indices and decoded in the graph; needs --weights-only.",
    ),
)

tuning_options = stack(
    click.option(
        "--auto-sqnr",
        type=FiniteFloat(min=0),
        default=QUANT.auto_sqnr,
        show_default=True,
        help="Activations whose range would keep less SQNR (dB) on their integer grid get an "
        "MSE-clipped range, or stay float if that is not enough (0: off).",
    ),
    click.option(
        "--target-sqnr",
        type=FiniteFloat(min=0),
        default=TARGET.sqnr_db,
        show_default=True,
        help="Output check on calibration samples: while an output's SQNR (dB; logits for a "
        "Softmax output) is below this, keep the decisions that cost the most in float (at "
        "most a fifth of them); 0: off.",
    ),
    click.option(
        "--target-top1",
        type=Percent(agreement=True),
        default=100 * TARGET.top1,
        show_default=True,
        help="Output check: top-1 agreement with float asked of classifier and Softmax "
        "outputs, in percent (0 to 100; 0.5% for under one percent).",
    ),
    click.option(
        "--gptq",
        is_flag=True,
        help="Round MatMul/Gemm weights with GPTQ (error compensation from the inputs' second "
        "moments on --data) instead of round-to-nearest.",
    ),
    click.option(
        "--bias-correction/--no-bias-correction",
        default=QUANT.bias_correction,
        show_default=True,
        help="Correct the bias of nodes left weights-only (integer weights, float inputs) for "
        "the mean shift their rounded weights cause, from the inputs' means on --data.",
    ),
    click.option(
        "--fold-weights/--no-fold-weights",
        default=QUANT.fold_weights,
        show_default=True,
        help="Write the integer weights of nodes that run in float as Cast/Sub/Mul, which "
        "onnxruntime folds into float weights when it loads the model (file size of "
        "integers, speed of float); --no-fold-weights keeps their DequantizeLinear.",
    ),
    click.option(
        "--rounding",
        type=choice(Rounding),
        default=QUANT.rounding.value,
        show_default=True,
        help="How weights round to codes: nearest; stochastic (up or down at random, "
        "unbiased, reproducible for a --seed); adaround (up or down learnt per value from "
        "each layer's output error on --data, Nagel et al. 2020).",
    ),
    click.option(
        "--adaround-iters",
        type=click.IntRange(min=0),
        default=QUANT.adaround_iters,
        show_default=True,
        help="Optimisation steps per weight of --rounding adaround (more: slower, better).",
    ),
    click.option(
        "--equalize",
        is_flag=True,
        help="Cross-layer equalisation first (Nagel et al. 2019): rescale consecutive "
        "weight layers joined by Relu/LeakyRelu/PRelu or nothing, channel by channel (the "
        "float function is unchanged): per-tensor weights balance the two layers' weights; "
        "per-channel weights with --data balance the activation between them.",
    ),
    click.option(
        "--absorb-high-bias",
        is_flag=True,
        help="With --equalize and --data: move each channel's always-positive part of a "
        "layer's output into the next layer's bias (narrower activation ranges). Exact on "
        "the calibration data only: the report measures the changed float model.",
    ),
    click.option(
        "--relu6-to-relu",
        is_flag=True,
        help="With --equalize: replace ReLU6 (Clip 0..6) between equalised layers by Relu, "
        "which changes the float model (the report measures by how much).",
    ),
    click.option(
        "--seed",
        type=int,
        default=QUANT.seed,
        show_default=True,
        help="Seed of --rounding stochastic.",
    ),
    click.option(
        "--weights-only",
        is_flag=True,
        help="Quantize weights only; activations stay float (no calibration needed).",
    ),
    click.option(
        "--mode",
        type=choice(Mode),
        default=QUANT.mode.value,
        show_default=True,
        help="static: calibrated activation ranges; dynamic: ranges computed at run time.",
    ),
    click.option(
        "--optimize-for",
        type=choice(OptimizeFor),
        default=QUANT.optimize_for.value,
        show_default=True,
        help="When int8 would run little or no faster than float on onnxruntime's CPU "
        "provider: size writes it anyway (and warns when slower); balanced times it against "
        "float on one sample and writes the weights-only model (as small, closer to float) "
        "unless int8 ran 10% faster; latency also times the dynamic model and writes the "
        "fastest.",
    ),
)


_image_flags = stack(
    click.option(
        "--image-size",
        metavar="H,W",
        help="Image folders: resize every image to H,W.  [default: the input's static size]",
    ),
    click.option(
        "--image-layout",
        type=choice(ImageLayout),
        help="Image folders: layout of the input.  [default: from its channel dimension, 1 or 3]",
    ),
    click.option(
        "--image-scale",
        metavar="F",
        help="Image folders: multiply pixel values 0-255 by F (e.g. 1/255).  [default: 1]",
    ),
    click.option(
        "--image-mean",
        metavar="A[,B,C]",
        help="Image folders: then subtract this, per channel.  [default: 0]",
    ),
    click.option(
        "--image-std",
        metavar="A[,B,C]",
        help="Image folders: then divide by this, per channel.  [default: 1]",
    ),
    click.option(
        "--image-order",
        type=choice(ColourOrder),
        help="Image folders: channel order fed to a colour input.  [default: rgb]",
    ),
    click.option(
        "--preprocess",
        "preprocess_file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Image folders: a TOML file of the same settings (keys size, layout, scale, "
        "mean, std, order) instead of the --image-* options.",
    ),
)


def image_options(func: F) -> F:
    """The --image-* options and --preprocess, handed to the command as one ``preprocess``
    argument (None when none is given). Goes below ``handle_errors``, so that a bad value
    or file is a one-line error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {key: kwargs.pop(f"image_{key}") for key in PREPROCESS_KEYS}
        kwargs["preprocess"] = declared_preprocess(options, kwargs.pop("preprocess_file"))
        return func(*args, **kwargs)

    return _image_flags(wrapper)  # type: ignore[return-value]
