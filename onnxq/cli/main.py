"""``onnxq`` commands. Each builds configuration, calls one library function and hands
the result to :mod:`onnxq.cli.render`. Exit status: 0 ok, 1 a quality threshold was
violated, 2 bad usage or input, 3 an internal error (a bug: please report it)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq._version import __version__
from onnxq.calibration.calibrate import calibrate as run_calibrate
from onnxq.cli import render
from onnxq.config import (
    CalibrationConfig,
    CalibrationMethod,
    FidelityTarget,
    Granularity,
    Mode,
    QuantConfig,
    RangeMode,
    Scheme,
)
from onnxq.errors import ConfigError, OnnxqError
from onnxq.graph.model_io import check_distinct, check_writable, write_atomic
from onnxq.inspect import inspect_model
from onnxq.quantize import quantize as run_quantize
from onnxq.recipe import read_recipe
from onnxq.report.compare import Thresholds
from onnxq.report.compare import compare as run_compare

EXIT_THRESHOLD = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3

F = TypeVar("F", bound=Callable[..., Any])


class InputError(click.ClickException):
    """A user error: one line on stderr, exit status 2."""

    exit_code = EXIT_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def handle_errors(func: F) -> F:
    """Map library errors to one-line messages and exit codes; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OnnxqError as exc:
            raise InputError(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if logging.getLogger("onnxq").isEnabledFor(logging.DEBUG):
                traceback.print_exc()
                sys.exit(EXIT_INTERNAL)
            click.echo(
                f"Error: internal error {type(exc).__name__}: {exc} (a bug in onnxq; "
                "rerun with --debug for the traceback)".replace("\n", " "),
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def data_option(required: bool = True, help_text: str = "") -> Callable[[F], F]:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path),
        required=required,
        help=help_text or ".npz file (keys = input names) or a folder of .npz files.",
    )


def common_run_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=32,
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
        ]
    ):
        func = decorator(func)
    return func


