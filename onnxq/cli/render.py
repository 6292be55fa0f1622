"""Everything onnxq shows a person: rich tables on stdout, progress and logs on stderr,
or exactly one JSON document on stdout with ``--json``. Colour only on a terminal."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from onnxq.calibration.ranges import RangesFile
from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.graph.summary import CodebookInfo
from onnxq.inspect import Inspection
from onnxq.report import schema
from onnxq.report.compare import CompareReport
from onnxq.report.metrics import OutputFidelity
from onnxq.report.quantize_report import QuantizeReport
from onnxq.tuning.check import CheckResult
from onnxq.tuning.fit import FitReport, describe_target

# markup=False: names and paths such as "[batch, 1, 8, 8]" are printed as they are
out = Console(highlight=False, markup=False, soft_wrap=True)  # lines stay whole in pipes
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def setup_logging(debug: bool) -> None:
    logger = logging.getLogger("onnxq")
    logger.handlers[:] = [RichHandler(console=err, show_path=False, show_time=False)]
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.propagate = False


def emit_json(doc: dict[str, Any]) -> None:
    """``doc`` as strict JSON on stdout (NaN and inf written as null)."""
    sys.stdout.write(schema.dumps(doc))


class _Stages:
    """Progress callback for the library: one bar per stage, on stderr."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)


PROGRESS_INTERVAL = "ONNXQ_PROGRESS_INTERVAL"  # seconds between plain progress lines
DEFAULT_INTERVAL = 5.0


class _Lines:
    """Progress callback for a stderr that is not a terminal (a file, a CI log): a plain
    line ``stage: done/total (pct%)`` at most every ``interval`` seconds, so a long run
    shows it is alive and a short one prints nothing."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        share = f" ({100 * done // total}%)" if total > 0 else ""
        err.print(f"{stage}: {done}/{total}{share}")


def _interval() -> float:
    """``ONNXQ_PROGRESS_INTERVAL`` seconds (a number >= 0), else 5."""
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 and math.isfinite(value) else DEFAULT_INTERVAL


@contextmanager
def progress(quiet: bool) -> Iterator[Any]:
    """A progress bar with ETA on stderr when it is a terminal, plain progress lines every
    few seconds when it is not; nothing with ``--quiet``."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        yield _Lines(_interval())
        return
    bar = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    with bar:
        yield _Stages(bar)


WIDE = 100_000  # "no limit" for a table's natural width


def _show(table: Table) -> None:
    """Print ``table`` on stdout without ever cutting a name: a cell wider than its
    column folds onto more lines instead of ending in an ellipsis, and when stdout is not
    a terminal (a file, a pipe, a CI log) and COLUMNS is not set, the table takes its
    natural width instead of 80 columns."""
    for column in table.columns:
        column.overflow = "fold"
    if not out.is_terminal and "COLUMNS" not in os.environ:
        table.width = Measurement.get(out, out.options.update_width(WIDE), table).maximum
    out.print(table)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _db(v: float) -> str:
    return "inf" if math.isinf(v) and v > 0 else f"{v:.2f}"


