"""What the HTML and Markdown reports show, built from a quantize, compare or diagnose
report: plain strings and numbers, no rendering (:mod:`onnxq.report.html`,
:mod:`onnxq.report.markdown`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxq._version import __version__
from onnxq.report.compare import CompareReport
from onnxq.report.diagnose import DiagnoseReport
from onnxq.report.metrics import OutputFidelity, accuracy_of
from onnxq.report.quantize_report import QuantizeReport

__all__ = ["Page", "compare_page", "db", "diagnose_page", "pct", "quantize_page", "share"]


@dataclass(frozen=True)
class OutputRow:
    name: str
    cosine_mean: str
    cosine_min: str
    sqnr_db: str
    max_abs_error: str
    top1: str


@dataclass(frozen=True)
class Page:
    """One report, ready to render."""

    kind: str  # "quantize", "compare" or "diagnose"
    title: str
    summary: tuple[tuple[str, str], ...]
    outputs: tuple[OutputRow, ...] = ()
    outputs_title: str = ""
    layers: DiagnoseReport | None = None
    sizes: tuple[int, int] | None = None  # float / reference, quantized / candidate bytes
    latency: tuple[float, float] | None = None  # ms, same order
    settings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()  # violations, warnings, what the output check kept float
    version: str = field(default=__version__)


def db(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}"


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def share(value: float) -> str:
    """A small fraction as a percentage that never reads 0 when it is not 0."""
    if value == 0:
        return "0%"
    if value < 1e-5:
        return "<0.001%"
    return f"{100 * value:.3g}%"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


def _rows(outputs: tuple[OutputFidelity, ...]) -> tuple[OutputRow, ...]:
    return tuple(
        OutputRow(
            o.name,
            f"{o.cosine_mean:.5f}",
            f"{o.cosine_min:.5f}",
            db(o.sqnr_db),
            f"{o.max_abs_error:.4g}",
            pct(o.top1_agreement),
        )
        for o in outputs
    )


def flat_settings(settings: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as ``a.b.c`` -> value rows (lists and scalars as compact JSON)."""
    rows: list[tuple[str, str]] = []
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += flat_settings(value, f"{name}.")
        else:
            rows.append((name, value if isinstance(value, str) else json.dumps(value)))
    return rows


def _layer_notes(layers: DiagnoseReport | None) -> list[str]:
    if layers is None or not layers.layers:
        return []
    worst = layers.layers[0]
    return [
        f"worst tensor: {worst.tensor}, own SQNR {db(worst.own_sqnr_db)} dB, "
        f"{db(worst.sqnr_db)} dB against float, {share(worst.clipped_share)} of values clipped"
    ]


def quantize_page(report: QuantizeReport, layers: DiagnoseReport | None = None) -> Page:
    summary = [
        ("model", report.model_path),
        ("output", report.output_path),
        (
            "size",
            f"{megabytes(report.float_bytes)} -> {megabytes(report.quantized_bytes)} "
            f"({pct(report.size_ratio, 1)})",
        ),
        ("quantized nodes", str(report.quantized_nodes)),
        ("Q/DQ pairs", str(report.qdq_pairs)),
        ("onnxruntime integer kernels", str(report.integer_kernels)),
        ("ranges", report.ranges_source),
    ]
    fid = report.fidelity
    cls = fid.classifier if fid is not None else None
    acc = accuracy_of(cls) if cls is not None else None
    if acc is not None:
        summary.append(
            (
                "accuracy",
                f"float {pct(acc.reference)}, quantized {pct(acc.candidate)} "
                f"(drop {acc.drop_pp:.2f} pp)",
            )
        )
    notes = list(report.warnings)
    check = report.check
    if check is not None and check.reason is not None:
        kept = [*check.float_nodes, *check.float_tensors]
        notes.append(f"the output check kept float: {', '.join(kept)} ({check.reason})")
    return Page(
        kind="quantize",
        title=f"onnxq quantize: {report.model_path} -> {report.output_path}",
        summary=tuple(summary),
        outputs=_rows(fid.outputs) if fid is not None else (),
        outputs_title=""
        if fid is None
        else f"fidelity on {report.fidelity_data} ({fid.samples} samples)",
        layers=layers,
        sizes=(report.float_bytes, report.quantized_bytes),
        settings=tuple(flat_settings(report.settings)),
        notes=tuple(notes + _layer_notes(layers)),
    )


def compare_page(
    report: CompareReport,
    layers: DiagnoseReport | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Page:
    """``settings``: the candidate's recorded onnxq settings, when it has them."""
    summary = [
        ("reference", report.reference),
        ("candidate", report.candidate),
        ("data", f"{report.data} ({report.fidelity.samples} samples)"),
        (
            "size",
            f"{megabytes(report.reference_bytes)} -> {megabytes(report.candidate_bytes)} "
            f"({pct(report.candidate_bytes / report.reference_bytes, 1)})",
        ),
        ("result", "ok" if report.ok else "threshold violated"),
    ]
    cls = report.fidelity.classifier
    acc = accuracy_of(cls) if cls is not None else None
    if acc is not None:
        summary.append(
            (
                "accuracy",
                f"reference {pct(acc.reference)}, candidate {pct(acc.candidate)} "
                f"(drop {acc.drop_pp:.2f} pp)",
            )
        )
    lat = report.latency
    if lat is not None:
        summary.append(
            (
                "latency",
                f"{lat.reference_ms:.3f} ms -> {lat.candidate_ms:.3f} ms "
                f"({lat.speedup:.2f}x, median of {lat.runs}, {lat.threads} threads)",
            )
        )
    summary += [(f"SQNR of {p.label}", f"{db(p.sqnr_db)} dB") for p in report.parts]
    goals = {g.goal.name: g for g in report.goals}
    for name, value in report.task.items():
        g = goals.get(name)
        verdict = "" if g is None else f" (goal {g.goal.text}: {'met' if g.met else 'missed'})"
        summary.append((name, f"{value:.4g}{verdict}"))
    run = {"thresholds": asdict(report.thresholds), "labels": report.labels}
    return Page(
        kind="compare",
        title=f"onnxq compare: {report.candidate} vs {report.reference}",
        summary=tuple(summary),
        outputs=_rows(report.fidelity.outputs),
        outputs_title=f"fidelity on {report.data} ({report.fidelity.samples} samples)",
        layers=layers,
        sizes=(report.reference_bytes, report.candidate_bytes),
        latency=None if lat is None else (lat.reference_ms, lat.candidate_ms),
        settings=tuple(flat_settings(run) + flat_settings(settings, "candidate.")),
        notes=tuple(
            [*(f"threshold violated: {v}" for v in report.violations), *_layer_notes(layers)]
        ),
    )


def diagnose_page(report: DiagnoseReport) -> Page:
    summary = [
        (
            "float model",
            report.float_path + (" (prepared as quantize does)" if report.float_prepared else ""),
        ),
        ("quantized model", report.quantized_path),
        ("data", f"{report.data} ({report.samples} samples)"),
        ("tensors compared", f"{len(report.layers)} (matched by {report.matching})"),
    ]
    sens = report.sensitivity
    if sens is not None:
        summary.append(
            (
                "all nodes quantized",
                f"{db(sens.all_sqnr_db)} dB output SQNR (simulated, {sens.samples} samples)",
            )
        )
    return Page(
        kind="diagnose",
        title=f"onnxq diagnose: {report.quantized_path} vs {report.float_path}",
        summary=tuple(summary),
        layers=report,
        settings=tuple(flat_settings(report.settings, "quantized with.")),
        notes=tuple(_layer_notes(report)),
    )