def method_options(func: F) -> F:
    """Calibration method options shared by calibrate and quantize."""
    for decorator in reversed(
        [
            click.option(
                "--method",
                type=click.Choice([m.value for m in CalibrationMethod]),
                default="minmax",
                show_default=True,
                help="How activation ranges are chosen: extremes, percentile, KL divergence "
                "(entropy) or least squared error (mse).",
            ),
            click.option(
                "--percentile",
                type=float,
                default=99.99,
                show_default=True,
                help="Percentile kept by --method percentile.",
            ),
            click.option(
                "--bins",
                type=int,
                default=2048,
                show_default=True,
                help="Histogram resolution of percentile, entropy and mse.",
            ),
            click.option(
                "--moving-average",
                type=float,
                default=None,
                help="With --method minmax: moving average of batch extremes, this constant.",
            ),
        ]
    ):
        func = decorator(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxq")
@click.option("--debug", is_flag=True, help="Log details to stderr; show tracebacks of bugs.")
def cli(debug: bool) -> None:
    """Post-training quantization of ONNX models.

    \b
    Example:
      onnxq quantize model.onnx -o model.int8.onnx --data calib.npz
    """
    render.setup_logging(debug)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--exclude", multiple=True, help="Node name or op type (glob) kept in float.")
@click.option(
    "--target",
    type=click.Choice(["cpu"]),
    help="Also show which quantized nodes onnxruntime's CPU provider runs as integer "
    "kernels, which fall back to float, and the Q/DQ conversions left at run time.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@handle_errors
def inspect(model: Path, exclude: tuple[str, ...], target: str | None, as_json: bool) -> None:
    """Show a model's opset, inputs, outputs, ops, parameters and quantization plan.

    \b
    Example:
      onnxq inspect sample_models/digits_cnn.onnx --target cpu
    """
    result = inspect_model(model, QuantConfig(exclude=exclude), target=target)
    render.inspection(result, as_json)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@data_option()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Ranges file to write (JSON).",
)
@click.option(
    "--granularity",
    type=click.Choice([Granularity.TENSOR.value, Granularity.CHANNEL.value]),
    default="tensor",
    show_default=True,
    help="One range per activation tensor, or one per channel.",
)
@click.option(
    "--scheme",
    type=click.Choice([s.value for s in Scheme]),
    default="asym",
    show_default=True,
    help="Activation scheme the ranges are chosen for.",
)
@click.option("--bits", type=int, default=8, show_default=True, help="Activation bit width.")
@method_options
@common_run_options
@handle_errors
def calibrate(
    model: Path,
    data: Path,
    output: Path,
    granularity: str,
    scheme: str,
    bits: int,
    method: str,
    percentile: float,
    bins: int,
    moving_average: float | None,
    batch_size: int,
    threads: int,
    quiet: bool,
) -> None:
    """Run DATA through MODEL once and write the activation ranges to a JSON file.

    \b
    Example:
      onnxq calibrate model.onnx --data calib.npz -o ranges.json --granularity channel
    """
    check_distinct(model, output)
    check_distinct(data, output, "data")
    check_writable(output)
    config = CalibrationConfig(
        method=CalibrationMethod(method),
        granularity=Granularity(granularity),
        batch_size=batch_size,
        percentile=percentile,
        bins=bins,
        moving_average=moving_average,
        scheme=Scheme(scheme),
        bits=bits,
    )
    with render.progress(quiet) as progress:
        ranges = run_calibrate(model, data, config, threads=threads, progress=progress)
    write_atomic(output, ranges.to_json().encode())
    render.calibration(ranges, output)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Quantized model to write.",
)
@data_option(required=False, help_text="Calibration data (.npz or folder); or use --ranges.")
@click.option("--ranges", type=click.Path(path_type=Path), help="Ranges file from onnxq calibrate.")
@click.option(
    "--scheme",
    type=click.Choice([s.value for s in Scheme]),
    help="Scheme of weights and activations (sym: int8, zero point 0; asym: uint8).",
)
@click.option(
    "--weight-scheme",
    type=click.Choice([s.value for s in Scheme]),
    help="Override --scheme for weights.  [default: sym]",
)
@click.option(
    "--activation-scheme",
    type=click.Choice([s.value for s in Scheme]),
    help="Override --scheme for activations.  [default: asym]",
)
@click.option(
    "--granularity",
    type=click.Choice([g.value for g in Granularity]),
    default="channel",
    show_default=True,
    help="Weight ranges per tensor or per output channel.",
)
@click.option(
    "--range",
    "range_mode",
    type=click.Choice([r.value for r in RangeMode]),
    default="full",
    show_default=True,
    help="Integer range: full, or restricted (int8 [-127, 127], uint8 [1, 255]).",
)
@click.option("--bits", type=int, help="Bit width of weights and activations (sets both).")
@click.option("--weight-bits", type=int, help="Weight bit width: 8 or 4.  [default: 8]")
@click.option("--activation-bits", type=int, help="Activation bit width: 8 or 16.  [default: 8]")
@click.option(
    "--group-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Output channels per range with --granularity group.",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Values per range along the reduction axis with --granularity block.",
)
@click.option(
    "--auto-sqnr",
    type=click.FloatRange(min=0),
    default=26.0,
    show_default=True,
    help="Activations whose range would keep less SQNR (dB) on their integer grid get an "
    "MSE-clipped range, or stay float if that is not enough (0: off).",
)
@click.option(
    "--target-sqnr",
    type=float,
    default=FidelityTarget.sqnr_db,
    show_default=True,
    help="Output check on calibration samples: while an output's SQNR (dB; logits for a "
    "Softmax output) is below this, keep the decisions that cost the most in float (at most "
    "a fifth of them); 0: off.",
)
@click.option(
    "--target-top1",
    type=float,
    default=FidelityTarget.top1,
    show_default=True,
    help="Output check: top-1 agreement with float asked of classifier and Softmax outputs "
    "(fraction).",
)
@click.option(
    "--gptq",
    is_flag=True,
    help="Round MatMul/Gemm weights with GPTQ (error compensation from the inputs' second "
    "moments on --data) instead of round-to-nearest.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="Correct the bias of nodes left weights-only (integer weights, float inputs) for the "
    "mean shift their rounded weights cause, from the inputs' means on --data.",
)
@click.option(
    "--fold-weights/--no-fold-weights",
    default=True,
    show_default=True,
    help="Write the integer weights of nodes that run in float as Cast/Sub/Mul, which "
    "onnxruntime folds into float weights when it loads the model (file size of integers, "
    "speed of float); --no-fold-weights keeps their DequantizeLinear.",
)
@click.option(
    "--weights-only",
    is_flag=True,
    help="Quantize weights only; activations stay float (no calibration needed).",
)
@click.option(
    "--recipe",
    type=click.Path(path_type=Path),
    help="JSON/YAML file of per-node weight settings and exclusions (globs).",
)
@click.option(
    "--exclude", multiple=True, help="Node name or op type (glob) kept in float; repeatable."
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(path_type=Path),
    help="Data to measure fidelity on (default: the calibration data).",
)
@click.option("--labels", help="Key of integer labels in the data, to report accuracy.")
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default="static",
    show_default=True,
    help="static: calibrated activation ranges; dynamic: ranges computed at run time.",
)
@click.option(
    "--weight-method",
    type=click.Choice(["minmax", "percentile", "mse"]),
    default="minmax",
    show_default=True,
    help="How weight ranges are chosen.",
)
@click.option(
    "--weight-percentile",
    type=float,
    default=99.99,
    show_default=True,
    help="Percentile kept by --weight-method percentile.",
)
@method_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    help="Also write the JSON report here.",
)
@common_run_options
@handle_errors
def quantize(
    model: Path,
    output: Path,
    data: Path | None,
    ranges: Path | None,
    scheme: str | None,
    weight_scheme: str | None,
    activation_scheme: str | None,
    granularity: str,
    range_mode: str,
    bits: int | None,
    weight_bits: int | None,
    activation_bits: int | None,
    group_size: int,
    block_size: int,
    auto_sqnr: float,
    target_sqnr: float,
    target_top1: float,
    gptq: bool,
    bias_correction: bool,
    fold_weights: bool,
    weights_only: bool,
    recipe: Path | None,
    exclude: tuple[str, ...],
    eval_data: Path | None,
    labels: str | None,
    mode: str,
    weight_method: str,
    weight_percentile: float,
    method: str,
    percentile: float,
    bins: int,
    moving_average: float | None,
    as_json: bool,
    report_path: Path | None,
    batch_size: int,
    threads: int,
    quiet: bool,
) -> None:
    """Quantize MODEL to int8 with QuantizeLinear/DequantizeLinear nodes and report the cost.

    \b
    Examples:
      onnxq quantize model.onnx -o model.int8.onnx --data calib.npz
      onnxq quantize model.onnx -o q.onnx --ranges ranges.json --eval eval.npz --labels labels
      onnxq quantize model.onnx -o q.onnx --data calib.npz --scheme asym --granularity channel
    """
    if data is not None and ranges is not None:
        raise InputError("--data and --ranges are mutually exclusive: give one")
    if data is None and ranges is None and mode == "static" and not weights_only:
        raise InputError("give --data (calibrate now) or --ranges (a file from onnxq calibrate)")
    if report_path is not None:
        for source in (model, output, data, ranges, eval_data, recipe):
            check_distinct(source, report_path, "input or output")
        check_writable(report_path)
    if bits is not None and activation_bits is None and not weights_only and bits not in (8, 16):
        raise InputError(
            f"--bits {bits} would set activations to {bits} bits, but activations take 8 or 16: "
            f"use --weight-bits {bits}, or add --weights-only"
        )
    config = QuantConfig(
        weight_scheme=Scheme(weight_scheme or scheme or QuantConfig.weight_scheme.value),
        activation_scheme=Scheme(
            activation_scheme or scheme or QuantConfig.activation_scheme.value
        ),
        granularity=Granularity(granularity),
        range_mode=RangeMode(range_mode),
        weight_bits=weight_bits or bits or 8,
        activation_bits=activation_bits or (bits if bits and not weights_only else 8),
        group_size=group_size,
        block_size=block_size,
        weights_only=weights_only,
        auto_sqnr=auto_sqnr,
        target=FidelityTarget(target_sqnr, target_top1),
        gptq=gptq,
        bias_correction=bias_correction,
        fold_weights=fold_weights,
        recipe=read_recipe(recipe) if recipe is not None else None,
        exclude=exclude,
        mode=Mode(mode),
        weight_method=CalibrationMethod(weight_method),
        weight_percentile=weight_percentile,
    )
    calibration = CalibrationConfig(
        method=CalibrationMethod(method),
        batch_size=batch_size,
        percentile=percentile,
        bins=bins,
        moving_average=moving_average,
        scheme=config.activation_scheme,
        bits=config.activation_bits,
    )
    with render.progress(quiet) as progress:
        result = run_quantize(
            model,
            output,
            config,
            data=data,
            ranges=ranges,
            eval_data=eval_data,
            labels=labels,
            calibration=calibration,
            threads=threads,
            progress=progress,
        )
    if report_path is not None:
        write_atomic(report_path, (json.dumps(result.to_dict(), indent=1) + "\n").encode())
    render.quantization(result, as_json)


