"""``onnxq.compare``: a candidate model against its reference, with CI thresholds."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxq.calibration.collect import FloatSession
from onnxq.config import CalibrationConfig
from onnxq.data import DataSource, Preprocess, as_source
from onnxq.errors import ConfigError, ModelError
from onnxq.graph.concat_parts import concat_parts
from onnxq.graph.external import model_bytes
from onnxq.graph.model_io import input_specs, load_model
from onnxq.graph.passes.shapes import infer_shapes
from onnxq.report.fidelity import Fidelity, evaluate
from onnxq.report.metrics import OutputFidelity, accuracy_of
from onnxq.report.schema import compare_document
from onnxq.report.task import GoalResult, TaskMeter, TaskTarget, check_goals
from onnxq.report.task.parts import PartFidelity, PartsMeter, parts_of
from onnxq.runtime import Runner, measure_latency

__all__ = ["CompareReport", "Latency", "Thresholds", "compare"]


@dataclass(frozen=True)
class Thresholds:
    """Quality gates; ``None`` disables one. Percentages are 0–100."""

    max_drop: float | None = None  # accuracy drop against labels, percentage points
    min_agreement: float | None = None  # top-1 agreement with the reference, percent
    min_cosine: float | None = None  # mean cosine similarity of every output
    min_sqnr: float | None = None  # SQNR of every output, dB

    def __post_init__(self) -> None:
        for name, value, low, high in (
            ("--max-drop", self.max_drop, 0.0, 100.0),
            ("--min-agreement", self.min_agreement, 0.0, 100.0),
            ("--min-cosine", self.min_cosine, -1.0, 1.0),
        ):
            if value is not None and not (low <= value <= high):
                raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
        if self.min_sqnr is not None and not math.isfinite(self.min_sqnr):
            raise ConfigError(f"--min-sqnr must be a finite number of dB, got {self.min_sqnr:g}")

    @property
    def enabled(self) -> bool:
        """Whether any gate is set."""
        gates = (self.max_drop, self.min_agreement, self.min_cosine, self.min_sqnr)
        return any(v is not None for v in gates)


@dataclass(frozen=True)
class Latency:
    reference_ms: float
    candidate_ms: float
    threads: int
    runs: int

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.candidate_ms if self.candidate_ms else math.inf


@dataclass(frozen=True)
class CompareReport:
    reference: str
    candidate: str
    data: str
    reference_bytes: int
    candidate_bytes: int
    fidelity: Fidelity
    latency: Latency | None
    labels: str | None
    thresholds: Thresholds
    violations: tuple[str, ...] = field(default_factory=tuple)
    task: dict[str, float] = field(default_factory=dict)  # METRIC.VALUE -> value
    goals: tuple[GoalResult, ...] = ()  # --min-metric / --max-metric, measured
    parts: tuple[PartFidelity, ...] = ()  # concatenated outputs judged part by part

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON document (:func:`onnxq.report.schema.compare_document`)."""
        return compare_document(self)