def _fidelity_table(title: str, outputs: tuple[OutputFidelity, ...]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("output", "cosine mean", "cosine min", "SQNR dB", "max abs err", "top-1 agree"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in outputs:
        table.add_row(
            o.name,
            f"{o.cosine_mean:.5f}",
            f"{o.cosine_min:.5f}",
            _db(o.sqnr_db),
            f"{o.max_abs_error:.4g}",
            _pct(o.top1_agreement),
        )
    return table


def _task_tables(report: CompareReport) -> None:
    """Per-part SQNR of concatenated outputs, then the task metrics and their goals."""
    if report.parts:
        table = Table(title="outputs judged part by part (ranges differ)", title_justify="left")
        for col in ("part", "range", "SQNR dB", "cosine"):
            table.add_column(col, justify="left" if col == "part" else "right")
        for p in report.parts:
            table.add_row(p.label, f"{p.range:.4g}", _db(p.sqnr_db), f"{p.cosine:.5f}")
        _show(table)
    if report.task:
        goals = {g.goal.name: g for g in report.goals}
        table = Table(title="task metrics", title_justify="left")
        for col in ("metric", "value", "goal"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for name, value in report.task.items():
            g = goals.get(name)
            verdict = "" if g is None else ("ok" if g.met else "MISSED")
            goal = "" if g is None else f"{g.goal.text[len(name) + 1 :]} {verdict}"
            table.add_row(name, f"{value:.4g}", goal)
        _show(table)


def inspection(result: Inspection, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
        return
    s = result.summary
    out.print(f"{result.path}  opset {s.opset}  {s.producer}")
    out.print(f"{s.nodes} nodes, {s.parameters:,} parameters ({_mb(s.parameter_bytes)})")
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, infos in (("input", s.inputs), ("output", s.outputs)):
        for t in infos:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in t.shape) + "]"
            io.add_row(kind, t.name, t.dtype, shape)
    _show(io)
    ops = Table(title="op types", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in s.op_histogram.items():
        ops.add_row(op, str(n))
    _show(ops)
    _codebooks(s.codebook_weights)
    plan = Table(
        title="quantization plan (default settings, after preparation)", title_justify="left"
    )
    for col in ("node", "op", "action", "why"):
        plan.add_column(col)
    kernel = {}
    if result.runtime is not None:
        plan.add_column("onnxruntime CPU")
        fallback = set(result.runtime.float_kernels)
        kernel = {
            d.name: ("float kernel" if d.name in fallback else "integer")
            for d in result.decisions
            if d.quantized
        }
    for d in result.decisions:
        row = [d.name, d.op_type, d.action.value, d.reason]
        if result.runtime is not None:
            row.append(kernel.get(d.name, ""))
        plan.add_row(*row)
    _show(plan)
    if result.runtime is not None:
        rt = result.runtime
        out.print(
            f"onnxruntime CPU: {rt.integer_kernels} integer kernels, {len(rt.float_kernels)} "
            f"quantized nodes on float kernels, {rt.standalone_qdq} stand-alone Q/DQ at run time"
        )
        if rt.slower_than_float_risk:
            out.print(
                "risk: more Q/DQ conversions than integer kernels; the quantized model is "
                "likely slower than float (measure with onnxq compare)"
            )


def _codebooks(books: tuple[CodebookInfo, ...]) -> None:
    """The weights the model stores as codebook indices (none: nothing printed)."""
    if not books:
        return
    table = Table(
        title="weights stored as codebooks (decoded when onnxruntime loads the model)",
        title_justify="left",
    )
    for col in ("decoded tensor", "shape", "bits", "tables", "stored"):
        table.add_column(col, justify="left" if col == "decoded tensor" else "right")
    for b in books:
        tables = "1" if b.axis is None else f"{b.shape[b.axis]} (axis {b.axis})"
        shape = "[" + ", ".join(map(str, b.shape)) + "]"
        table.add_row(b.name, shape, str(b.bits), tables, _mb(b.stored_bytes))
    _show(table)


def calibration(ranges: RangesFile, path: Path, quiet: bool = False) -> None:
    if quiet:
        return
    err.print(
        f"wrote {path}: {len(ranges.tensors)} tensors, {ranges.samples} samples, "
        f"method {ranges.method.value}, granularity {ranges.granularity.value}"
    )


def quantization(report: QuantizeReport, as_json: bool, quiet: bool = False) -> None:
    """The report as tables or one JSON document on stdout; notes on stderr in both cases
    (none with ``quiet``), and warnings (what ``--strict`` fails on) always."""
    if as_json:
        emit_json(report.to_dict())
    else:
        _quantization_tables(report)
    if not quiet:
        for line in _quantization_notes(report):
            err.print(line)
    for warning in report.warnings:
        err.print(f"warning: {warning}")


def _quantization_tables(report: QuantizeReport) -> None:
    table = Table(
        title=f"quantized {report.model_path} -> {report.output_path}", title_justify="left"
    )
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("size float", _mb(report.float_bytes))
    table.add_row(
        "size quantized", f"{_mb(report.quantized_bytes)} ({100 * report.size_ratio:.1f}%)"
    )
    table.add_row("quantized nodes", str(report.quantized_nodes))
    table.add_row("quantized weights", str(report.quantized_weights))
    table.add_row("Q/DQ pairs", str(report.qdq_pairs))
    table.add_row("onnxruntime integer kernels", str(report.integer_kernels))
    if report.latency is not None:
        lat = report.latency
        table.add_row(
            "latency vs float",
            f"{lat.ratio:.2f}× ({lat.written.value}: {lat.tried[lat.written]:.3g} vs "
            f"{lat.float_ms:.3g} ms, one sample)",
        )
    table.add_row("ranges", report.ranges_source)
    _show(table)
    if report.fidelity is not None:
        _show(
            _fidelity_table(
                f"fidelity on {report.fidelity_data} ({report.fidelity.samples} samples)",
                report.fidelity.outputs,
            )
        )
        cls = report.fidelity.classifier
        if cls is not None and cls.reference_accuracy is not None:
            drop = 100 * (cls.reference_accuracy - (cls.candidate_accuracy or 0.0))
            out.print(
                f"accuracy float {_pct(cls.reference_accuracy)}, quantized "
                f"{_pct(cls.candidate_accuracy)} (drop {drop:.2f} pp)"
            )


def _quantization_notes(report: QuantizeReport) -> list[str]:
    lines = []
    if report.float_kernels:
        shown = ", ".join(report.float_kernels[:8])
        more = f" and {len(report.float_kernels) - 8} more" if len(report.float_kernels) > 8 else ""
        lines.append(
            f"note: onnxruntime's CPU provider runs {len(report.float_kernels)} quantized nodes "
            f"with float kernels (dequantized weights): {shown}{more}"
        )
    if report.float_biases:
        lines.append(f"kept {len(report.float_biases)} biases in float (int32 would overflow)")
    if report.folded_weights:
        lines.append(
            f"{report.folded_weights} integer weights of float nodes are dequantized when "
            "onnxruntime loads the model (constant folding)"
        )
    if report.corrected_biases:
        lines.append(
            f"bias correction: {len(report.corrected_biases)} weights-only nodes "
            "(mean shift of their rounded weights taken back)"
        )
    if report.padding_mask is not None:
        lines.append(
            f"weight statistics over the positions '{report.padding_mask}' marks real "
            "(padding left out)"
        )
    if report.check is not None:
        lines.append(_check_line(report.check))
    return lines + _method_lines(report)


def _method_lines(report: QuantizeReport) -> list[str]:
    """One line per method that ran: equalisation (with why pairs were skipped, most
    common reason first), the ReLU6 replacement's cost, AdaRound, codebooks."""
    lines = []
    done = report.method_changes(ChangeKind.PAIR_EQUALIZED)
    skipped = report.method_changes(ChangeKind.PAIR_SKIPPED)
    if done or skipped:
        absorbed = len(report.method_changes(ChangeKind.BIAS_ABSORBED))
        line = f"equalisation: {len(done)} layer pairs equalised, {absorbed} high biases absorbed"
        if skipped:
            reasons = Counter(_reason(c) for c in skipped).most_common(3)
            shown = "; ".join(f"{n}x {why}" for why, n in reasons)
            line += f", {len(skipped)} pairs skipped ({shown})"
        lines.append(line)
    if report.float_change is not None:
        replaced = len(report.method_changes(ChangeKind.ACTIVATION_REPLACED))
        absorbed = len(report.method_changes(ChangeKind.BIAS_ABSORBED))
        what = [f"ReLU6 -> Relu in {replaced} places"] if replaced else []
        what += [f"{absorbed} high biases absorbed"] if absorbed else []
        worst = min(o.sqnr_db for o in report.float_change.outputs)
        lines.append(
            f"{' and '.join(what)} changed the float model: output SQNR {_db(worst)} dB "
            "against the original (the fidelity above includes it)"
        )
    return lines


def _reason(change: Change) -> str:
    """What a skip is counted under: the pass's group label (its detail when none)."""
    return change.group or change.detail


def _check_line(check: FitReport) -> str:
    t = check.target

    def state(r: CheckResult) -> str:
        top1 = r.worst_top1
        text = f"SQNR {r.sqnr_db:.1f} dB"
        if t.task.goals:
            shown = ", ".join(f"{g.name} {r.task.get(g.name, math.nan):.4g}" for g in t.task.goals)
            return f"{shown} ({text})"
        return text if top1 is None else f"{text}, top-1 {_pct(top1)}"

    wanted = describe_target(t) if t.task.goals else f"SQNR {t.sqnr_db:g} dB, top-1 {_pct(t.top1)}"
    head = f"output check on {check.before.samples} calibration samples (target {wanted}): "
    if not check.float_tensors and not check.float_nodes and check.before.meets(t):
        return head + f"met as planned ({state(check.before)})"
    verdict = "met" if check.met else "NOT met"
    if check.unsearched is not None:
        return head + f"{state(check.before)}, {verdict}: {check.unsearched}"
    return (
        head
        + (
            f"{state(check.before)} -> {state(check.after)}, {verdict}, after keeping "
            f"{len(check.float_tensors)} activations and {len(check.float_nodes)} nodes float "
            f"({check.passes} simulation runs)"
        )
        + "".join(
            f"\n  kept float by the output check: {kind} {_names(names)}"
            for kind, names in (("nodes", check.float_nodes), ("activations", check.float_tensors))
            if names
        )
        + (
            "\n  (that undoes what was asked for them: --target-sqnr 0 keeps every choice, "
            "a lower --target-sqnr keeps more)"
            if check.float_nodes or check.float_tensors
            else ""
        )
        + (
            f"\n  bias correction undone by the output check: the model without it had "
            f"{check.uncorrected_db:.1f} dB less output noise on the check samples"
            if check.uncorrected_db is not None
            else ""
        )
    )


def _names(names: tuple[str, ...], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def comparison(report: CompareReport, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
    else:
        _show(
            _fidelity_table(
                f"{report.candidate} vs {report.reference} on {report.data} "
                f"({report.fidelity.samples} samples)",
                report.fidelity.outputs,
            )
        )
        doc = report.to_dict()
        if doc["accuracy"]:
            a = doc["accuracy"]
            out.print(
                f"accuracy reference {_pct(a['reference'])}, candidate {_pct(a['candidate'])}"
                f" (drop {a['drop_pp']:.2f} pp)"
            )
        out.print(
            f"size {_mb(report.reference_bytes)} -> {_mb(report.candidate_bytes)} "
            f"({100 * doc['size_ratio']:.1f}%)"
        )
        if report.latency is not None:
            lat = report.latency
            out.print(
                f"latency (median of {lat.runs}, {lat.threads} threads, one sample): "
                f"{lat.reference_ms:.3f} ms -> {lat.candidate_ms:.3f} ms ({lat.speedup:.2f}x)"
            )
        _task_tables(report)
    for v in report.violations:
        err.print(f"threshold violated: {v}")
