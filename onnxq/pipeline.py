"""``onnxq.quantize``: the list of its stages and nothing else.

inputs → prepare → equalize → float session → (dynamic rewrite | ranges → weight choices →
plan and rewrite → AdaRound codes and rewrite → output check and latency
(:mod:`onnxq.stages.check_and_time`: with ``--optimize-for balanced`` int8 timed first
and the check on what the timing chose, else the check then the timing)) → candidate
session → save → evaluate → report. Each stage is a module of :mod:`onnxq.stages`; adding
one is one module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from onnxq.calibration.collect import FloatSession
from onnxq.calibration.parallel import ModelOrigin
from onnxq.config import CalibrationConfig, Mode, QuantConfig, Rounding
from onnxq.data import Dataset, DataSource, Preprocess, as_sources
from onnxq.graph.candidate import Candidate
from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.graph.plan import QuantPlan
from onnxq.report.fidelity import Fidelity, KnownOutputs
from onnxq.report.preflight import RuntimePreview
from onnxq.report.quantize_report import QuantizeReport
from onnxq.runtime import Runner
from onnxq.stages.adaround import adaround_codes
from onnxq.stages.check import Checked
from onnxq.stages.check_and_time import CheckAndTime
from onnxq.stages.dynamic import DYNAMIC_SOURCE, quantize_dynamic
from onnxq.stages.equalize import Equalized, equalized
from onnxq.stages.evaluate import candidate_session, measure, runtime_of
from onnxq.stages.inputs import Inputs, Progress, QuantizeRequest, load_inputs
from onnxq.stages.latency import LatencyCheck, latency_choice
from onnxq.stages.prepare import PreparedModel, prepare
from onnxq.stages.range_check import ranges_file_warnings
from onnxq.stages.ranges import RangeSource, static_ranges
from onnxq.stages.replan import Replanner
from onnxq.stages.save import save
from onnxq.stages.weights import weight_choices
from onnxq.tuning.check import compared_tensors

__all__ = ["QuantizeReport", "quantize"]


def quantize(
    model_path: str | Path,
    output_path: str | Path,
    config: QuantConfig | None = None,
    *,
    data: DataSource | None = None,
    ranges: str | Path | None = None,
    eval_data: DataSource | None = None,
    labels: str | None = None,
    calibration: CalibrationConfig | None = None,
    threads: int = 0,
    progress: Progress | None = None,
    preprocess: Preprocess | None = None,
    external_data: bool | None = None,
) -> QuantizeReport:
    """Quantize ``model_path`` to ``output_path`` and measure the result: ranges come from
    ``data`` (calibrated here) or a ``ranges`` file made by :func:`onnxq.calibrate`, fidelity
    from ``eval_data`` (else ``data``); data is a path, arrays or feeds (:data:`DataSource`;
    ``preprocess``: of image folders). Everything is validated before anything is written;
    the output is written atomically and only once onnxruntime has loaded it
    (``external_data``: :attr:`QuantizeRequest.external_data`)."""
    data_source, eval_source = as_sources(data, eval_data, preprocess, labels=labels)
    request = QuantizeRequest(
        Path(model_path),
        Path(output_path),
        config or QuantConfig(),
        calibration or CalibrationConfig(),
        data=data_source,
        ranges=_path(ranges),
        eval_data=eval_source,
        labels=labels,
        threads=threads,
        progress=progress,
        preprocess=preprocess,
        external_data=external_data,
    )
    model, inputs = load_inputs(request)
    prepared = _prepared(request, model)
    del model  # the prepared copy is planned on: the user's weights are not kept
    batch_size = request.calibration.batch_size
    equal = equalized(
        prepared, request.config, inputs.calib, batch_size=batch_size, threads=threads
    )
    prepared = equal.prepared
    floats = _float_session(request, prepared)
    checked, ranges_source, latency = _quantized(request, inputs, prepared, floats)
    warned = ranges_file_warnings(floats, inputs.eval, inputs.ranges, request.ranges, batch_size)
    runner = candidate_session(checked.candidate, checked.runner, threads)
    runtime = runtime_of(checked.candidate, runner)
    settings = _settings(request, latency)
    written = save(checked.candidate, prepared.value_info, request, settings, equal.rescaled)
    fidelity, equal = _fidelity(request, inputs, floats, equal, runner, checked)
    facts = _Facts(ranges_source, runtime, written, fidelity, settings, equal, warned, latency)
    return _report(request, inputs, prepared, checked, replace(facts, padding_mask=floats.mask))


def _prepared(request: QuantizeRequest, model: onnx.ModelProto) -> PreparedModel:
    """The prepared model; the original's digest only when a ranges file is checked
    against it."""
    min_opset = request.config.min_opset
    return prepare(model, min_opset=min_opset, fingerprinted=request.ranges is not None)


def _fidelity(
    request: QuantizeRequest,
    inputs: Inputs,
    floats: FloatSession,
    equal: Equalized,
    runner: Runner,
    checked: Checked,
) -> tuple[Fidelity | None, Equalized]:
    """The written model's fidelity against the user's float model (in-sample: from the
    output check's runs of it on the check samples, then the rest run) and, when
    equalisation changed the float function (ReLU6 replaced), what that change alone
    costs."""
    floats.release_wide()  # a re-plan or the ranges check may have built it again

    def against(
        reference: FloatSession, candidate: Runner, known: KnownOutputs | None = None
    ) -> Fidelity | None:
        return measure(
            reference,
            candidate,
            inputs.eval,
            in_sample=inputs.eval is inputs.calib,
            batch_size=request.calibration.batch_size,
            progress=request.progress,
            known=known,
        )

    if equal.original is None:  # the check compared with this float model: its runs hold
        return against(floats, runner, checked.outputs), equal
    return against(equal.original, runner), replace(
        equal, float_change=against(equal.original, floats.reference_runner)
    )


def _quantized(
    request: QuantizeRequest, inputs: Inputs, prepared: PreparedModel, floats: FloatSession
) -> tuple[Checked, str, LatencyCheck | None]:
    """The candidate to write (dynamic, or static/weights-only after the output check, or
    what ``--optimize-for`` chose when that was slower than float), where its activation
    ranges came from, in words, and how fast the candidates ran."""
    config, calib = request.config, request.calibration
    timing = inputs.calib or inputs.eval
    if config.mode is Mode.DYNAMIC:
        dynamic = Checked(quantize_dynamic(prepared.model, config), None, None)
        floats.release_wide(inputs.calib, inputs.eval)  # sized for the report; not kept
        timed = latency_choice(dynamic, None, floats, timing, config, request.threads)
        return timed[0], DYNAMIC_SOURCE, timed[1]
    data_path = str(request.data or request.ranges)
    source = RangeSource(
        floats,
        inputs.calib,
        inputs.ranges,
        data_path,
        calib,
        request.progress,
        keep_outputs=inputs.eval is inputs.calib,  # the report runs on these samples
    )
    ranges = static_ranges(prepared, config, source)
    weights = weight_choices(ranges.plan, config, floats, inputs.calib, calib, request.progress)
    replanner = Replanner(prepared.model, config, source, ranges, weights)
    first: Candidate = replanner.build(ranges.plan)
    if config.rounding is Rounding.ADAROUND and inputs.calib is not None:
        first = _adarounded(first, ranges.plan, replanner, floats, inputs.calib, request)
    stage = CheckAndTime(floats, config, calib, request.threads, request.progress)
    checked, latency = stage(replanner, first, inputs.calib, inputs.eval)
    return checked, ranges.source, latency


def _adarounded(
    nearest: Candidate,
    plan: QuantPlan,
    replanner: Replanner,
    floats: FloatSession,
    data: Dataset,
    request: QuantizeRequest,
) -> Candidate:
    """The candidate rebuilt with AdaRound codes learnt on ``nearest``'s inputs; the
    replanner keeps the codes for the output check's rebuilds."""
    rounded = adaround_codes(
        nearest,
        floats,
        data,
        request.config,
        batch_size=request.calibration.batch_size,
        threads=request.threads,
        progress=request.progress,
    )
    replanner.add_codes(rounded.codes, rounded.changes)
    return replanner.build(plan)


@dataclass(frozen=True)
class _Facts:
    """What the later stages measured, for the report."""

    ranges_source: str
    runtime: RuntimePreview
    written: int
    fidelity: Fidelity | None
    settings: dict[str, object]
    equalization: Equalized
    ranges_warnings: tuple[str, ...]  # a --ranges file against the data
    latency: LatencyCheck | None  # the written model timed against float
    # the model's padding mask input (reported when the written weights' statistics used it)
    padding_mask: str | None = None


def _report(
    request: QuantizeRequest,
    inputs: Inputs,
    prepared: PreparedModel,
    checked: Checked,
    facts: _Facts,
) -> QuantizeReport:
    c = checked.candidate
    return QuantizeReport(
        model_path=str(request.model_path),
        output_path=str(request.output_path),
        float_bytes=inputs.float_bytes,
        quantized_bytes=facts.written,
        quantized_nodes=c.quantized_nodes,
        quantized_weights=c.quantized_weights,
        qdq_pairs=c.qdq_pairs,
        decisions=c.decisions,
        ranges_source=facts.ranges_source,
        preparation=prepared.steps,
        runtime=facts.runtime,
        fidelity=facts.fidelity,
        fidelity_data=inputs.eval_path if inputs.eval is not None else None,
        float_biases=c.float_biases,
        check=checked.report,
        corrected_biases=c.corrected_biases,
        folded_weights=c.folded_weights,
        settings=facts.settings,
        methods=(*facts.equalization.reported, *_method_changes(c)),
        float_change=facts.equalization.float_change,
        ranges_warnings=facts.ranges_warnings,
        latency=facts.latency,
        padding_mask=facts.padding_mask if _weight_statistics(request.config, c) else None,
    )


def _weight_statistics(config: QuantConfig, candidate: Candidate) -> bool:
    """Whether the written weights come from input statistics over positions (bias
    correction's means, GPTQ's or AdaRound's moments: onnxq.calibration.positions)."""
    return bool(candidate.corrected_biases) or config.gptq or config.rounding is Rounding.ADAROUND


def _method_changes(candidate: Candidate) -> tuple[Change, ...]:
    """What the weight methods did in the rewrite, for the report (codebooks)."""
    return tuple(ch for ch in candidate.result.changes if ch.kind in _METHOD_KINDS)


_METHOD_KINDS = frozenset(
    {ChangeKind.WEIGHT_CODEBOOK, ChangeKind.WEIGHT_ADAROUND, ChangeKind.WEIGHT_ADAROUND_SKIPPED}
)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def _settings(request: QuantizeRequest, latency: LatencyCheck | None) -> dict[str, object]:
    """The run's settings as requested and, when ``--optimize-for`` wrote another model
    than int8 (weights-only or dynamic, measured faster), which one: the model's record
    then says what it holds."""
    settings = request.settings()
    if latency is not None and latency.replaced:
        settings["written"] = latency.written.value
    return settings


def _float_session(request: QuantizeRequest, prepared: PreparedModel) -> FloatSession:
    """The float session of the run; workers of sharded calibration rebuild its model from
    the file (not an equalised one: that exists only here)."""
    origin = ModelOrigin(str(request.model_path.resolve()), request.config.min_opset)
    return FloatSession(
        prepared.model,
        threads=request.threads,
        extra=_reference_tensors(prepared),
        origin=None if request.config.equalize else origin,
    )


def _reference_tensors(prepared: PreparedModel) -> tuple[str, ...]:
    """What the float session fetches beyond calibration's tensors: the graph outputs and
    the logits the output check compares."""
    outputs = tuple(o.name for o in prepared.model.graph.output)
    return (*outputs, *compared_tensors(prepared.model)[0])
