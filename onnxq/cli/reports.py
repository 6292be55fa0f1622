"""``--html FILE`` and ``--markdown FILE`` of quantize, compare and diagnose: the options,
the checks before any work, and writing the files (atomically) once the command ran. The
pages are built and rendered by the library (:mod:`onnxq.report.page`,
:mod:`onnxq.report.html`, :mod:`onnxq.report.markdown`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq.cli import render
from onnxq.cli.options import is_quiet, stack
from onnxq.data import Preprocess
from onnxq.graph.model_io import check_writable, write_atomic
from onnxq.report.compare import CompareReport
from onnxq.report.diagnose import REPORT_SAMPLES, DiagnoseReport, diagnose
from onnxq.report.html import render_html, require_report_extra
from onnxq.report.markdown import render_markdown
from onnxq.report.page import Page, compare_page, diagnose_page, quantize_page
from onnxq.report.quantize_report import QuantizeReport

__all__ = [
    "check_report_files",
    "compare_reports",
    "diagnose_reports",
    "quantize_reports",
    "report_options",
]

F = TypeVar("F", bound=Callable[..., Any])

report_options: Callable[[F], F] = stack(
    click.option(
        "--html",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Also write a self-contained HTML report (charts inline; needs the report "
        "extra: pip install 'onnxq[report]').",
    ),
    click.option(
        "--markdown",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Also write a short Markdown summary (for a CI comment).",
    ),
)


def check_report_files(html: Path | None, markdown: Path | None) -> None:
    """Before any work: the report extra is installed for ``--html``, the folders exist.
    (That no report overwrites an input is the command's ``check_outputs``.)"""
    if html is not None:
        require_report_extra()
        check_writable(html)
    if markdown is not None:
        check_writable(markdown)


def _write(page: Page, html: Path | None, markdown: Path | None) -> None:
    if html is not None:
        write_atomic(html, render_html(page).encode())
    if markdown is not None:
        write_atomic(markdown, render_markdown(page).encode())


def _layers(
    reference: str,
    candidate: str,
    data: str | None,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None,
    *,
    wanted: bool,
) -> DiagnoseReport | None:
    """Per-layer error for the HTML report of quantize and compare: the first
    REPORT_SAMPLES samples of ``data`` (None when not ``wanted`` — Markdown only — or
    without data or quantized activations)."""
    if not wanted or data is None:
        return None
    with render.progress(is_quiet()) as progress:
        found = diagnose(
            reference,
            candidate,
            data,
            limit=REPORT_SAMPLES,
            batch_size=batch_size,
            threads=threads,
            progress=progress,
            allow_empty=True,
            preprocess=preprocess,
        )
    return found if found.layers else None


def quantize_reports(
    report: QuantizeReport,
    html: Path | None,
    markdown: Path | None,
    *,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None = None,
) -> None:
    if html is None and markdown is None:
        return
    models = (report.model_path, report.output_path, report.fidelity_data)
    layers = _layers(*models, batch_size, threads, preprocess, wanted=html is not None)
    _write(quantize_page(report, layers), html, markdown)


def compare_reports(
    report: CompareReport,
    html: Path | None,
    markdown: Path | None,
    *,
    batch_size: int,
    threads: int,
    preprocess: Preprocess | None = None,
) -> None:
    if html is None and markdown is None:
        return
    models = (report.reference, report.candidate, report.data)
    layers = _layers(*models, batch_size, threads, preprocess, wanted=html is not None)
    settings = layers.settings if layers is not None else None
    _write(compare_page(report, layers, settings), html, markdown)


def diagnose_reports(report: DiagnoseReport, html: Path | None, markdown: Path | None) -> None:
    if html is not None or markdown is not None:
        _write(diagnose_page(report), html, markdown)
