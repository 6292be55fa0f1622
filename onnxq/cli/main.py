"""``onnxq`` commands. Each builds configuration, calls one library function and hands
the result to :mod:`onnxq.cli.render`. Exit status: 0 ok, 1 a quality threshold was
violated, 2 bad usage or input, 3 an internal error (a bug: please report it)."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq._version import __version__
from onnxq.calibration.calibrate import calibrate as run_calibrate
from onnxq.cli import render
from onnxq.cli.config_file import config_options, save_config, side_inputs
from onnxq.cli.diagnose import diagnose_options, run_diagnose
from onnxq.cli.options import (
    FiniteFloat,
    Percent,
    data_option,
    debug_option,
    image_options,
    is_quiet,
    method_options,
    quiet_option,
    run_options,
    shard_options,
    tuning_options,
    weight_options,
)
from onnxq.cli.reports import check_report_files, compare_reports, quantize_reports, report_options
from onnxq.cli.task_options import metric_options
from onnxq.config import (
    CalibrationConfig,
    CalibrationMethod,
    Granularity,
    LevelKind,
    Mode,
    OptimizeFor,
    QuantConfig,
    QuantFlags,
    RangeMode,
    Rounding,
    Scheme,
)
from onnxq.data import Preprocess
from onnxq.errors import OnnxqError
from onnxq.graph.model_io import (
    check_outputs,
    check_writable,
    model_files,
    write_atomic,
    written_files,
)
from onnxq.inspect import inspect_model
from onnxq.pipeline import quantize as run_quantize
from onnxq.recipe import read_recipe
from onnxq.report import schema
from onnxq.report.compare import Thresholds
from onnxq.report.compare import compare as run_compare
from onnxq.report.task import TaskTarget

EXIT_THRESHOLD = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT

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
        with _one_line_errors(_file_states(kwargs)):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _NotRaised(Exception):
    """Stands for click's NoArgsIsHelpError before click 8.2."""


# click >= 8.2 raises it for a bare `onnxq`: it shows the help, which is kept
_HELP_ERROR: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", _NotRaised)


