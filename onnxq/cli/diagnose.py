"""``onnxq diagnose``: its options, the call into :func:`onnxq.report.diagnose.diagnose`,
and the tables (or the ``onnxq-diagnose`` JSON document). The command itself is listed in
:mod:`onnxq.cli.main` with the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from onnxq.cli import render
from onnxq.cli.config_file import side_inputs
from onnxq.cli.options import data_option, is_quiet, run_options, stack
from onnxq.cli.reports import check_report_files, diagnose_reports, report_options
from onnxq.data import Preprocess
from onnxq.graph.model_io import check_outputs, write_atomic
from onnxq.recipe import exclusion_recipe
from onnxq.report.diagnose import DiagnoseReport, diagnose
from onnxq.report.page import db, share
from onnxq.report.sensitivity import Sensitivity

__all__ = ["diagnose_options", "run_diagnose"]

F = TypeVar("F", bound=Callable[..., Any])

diagnose_options: Callable[[F], F] = stack(
    click.argument("float_model", type=click.Path(path_type=Path)),
    click.argument("quantized", type=click.Path(path_type=Path)),
    data_option(),
    click.option(
        "--limit",
        type=click.IntRange(min=1),
        help="Compare on the first N samples (whole batches); default: all.",
    ),
    click.option(
        "--top",
        type=click.IntRange(min=1),
        default=20,
        show_default=True,
        help="Rows of the tables, worst first (the JSON document lists all).",
    ),
    click.option(
        "--sensitivity",
        is_flag=True,
        help="Also rank the quantized nodes by what each costs the outputs when quantized "
        "alone (float model with only that node's inputs quantized).",
    ),
    click.option(
        "--recipe-out",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write a recipe keeping the most costly nodes float, for quantize --recipe "
        "(implies --sensitivity).",
    ),
    click.option(
        "--recipe-nodes",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="At most this many nodes in --recipe-out: the worst ones holding half the noise.",
    ),
    click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout."),
    report_options,
    run_options,
)


def run_diagnose(
    float_model: Path,
    quantized: Path,
    data: Path,
    limit: int | None,
    top: int,
    sensitivity: bool,
    recipe_out: Path | None,
    recipe_nodes: int,
    as_json: bool,
    html: Path | None,
    markdown: Path | None,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None = None,
) -> None:
    """Check the outputs, run the diagnosis, write the files, print the result."""
    check_outputs(
        {
            "float model": float_model,
            "quantized model": quantized,
            "data": data,
            **side_inputs(),
        },
        {"--recipe-out": recipe_out, "--html": html, "--markdown": markdown},
    )
    check_report_files(html, markdown)
    with render.progress(is_quiet()) as progress:
        report = diagnose(
            float_model,
            quantized,
            data,
            limit=limit,
            sensitivity=sensitivity or recipe_out is not None,
            batch_size=batch_size,
            threads=threads,
            progress=progress,
            preprocess=preprocess,
        )
    if recipe_out is not None:
        _write_recipe(report.sensitivity, recipe_out, recipe_nodes)
    diagnose_reports(report, html, markdown)
    if as_json:
        render.emit_json(report.to_dict())
    else:
        _tables(report, top)


def _write_recipe(sens: Sensitivity | None, path: Path, at_most: int) -> None:
    nodes = sens.offenders(at_most) if sens is not None else ()
    text = json.dumps(exclusion_recipe(nodes), indent=1) + "\n"
    write_atomic(path, text.encode())
    if not is_quiet():
        shown = ", ".join(nodes) if nodes else "no node (nothing measurably costly)"
        render.err.print(f"wrote {path}: keeps float {shown}")


def _tables(report: DiagnoseReport, top: int) -> None:
    table = Table(
        title=f"{report.quantized_path} vs {report.float_path} on {report.data} "
        f"({report.samples} samples): {len(report.layers)} quantized activations, worst first",
        title_justify="left",
    )
    columns = ("tensor", "own SQNR dB", "SQNR dB", "cosine", "max abs err", "clipped")
    for col in (*columns, "range used", "seen"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for e in report.layers[:top]:
        table.add_row(
            e.tensor,
            db(e.own_sqnr_db),
            db(e.sqnr_db),
            f"{e.cosine:.5f}",
            f"{e.max_abs_error:.4g}",
            share(e.clipped_share),
            f"[{e.range_min:.4g}, {e.range_max:.4g}]",
            f"[{e.observed_min:.4g}, {e.observed_max:.4g}]",
        )
    render._show(table)
    if len(report.layers) > top:
        render.out.print(f"... {len(report.layers) - top} more (--top, or --json for all)")
    if report.sensitivity is not None:
        _sensitivity_table(report.sensitivity, top)
    if report.unmatched and not is_quiet():
        render.err.print(
            f"{len(report.unmatched)} quantized activations have no tensor of the float model "
            "to compare with"
        )


def _sensitivity_table(sens: Sensitivity, top: int) -> None:
    table = Table(
        title=f"node sensitivity on {sens.samples} samples ({', '.join(sens.outputs)}), worst "
        f"first; all nodes quantized: {db(sens.all_sqnr_db)} dB",
        title_justify="left",
    )
    for col in ("node", "op", "output SQNR dB alone", "share of noise"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right")
    for n in sens.nodes[:top]:
        table.add_row(n.node, n.op_type, db(n.sqnr_db), f"{100 * n.share:.1f}%")
    render._show(table)
    render.out.print(f"method: {sens.method}")
