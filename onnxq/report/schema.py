"""Every JSON document onnxq writes, in one place: names, versions and builders.

* ``onnxq-quantize`` v1 — the quantize report (``--json``, ``--report``);
* ``onnxq-compare`` v1 — the compare report;
* ``onnxq-inspect`` v1 — the inspect summary;
* ``onnxq-diagnose`` v1 — the per-tensor error and node sensitivity of ``onnxq diagnose``;
* ``onnxq-ranges`` v1 — the ranges file (written and read by
  :mod:`onnxq.calibration.ranges`, which takes its name and version from here).

docs/cli.md documents each field. Every document is strict JSON (RFC 8259; :func:`dumps`):
a value that is not a finite number — an infinite SQNR of identical outputs, a metric of an
output holding NaN — is written as null.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from onnxq._version import __version__
from onnxq.report.metrics import accuracy_of

if TYPE_CHECKING:
    from onnxq.inspect import Inspection
    from onnxq.report.compare import CompareReport
    from onnxq.report.diagnose import DiagnoseReport
    from onnxq.report.fidelity import Fidelity
    from onnxq.report.quantize_report import QuantizeReport

__all__ = [
    "COMPARE",
    "DIAGNOSE",
    "INSPECT",
    "QUANTIZE",
    "RANGES",
    "compare_document",
    "dumps",
    "diagnose_document",
    "inspect_document",
    "quantize_document",
]

QUANTIZE = ("onnxq-quantize", 1)
COMPARE = ("onnxq-compare", 1)
INSPECT = ("onnxq-inspect", 1)
DIAGNOSE = ("onnxq-diagnose", 1)
RANGES = ("onnxq-ranges", 1)


def _decision(d: Any) -> dict[str, Any]:
    out = asdict(d)
    out["action"] = d.action.value
    return out


def quantize_document(report: QuantizeReport) -> dict[str, Any]:
    fid = report.fidelity
    cls = fid.classifier if fid else None
    acc = accuracy_of(cls) if cls is not None else None
    return {
        "schema": QUANTIZE[0],
        "schema_version": QUANTIZE[1],
        "onnxq_version": __version__,
        "model": report.model_path,
        "output": report.output_path,
        "size": {
            "float_bytes": report.float_bytes,
            "quantized_bytes": report.quantized_bytes,
            "ratio": report.size_ratio,
        },
        "quantized_nodes": report.quantized_nodes,
        "quantized_weights": report.quantized_weights,
        "qdq_pairs": report.qdq_pairs,
        "float_biases": list(report.float_biases),
        "corrected_biases": list(report.corrected_biases),
        "padding_mask": report.padding_mask,
        "folded_weights": report.folded_weights,
        "output_check": None if report.check is None else report.check.to_dict(),
        "ranges": report.ranges_source,
        "preparation": list(report.preparation),
        "runtime": report.runtime.to_dict(),
        "latency": None if report.latency is None else report.latency.to_dict(),
        "fidelity": None
        if fid is None
        else {
            "data": report.fidelity_data,
            "samples": fid.samples,
            "outputs": [o.to_dict() for o in fid.outputs],
            "accuracy": None
            if acc is None
            else {
                "output": acc.output,
                "float": acc.reference,
                "quantized": acc.candidate,
                "drop_pp": acc.drop_pp,
            },
        },
        "settings": report.settings,
        "warnings": list(report.warnings),
        "methods": {
            "changes": [
                {"kind": c.kind.name.lower(), "name": c.name, "detail": c.detail}
                for c in report.methods
            ],
            "float_change": _fidelity(report.float_change),
        },
        "nodes": [_decision(d) for d in report.decisions],
    }


def _fidelity(fid: Fidelity | None) -> dict[str, Any] | None:
    if fid is None:
        return None
    return {"samples": fid.samples, "outputs": [o.to_dict() for o in fid.outputs]}


def compare_document(report: CompareReport) -> dict[str, Any]:
    from onnxq.runtime import runtime_version

    cls = report.fidelity.classifier
    acc = accuracy_of(cls) if cls is not None else None
    t = report.thresholds
    return {
        "schema": COMPARE[0],
        "schema_version": COMPARE[1],
        "onnxq_version": __version__,
        "onnxruntime_version": runtime_version(),
        "reference": {"path": report.reference, "bytes": report.reference_bytes},
        "candidate": {"path": report.candidate, "bytes": report.candidate_bytes},
        "size_ratio": report.candidate_bytes / report.reference_bytes,
        "data": {"path": report.data, "samples": report.fidelity.samples, "labels": report.labels},
        "outputs": [o.to_dict() for o in report.fidelity.outputs],
        "accuracy": None if acc is None else {**asdict(acc), "drop_pp": acc.drop_pp},
        "latency": None
        if report.latency is None
        else {
            "reference_ms": report.latency.reference_ms,
            "candidate_ms": report.latency.candidate_ms,
            "speedup": report.latency.speedup,
            "threads": report.latency.threads,
            "runs": report.latency.runs,
        },
        "thresholds": {
            "max_drop": t.max_drop,
            "min_agreement": t.min_agreement,
            "min_cosine": t.min_cosine,
            "min_sqnr": t.min_sqnr,
        },
        "task_metrics": dict(report.task),
        "goals": [
            {
                "name": g.goal.name,
                "bound": "min" if g.goal.at_least else "max",
                "value": g.goal.value,
                "measured": g.value,
                "met": g.met,
            }
            for g in report.goals
        ],
        "parts": [p.to_dict() for p in report.parts],
        "violations": list(report.violations),
        "ok": report.ok,
    }


def inspect_document(result: Inspection) -> dict[str, Any]:
    return {
        "schema": INSPECT[0],
        "schema_version": INSPECT[1],
        "path": result.path,
        **asdict(result.summary),
        "preparation": list(result.preparation),
        "nodes_after_preparation": [_decision(d) for d in result.decisions],
        "quantized_nodes": sum(d.quantized for d in result.decisions),
        "target": None
        if result.runtime is None
        else {
            "name": "cpu",
            "provider": "CPUExecutionProvider",
            **result.runtime.to_dict(),
        },
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def diagnose_document(report: DiagnoseReport) -> dict[str, Any]:
    sens = report.sensitivity
    return {
        "schema": DIAGNOSE[0],
        "schema_version": DIAGNOSE[1],
        "onnxq_version": __version__,
        "float": {"path": report.float_path, "prepared": report.float_prepared},
        "quantized": {"path": report.quantized_path},
        "data": {"path": report.data, "samples": report.samples},
        "matching": report.matching,
        "layers": [
            {
                "tensor": e.tensor,
                "codes": e.codes,
                "qtype": e.qtype,
                "scale": e.scale,
                "zero_point": e.zero_point,
                "values": e.values,
                "sqnr_db": _finite(e.sqnr_db),
                "own_sqnr_db": _finite(e.own_sqnr_db),
                "cosine": e.cosine,
                "max_abs_error": _finite(e.max_abs_error),
                "clipped_share": e.clipped_share,
                "range": {"min": _finite(e.range_min), "max": _finite(e.range_max)},
                "observed": {"min": _finite(e.observed_min), "max": _finite(e.observed_max)},
            }
            for e in report.layers
        ],
        "unmatched": list(report.unmatched),
        "settings": report.settings,
        "sensitivity": None
        if sens is None
        else {
            "method": sens.method,
            "samples": sens.samples,
            "outputs": list(sens.outputs),
            "all_sqnr_db": _finite(sens.all_sqnr_db),
            "nodes": [
                {
                    "name": n.node,
                    "op_type": n.op_type,
                    "sqnr_db": _finite(n.sqnr_db),
                    "noise_share": n.share,
                }
                for n in sens.nodes
            ],
        },
    }


def strict(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None (JSON null),
    through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def dumps(doc: dict[str, Any]) -> str:
    """``doc`` as the text onnxq prints or writes: indented strict JSON and a newline."""
    return json.dumps(strict(doc), indent=1, allow_nan=False) + "\n"