@cli.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@data_option()
@click.option("--labels", help="Key of integer labels in the data: report accuracy of both.")
@click.option(
    "--max-drop", type=float, help="Fail (exit 1) if accuracy drops by more than PP points."
)
@click.option("--min-agreement", type=float, help="Fail if top-1 agreement is below PCT percent.")
@click.option("--min-cosine", type=float, help="Fail if any output's mean cosine is below this.")
@click.option("--min-sqnr", type=float, help="Fail if any output's SQNR is below this many dB.")
@click.option(
    "--latency-runs",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Timed runs of each model on one sample (0: skip latency).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON document on stdout (schema onnxq-compare v1)."
)
@common_run_options
@handle_errors
def compare(
    reference: Path,
    candidate: Path,
    data: Path,
    labels: str | None,
    max_drop: float | None,
    min_agreement: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    latency_runs: int,
    as_json: bool,
    batch_size: int,
    threads: int,
    quiet: bool,
) -> None:
    """Measure CANDIDATE against REFERENCE; exit 1 when a threshold is violated.

    \b
    Example:
      onnxq compare model.onnx model.int8.onnx --data eval.npz --labels labels \\
          --max-drop 1 --min-agreement 99 --json
    """
    thresholds = Thresholds(max_drop, min_agreement, min_cosine, min_sqnr)
    with render.progress(quiet) as progress:
        report = run_compare(
            reference,
            candidate,
            data,
            labels=labels,
            thresholds=thresholds,
            batch_size=batch_size,
            threads=threads,
            latency_runs=latency_runs,
            progress=progress,
        )
    render.comparison(report, as_json)
    if not report.ok:
        sys.exit(EXIT_THRESHOLD)


def main() -> None:
    cli(prog_name="onnxq")


__all__ = ["ConfigError", "cli", "main"]