def compare(
    reference_path: str | Path,
    candidate_path: str | Path,
    data_path: DataSource,
    *,
    labels: str | None = None,
    thresholds: Thresholds | None = None,
    batch_size: int = CalibrationConfig().batch_size,
    threads: int = 0,
    latency_runs: int = 20,
    progress: Callable[[str, int, int], None] | None = None,
    preprocess: Preprocess | None = None,
    task: TaskTarget | None = None,
) -> CompareReport:
    """Fidelity, accuracy, size and latency of ``candidate`` against ``reference`` on
    ``data_path``: a path, an array, a dict of arrays or feeds (:data:`DataSource`);
    ``preprocess`` is the preprocessing of a folder of images; ``task``: the declared task
    metrics (reported) and goals on them (gated). Concatenated outputs whose parts differ
    in range are also measured part by part (:mod:`onnxq.report.task.parts`)."""
    thresholds = thresholds or Thresholds()
    task = task or TaskTarget()
    if thresholds.max_drop is not None and labels is None:
        raise ConfigError("--max-drop needs --labels KEY naming the labels in the data")
    reference, candidate = load_model(reference_path), load_model(candidate_path)
    specs = input_specs(reference)
    if [s.name for s in input_specs(candidate)] != [s.name for s in specs]:
        raise ModelError(
            "the two models have different inputs; compare a model with its own quantization"
        )
    ref_outputs = [o.name for o in reference.graph.output]
    if [o.name for o in candidate.graph.output] != ref_outputs:
        raise ModelError(
            "the two models have different outputs; compare a model with its own quantization"
        )
    needs_classifier = thresholds.min_agreement is not None or thresholds.max_drop is not None
    ranks = [
        len(o.type.tensor_type.shape.dim)
        for o in reference.graph.output
        if o.type.tensor_type.HasField("shape")
    ]
    if needs_classifier and ranks and 2 not in ranks:
        raise ConfigError(
            "--min-agreement and --max-drop need a classifier-shaped output [batch, classes]; "
            "this model's outputs have ranks " + ", ".join(map(str, ranks))
        )
    meter = TaskMeter(task, ref_outputs)  # imports custom metrics: fails before any run
    parts = PartsMeter({n: parts_of(b) for n, b in concat_parts(reference).items()})
    source = as_source(data_path, preprocess, labels=labels)
    dataset = source.open(specs, label_key=labels)
    threads = threads or (os.cpu_count() or 1)
    # no spinning: the two sessions alternate in the latency measurement
    ref_runner = Runner(reference, threads=threads, what="reference model", spin=False)
    cand_runner = Runner(candidate, threads=threads, what="candidate model", spin=False)
    sizing = FloatSession(infer_shapes(reference).model, threads=threads)
    batch_size = sizing.affordable_batch(dataset, batch_size)
    del sizing
    fidelity = evaluate(
        ref_runner,
        cand_runner,
        dataset,
        batch_size=batch_size,
        progress=progress,
        observers=(meter, parts),
    )
    values = meter.result()
    latency = None
    if latency_runs > 0:
        first = next(dataset.batches(1)).feed
        ref_ms, cand_ms = measure_latency([ref_runner, cand_runner], first, runs=latency_runs)
        latency = Latency(ref_ms, cand_ms, threads, latency_runs)
    report = CompareReport(
        reference=str(reference_path),
        candidate=str(candidate_path),
        data=str(source),
        reference_bytes=model_bytes(reference_path),
        candidate_bytes=model_bytes(candidate_path),
        fidelity=fidelity,
        latency=latency,
        labels=labels,
        thresholds=thresholds,
        task=values,
        goals=tuple(check_goals(task.goals, values)),
        parts=parts.result(),
    )
    return replace(report, violations=tuple(check(report)))


def check(report: CompareReport) -> list[str]:
    """Every threshold the report violates, in words. An output holding NaN or inf (in
    either model) fails every threshold given: its metrics mean nothing."""
    t = report.thresholds
    if not t.enabled and not report.goals:
        return []
    out = [_nonfinite(o) for o in report.fidelity.outputs if not o.finite]
    out += [f"{g.goal.text} not met: {g.value:.4g}" for g in report.goals if not g.met]
    out += _classifier_violations(report)
    for o in report.fidelity.outputs:
        # written so that a NaN metric fails too
        if t.min_cosine is not None and not o.cosine_mean >= t.min_cosine:
            out.append(
                f"mean cosine of '{o.name}' is {o.cosine_mean:.5f} < --min-cosine {t.min_cosine:g}"
            )
        if t.min_sqnr is not None and not o.sqnr_db >= t.min_sqnr:
            out.append(f"SQNR of '{o.name}' is {o.sqnr_db:.2f} dB < --min-sqnr {t.min_sqnr:g} dB")
    for p in report.parts:  # the per-part rule: a threshold on SQNR applies to each part
        if t.min_sqnr is not None and not p.sqnr_db >= t.min_sqnr:
            out.append(f"SQNR of '{p.label}' is {p.sqnr_db:.2f} dB < --min-sqnr {t.min_sqnr:g} dB")
    return out


def _nonfinite(o: OutputFidelity) -> str:
    return (
        f"output '{o.name}' holds {o.candidate_nonfinite} NaN or infinite values in the "
        f"candidate and {o.reference_nonfinite} in the reference: every threshold fails"
    )


def _classifier_violations(report: CompareReport) -> list[str]:
    t, out = report.thresholds, []
    cls = report.fidelity.classifier
    if t.min_agreement is not None:
        if cls is None or cls.top1_agreement is None:
            raise ConfigError("--min-agreement needs a classifier-shaped output [batch, classes]")
        if 100.0 * cls.top1_agreement < t.min_agreement:
            out.append(
                f"top-1 agreement of '{cls.name}' is {100 * cls.top1_agreement:.2f}% "
                f"< --min-agreement {t.min_agreement:g}%"
            )
    if t.max_drop is not None:
        acc = accuracy_of(cls) if cls is not None else None
        if acc is None:
            raise ConfigError("--max-drop needs a classifier-shaped output and --labels")
        if acc.drop_pp > t.max_drop:
            out.append(f"accuracy drop is {acc.drop_pp:.2f} pp > --max-drop {t.max_drop:g} pp")
    return out
