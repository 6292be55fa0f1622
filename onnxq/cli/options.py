"""Options shared by the commands, as decorators. Every default is read from the
configuration dataclasses, so no number is written twice."""

from __future__ import annotations

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
    QuantConfig,
    RangeMode,
    Rounding,
    Scheme,
    WeightSpec,
)

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


def data_option(required: bool = True, help_text: str = "") -> Callable[[F], F]:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path),
        required=required,
        help=help_text or ".npz file (keys = input names) or a folder of .npz files.",
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
    click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    debug_option,
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
        type=float,
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
        type=float,
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
        help="Weight bit width: 8 or 4 (2 to 8 with --weight-levels kmeans or log).  "
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
        type=float,
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
        type=click.FloatRange(min=0),
        default=QUANT.auto_sqnr,
        show_default=True,
        help="Activations whose range would keep less SQNR (dB) on their integer grid get an "
        "MSE-clipped range, or stay float if that is not enough (0: off).",
    ),
    click.option(
        "--target-sqnr",
        type=float,
        default=TARGET.sqnr_db,
        show_default=True,
        help="Output check on calibration samples: while an output's SQNR (dB; logits for a "
        "Softmax output) is below this, keep the decisions that cost the most in float (at "
        "most a fifth of them); 0: off.",
    ),
    click.option(
        "--target-top1",
        type=float,
        default=TARGET.top1,
        show_default=True,
        help="Output check: top-1 agreement with float asked of classifier and Softmax "
        "outputs (fraction).",
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
        "weight layers joined by Relu/LeakyRelu/PRelu or nothing so their per-channel ranges "
        "match (the float function is unchanged), and absorb high biases with --data.",
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
)