@contextmanager
def _one_line_errors(files: dict[Path, tuple[int, int] | None]) -> Iterator[None]:
    """Every error as one ``Error: ...`` line and its exit code: a usage error (not click's
    Usage/Try lines) or a library error 2, Ctrl-C 130 (saying which of ``files`` were
    written), a bug 3."""
    try:
        yield
    except _HELP_ERROR:
        raise
    except click.UsageError as exc:
        raise InputError(exc.format_message().replace("\n", " ")) from exc
    except OnnxqError as exc:
        raise InputError(str(exc)) from exc
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except KeyboardInterrupt:
        click.echo(f"Error: interrupted; {_written_since(files)}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes exit 3
        if logging.getLogger("onnxq").isEnabledFor(logging.DEBUG):
            traceback.print_exc()
            sys.exit(EXIT_INTERNAL)
        click.echo(
            f"Error: internal error {type(exc).__name__}: {exc} (a bug in onnxq; "
            "rerun with --debug for the traceback)".replace("\n", " "),
            err=True,
        )
        sys.exit(EXIT_INTERNAL)


def _file_states(kwargs: dict[str, Any]) -> dict[Path, tuple[int, int] | None]:
    """Inode and modification time of each file path the command got (None: absent)."""
    states: dict[Path, tuple[int, int] | None] = {}
    for value in kwargs.values():
        if isinstance(value, Path) and not value.is_dir():
            try:
                st = value.stat()
                states[value] = (st.st_ino, st.st_mtime_ns)
            except OSError:
                states[value] = None
    return states


def _written_since(before: dict[Path, tuple[int, int] | None]) -> str:
    """What an interrupted command wrote (each output is renamed into place whole, so a
    changed file is a complete new one), in words."""
    now = _file_states({str(i): p for i, p in enumerate(before)})
    written = [str(p) for p, state in before.items() if now[p] is not None and now[p] != state]
    if not written:
        return "no output written"
    names = "', '".join(written)
    return f"'{names}' already written (complete); nothing else written"


class OnnxqGroup(click.Group):
    """The command group: an unknown option or command, a bad value, a missing argument or
    a file an option's callback cannot read — at the group or in a command — is one line on
    stderr and exit 2, as inside the commands (:func:`handle_errors`)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_errors({}):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors({}):
            return super().invoke(ctx)


@click.group(
    cls=OnnxqGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="onnxq")
@click.option("--debug", is_flag=True, help="Log details to stderr; show tracebacks of bugs.")
@quiet_option
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
@quiet_option
@debug_option
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
    default=CalibrationConfig.granularity.value,
    show_default=True,
    help="One range per activation tensor, or one per channel.",
)
@click.option(
    "--scheme",
    type=click.Choice([s.value for s in Scheme]),
    default=CalibrationConfig.scheme.value,
    show_default=True,
    help="Activation scheme the ranges are chosen for.",
)
@click.option(
    "--bits",
    type=int,
    default=CalibrationConfig.bits,
    show_default=True,
    help="Activation bit width.",
)
@method_options
@shard_options
@run_options
@config_options
@handle_errors
@image_options
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
    workers: int,
    scheduler: str | None,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None,
) -> None:
    """Run DATA through MODEL once and write the activation ranges to a JSON file.

    \b
    Examples:
      onnxq calibrate model.onnx --data calib.npz -o ranges.json --granularity channel
      onnxq calibrate model.onnx --data calib.npz -o ranges.json --workers 4
    """
    check_outputs({"model": model, "data": data, **side_inputs()}, {"-o/--output": output})
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
        workers=workers,
        scheduler=scheduler,
    )
    with render.progress(is_quiet()) as progress:
        ranges = run_calibrate(
            model, data, config, threads=threads, progress=progress, preprocess=preprocess
        )
    write_atomic(output, ranges.to_json().encode())
    save_config(click.get_current_context(), "calibrate")
    render.calibration(ranges, output, quiet=is_quiet())


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Quantized model to write.",
)
@data_option(required=False, help_text="Calibration data (file or folder); or use --ranges.")
@click.option("--ranges", type=click.Path(path_type=Path), help="Ranges file from onnxq calibrate.")
@weight_options
@tuning_options
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
@method_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    help="Also write the JSON report here.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when the output check misses its target or the quantized model is likely "
    "slower than float (the warnings print on stderr either way).",
)
@click.option(
    "--external-data/--no-external-data",
    default=None,
    help="Write the weights to <output>.data beside the model. Default: when the input "
    "has external data or the output would pass protobuf's 2 GB.",
)
@report_options
@shard_options
@run_options
@config_options
@handle_errors
@image_options
@metric_options
def quantize(
    model: Path,
    output: Path,
    data: Path | None,
    ranges: Path | None,
    recipe: Path | None,
    eval_data: Path | None,
    labels: str | None,
    method: str,
    percentile: float,
    bins: int,
    moving_average: float | None,
    as_json: bool,
    report_path: Path | None,
    strict: bool,
    external_data: bool | None,
    html: Path | None,
    markdown: Path | None,
    workers: int,
    scheduler: str | None,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None,
    task: TaskTarget,
    **flags: Any,
) -> None:
    """Quantize MODEL to int8 with QuantizeLinear/DequantizeLinear nodes and report the cost.

    \b
    Examples:
      onnxq quantize model.onnx -o model.int8.onnx --data calib.npz
      onnxq quantize model.onnx -o q.onnx --ranges ranges.json --eval eval.npz --labels labels
      onnxq quantize model.onnx -o q.onnx --data calib.npz --scheme asym --granularity channel
      onnxq quantize rec.onnx -o q.onnx --data calib.npz --metric ctc:charset=dict.txt \\
          --min-metric ctc.string_agreement=0.95
    """
    check_outputs(
        {
            **model_files("model", model),
            "data": data,
            "ranges file": ranges,
            "evaluation data": eval_data,
            "recipe": recipe,
            **side_inputs(),
        },
        {
            **written_files("-o/--output", output),
            "--report": report_path,
            "--html": html,
            "--markdown": markdown,
        },
    )
    if report_path is not None:
        check_writable(report_path)
    check_report_files(html, markdown)
    config = QuantConfig.from_flags(
        quant_flags(flags), read_recipe(recipe) if recipe is not None else None
    )
    config = replace(config, target=replace(config.target, task=task))
    calibration = CalibrationConfig(
        method=CalibrationMethod(method),
        batch_size=batch_size,
        percentile=percentile,
        bins=bins,
        moving_average=moving_average,
        scheme=config.activations.scheme,
        bits=config.activations.bits,
        workers=workers,
        scheduler=scheduler,
    )
    with render.progress(is_quiet()) as progress:
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
            preprocess=preprocess,
            external_data=external_data,
        )
    if report_path is not None:
        write_atomic(report_path, schema.dumps(result.to_dict()).encode())
    save_config(click.get_current_context(), "quantize")
    render.quantization(result, as_json, quiet=is_quiet())
    quantize_reports(
        result, html, markdown, batch_size=batch_size, threads=threads, preprocess=preprocess
    )
    if strict and result.warnings:
        sys.exit(EXIT_THRESHOLD)


def quant_flags(flags: dict[str, Any]) -> QuantFlags:
    """The quantize flags click parsed, as typed values (enums from their spellings)."""

    def enum(kind: type[Any], value: str | None) -> Any:
        return None if value is None else kind(value)

    return QuantFlags(
        scheme=enum(Scheme, flags["scheme"]),
        weight_scheme=enum(Scheme, flags["weight_scheme"]),
        activation_scheme=enum(Scheme, flags["activation_scheme"]),
        bits=flags["bits"],
        weight_bits=flags["weight_bits"],
        activation_bits=flags["activation_bits"],
        granularity=Granularity(flags["granularity"]),
        group_size=flags["group_size"],
        block_size=flags["block_size"],
        weight_method=CalibrationMethod(flags["weight_method"]),
        weight_percentile=flags["weight_percentile"],
        range_mode=RangeMode(flags["range_mode"]),
        exclude=tuple(flags["exclude"]),
        mode=Mode(flags["mode"]),
        weights_only=flags["weights_only"],
        auto_sqnr=flags["auto_sqnr"],
        gptq=flags["gptq"],
        target_sqnr=flags["target_sqnr"],
        target_top1=flags["target_top1"] / 100,  # percent on the command line
        bias_correction=flags["bias_correction"],
        fold_weights=flags["fold_weights"],
        rounding=Rounding(flags["rounding"]),
        seed=flags["seed"],
        adaround_iters=flags["adaround_iters"],
        equalize=flags["equalize"],
        relu6_to_relu=flags["relu6_to_relu"],
        absorb_high_bias=flags["absorb_high_bias"],
        optimize_for=OptimizeFor(flags["optimize_for"]),
        weight_levels=LevelKind(flags["weight_levels"]),
    )


@cli.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@data_option()
@click.option("--labels", help="Key of integer labels in the data: report accuracy of both.")
@click.option(
    "--max-drop",
    type=Percent(),
    help="Fail (exit 1) if accuracy drops by more than PP percentage points (0 to 100).",
)
@click.option(
    "--min-agreement",
    type=Percent(agreement=True),
    help="Fail if top-1 agreement is below PCT percent (0 to 100; 0.5% for under one percent).",
)
@click.option(
    "--min-cosine", type=FiniteFloat(), help="Fail if any output's mean cosine is below this."
)
@click.option(
    "--min-sqnr", type=FiniteFloat(), help="Fail if any output's SQNR is below this many dB."
)
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
@report_options
@run_options
@config_options
@handle_errors
@image_options
@metric_options
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
    html: Path | None,
    markdown: Path | None,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None,
    task: TaskTarget,
) -> None:
    """Measure CANDIDATE against REFERENCE; exit 1 when a threshold is violated.

    \b
    Examples:
      onnxq compare model.onnx model.int8.onnx --data eval.npz --labels labels \\
          --max-drop 1 --min-agreement 99 --json
      onnxq compare det.onnx det.int8.onnx --data eval.npz \\
          --metric detect:slice=4:,boxes=0:4,k=20 --min-metric detect.top20_agreement=0.95
    """
    thresholds = Thresholds(max_drop, min_agreement, min_cosine, min_sqnr)
    check_outputs(
        {
            "reference": reference,
            "candidate": candidate,
            "data": data,
            **side_inputs(),
        },
        {"--html": html, "--markdown": markdown},
    )
    check_report_files(html, markdown)
    with render.progress(is_quiet()) as progress:
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
            preprocess=preprocess,
            task=task,
        )
    save_config(click.get_current_context(), "compare")
    render.comparison(report, as_json)
    compare_reports(
        report, html, markdown, batch_size=batch_size, threads=threads, preprocess=preprocess
    )
    if not report.ok:
        sys.exit(EXIT_THRESHOLD)


@cli.command()
@diagnose_options
@handle_errors
@image_options
def diagnose(**options: Any) -> None:
    """Show where QUANTIZED loses accuracy against FLOAT_MODEL, tensor by tensor.

    For every quantized activation: SQNR, cosine and max error of the quantized model's
    value against the float model's, the share of values clipped, the range used against
    the range seen; worst first.

    \b
    Examples:
      onnxq diagnose model.onnx model.int8.onnx --data eval.npz --top 10
      onnxq diagnose model.onnx model.int8.onnx --data calib.npz --recipe-out recipe.json
    """
    run_diagnose(**options)


def main() -> None:
    cli(prog_name="onnxq")


__all__ = ["cli", "main"]
