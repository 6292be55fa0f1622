"""``onnxq.quantize``: prepare, get ranges, plan, rewrite, check, write, evaluate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

from onnxq._version import __version__
from onnxq.calibration.calibrate import Progress, activation_bytes, affordable_batch, observe
from onnxq.calibration.moments import input_means, input_moments
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.ranges import RangesFile, read_ranges
from onnxq.config import CalibrationConfig, Mode, QuantConfig, Scheme
from onnxq.data import Dataset, open_dataset
from onnxq.errors import ConfigError, ModelError, RangesError
from onnxq.graph.bias import bias_inputs, correct_biases
from onnxq.graph.dynamic import rewrite_dynamic
from onnxq.graph.embedding import quantize_embeddings
from onnxq.graph.fold import fold_float_weights
from onnxq.graph.model_io import (
    check_distinct,
    check_writable,
    input_specs,
    load_model,
    save_model,
)
from onnxq.graph.outputs import restrict_value_info
from onnxq.graph.plan import NodeDecision, QuantPlan, make_plan
from onnxq.graph.rewrite import RewriteResult, rewrite
from onnxq.graph.rules import GraphIndex
from onnxq.prepare import PreparedModel, prepare
from onnxq.quant import QParams, compute_qparams
from onnxq.quant.gptq import gptq
from onnxq.report.fidelity import Fidelity, evaluate
from onnxq.report.preflight import RuntimePreview, is_integer_kernel, runtime_preview
from onnxq.runtime import Runner
from onnxq.tuning.check import check_samples, make_check_set
from onnxq.tuning.fit import Candidate, FitReport, fit_target

__all__ = ["QuantizeReport", "is_integer_kernel", "quantize"]

log = logging.getLogger("onnxq")


@dataclass(frozen=True)
class QuantizeReport:
    model_path: str
    output_path: str
    float_bytes: int
    quantized_bytes: int
    quantized_nodes: int
    quantized_weights: int
    qdq_pairs: int
    decisions: tuple[NodeDecision, ...]
    ranges_source: str
    preparation: tuple[str, ...]
    runtime: RuntimePreview
    fidelity: Fidelity | None
    fidelity_data: str | None
    float_biases: tuple[str, ...] = field(default_factory=tuple)
    check: FitReport | None = None  # the output check on calibration samples
    corrected_biases: tuple[str, ...] = ()  # weights-only nodes whose bias was corrected
    folded_weights: int = 0  # integer weights of float nodes dequantized at load

    @property
    def size_ratio(self) -> float:
        return self.quantized_bytes / self.float_bytes if self.float_bytes else 0.0

    @property
    def integer_kernels(self) -> int:
        return self.runtime.integer_kernels

    @property
    def float_kernels(self) -> tuple[str, ...]:
        return self.runtime.float_kernels

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema ``onnxq-quantize``, version 1)."""
        fid = self.fidelity
        cls = fid.classifier if fid else None
        accuracy = None
        if cls is not None and cls.reference_accuracy is not None:
            accuracy = {
                "output": cls.name,
                "float": cls.reference_accuracy,
                "quantized": cls.candidate_accuracy,
                "drop_pp": 100.0 * (cls.reference_accuracy - (cls.candidate_accuracy or 0.0)),
            }
        return {
            "schema": "onnxq-quantize",
            "schema_version": 1,
            "onnxq_version": __version__,
            "model": self.model_path,
            "output": self.output_path,
            "size": {
                "float_bytes": self.float_bytes,
                "quantized_bytes": self.quantized_bytes,
                "ratio": self.size_ratio,
            },
            "quantized_nodes": self.quantized_nodes,
            "quantized_weights": self.quantized_weights,
            "qdq_pairs": self.qdq_pairs,
            "float_biases": list(self.float_biases),
            "corrected_biases": list(self.corrected_biases),
            "folded_weights": self.folded_weights,
            "output_check": None if self.check is None else self.check.to_dict(),
            "ranges": self.ranges_source,
            "preparation": list(self.preparation),
            "runtime": self.runtime.to_dict(),
            "fidelity": None
            if fid is None
            else {
                "data": self.fidelity_data,
                "samples": fid.samples,
                "outputs": [o.to_dict() for o in fid.outputs],
                "accuracy": accuracy,
            },
            "nodes": [asdict(d) for d in self.decisions],
        }


def quantize(
    model_path: str | Path,
    output_path: str | Path,
    config: QuantConfig | None = None,
    *,
    data: str | Path | None = None,
    ranges: str | Path | None = None,
    eval_data: str | Path | None = None,
    labels: str | None = None,
    calibration: CalibrationConfig | None = None,
    threads: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> QuantizeReport:
    """Quantize ``model_path`` to ``output_path`` and measure the result.

    Ranges come from ``data`` (calibrated here) or a ``ranges`` file made by
    :func:`onnxq.calibrate`. Fidelity is measured on ``eval_data`` (else ``data``).
    Everything is validated before anything is written; the output is written
    atomically and only once onnxruntime has loaded it.
    """
    config = config or QuantConfig()
    calibration = replace(
        calibration or CalibrationConfig(),
        scheme=config.activation_scheme,
        bits=config.activation_bits,
    )
    dynamic = config.mode is Mode.DYNAMIC
    if data is not None and ranges is not None:
        raise ConfigError("give one of --data (calibrate now) or --ranges (reuse a file), not both")
    no_calibration = dynamic or config.weights_only
    if not no_calibration and data is None and ranges is None:
        raise ConfigError("give --data (calibrate now) or --ranges (a file from onnxq calibrate)")
    if no_calibration and ranges is not None:
        raise ConfigError(
            "--mode dynamic and --weights-only need no activation ranges: drop --ranges"
        )
    for source, what in (
        (model_path, "model"),
        (data, "data"),
        (ranges, "ranges file"),
        (eval_data, "evaluation data"),
    ):
        check_distinct(source, output_path, what)
    check_writable(output_path)
    model = load_model(model_path)
    specs = input_specs(model)
    wants_data = not dynamic and (
        not config.weights_only or config.gptq or config.target.enabled or config.bias_correction
    )
    calib_set = open_dataset(data, specs) if data is not None and wants_data else None
    eval_path = eval_data if eval_data is not None else data
    if eval_path is not None and calib_set is not None and eval_path == data and labels is None:
        eval_set: Dataset | None = calib_set  # validated once
    else:
        eval_set = open_dataset(eval_path, specs, label_key=labels) if eval_path else None
    ranges_file = read_ranges(ranges) if ranges is not None else None

    prepared = prepare(model, min_opset=config.min_opset)
    check: FitReport | None = None
    sample_bytes: int | None = None  # float activations of one sample, once measured
    log.info("prepared %s: %s", model_path, "; ".join(prepared.steps) or "unchanged")
    if dynamic:
        result, decisions = rewrite_dynamic(prepared.model, config)
        source = "dynamic (computed at run time)"
    else:
        source_of = _Ranges(calib_set, ranges_file, str(data or ranges), calibration, threads)
        plan, observed, source, forbidden = _static_ranges(prepared, config, source_of, progress)
        codes = {}
        if config.gptq:
            gptq_data = calib_set or (open_dataset(data, specs) if data is not None else None)
            if gptq_data is None:
                raise ConfigError("--gptq needs calibration data: give --data")
            codes = _gptq_weights(prepared, plan, config, gptq_data, calibration, threads, progress)
        means = {}
        if config.bias_correction and calib_set is not None:
            sample_bytes = activation_bytes(prepared.model, calib_set, threads=threads)
            means = input_means(
                prepared.model,
                calib_set,
                bias_inputs(prepared.model, plan),
                samples=check_samples(calib_set),
                batch_size=affordable_batch(
                    prepared.model, calib_set, calibration.batch_size, sample_bytes=sample_bytes
                ),
                threads=threads,
            )
        elif config.bias_correction:
            log.info("bias correction needs calibration data (--data): skipped")
        build = _CandidateBuilder(
            prepared, config, source_of, observed, forbidden, plan, codes, means
        )
        candidate = build.candidate(plan)
        if config.target.enabled and calib_set is None:
            log.info("the output check needs calibration data (--data): skipped")
        elif config.target.enabled and calib_set is not None:
            if progress is not None:
                progress("output check", 0, 1)
            if sample_bytes is None:
                sample_bytes = activation_bytes(prepared.model, calib_set, threads=threads)
            check_set = make_check_set(
                prepared.model,
                calib_set,
                batch_size=calibration.batch_size,
                threads=threads,
                sample_bytes=sample_bytes,
            )
            if check_set.outputs:
                candidate, check = fit_target(
                    prepared.model, candidate, build, check_set, config.target, threads=threads
                )
            else:
                log.info("the output check has no float output with signal to compare: skipped")
            if progress is not None:
                progress("output check", 1, 1)
        result, decisions = candidate.result, candidate.plan.decisions
    if dynamic:
        result = _with_embeddings(result, decisions)
    if result.quantized_nodes == 0:
        raise ModelError(
            f"nothing in '{model_path}' can be quantized with these settings (weights inside "
            f"If/Loop/Scan bodies are not quantized); run onnxq inspect for why each node stays "
            "float; no file written"
        )
    restrict_value_info(result.model, (vi.name for vi in model.graph.value_info))
    if result.folded_weights:
        log.info("%d integer weights of float nodes are dequantized at load", result.folded_weights)
    log.info(
        "rewrote %d nodes, %d weights, %d Q/DQ pairs",
        result.quantized_nodes,
        result.quantized_weights,
        result.qdq_pairs,
    )
    quantized_runner = Runner(result.model, threads=threads, what="quantized model")
    runtime = runtime_preview(result.model, decisions)
    if runtime.float_kernels:
        log.info(
            "onnxruntime runs %d quantized nodes with float kernels", len(runtime.float_kernels)
        )
    size = save_model(result.model, output_path)

    fidelity = None
    if eval_set is not None:
        reference = Runner(model, threads=threads, what="float model")
        if eval_set is not calib_set or sample_bytes is None:
            sample_bytes = activation_bytes(prepared.model, eval_set, threads=threads)
        batch = affordable_batch(
            prepared.model, eval_set, calibration.batch_size, sample_bytes=sample_bytes
        )
        # in-sample (the calibration data, no --eval-data): a bounded share is enough to
        # report on; held-out data is measured whole
        limit = None if eval_set is not calib_set else _in_sample_limit(sample_bytes)
        fidelity = evaluate(
            reference,
            quantized_runner,
            eval_set,
            batch_size=batch,
            limit=limit,
            progress=progress,
        )
    return QuantizeReport(
        model_path=str(model_path),
        output_path=str(output_path),
        float_bytes=Path(model_path).stat().st_size,
        quantized_bytes=size,
        quantized_nodes=result.quantized_nodes,
        quantized_weights=result.quantized_weights,
        qdq_pairs=result.qdq_pairs,
        decisions=decisions,
        ranges_source=source,
        preparation=prepared.steps,
        runtime=runtime,
        fidelity=fidelity,
        fidelity_data=str(eval_path) if eval_path is not None else None,
        float_biases=result.float_biases,
        check=check,
        corrected_biases=result.corrected_biases,
        folded_weights=result.folded_weights,
    )


IN_SAMPLE_BYTES = 2**32  # float activations of the calibration samples the report runs


def _in_sample_limit(sample_bytes: int) -> int:
    """Samples of the calibration data the report measures: about IN_SAMPLE_BYTES of
    float activations (every sample of a small model, a few of a large one), at least 8."""
    return max(8, IN_SAMPLE_BYTES // max(sample_bytes, 1))


@dataclass(frozen=True)
class _Ranges:
    """Where activation ranges come from: data to calibrate on, or a ranges file."""

    data: Dataset | None
    file: RangesFile | None
    path: str
    calibration: CalibrationConfig
    threads: int

    def get(
        self, prepared: PreparedModel, plan: QuantPlan, progress: Progress | None = None
    ) -> dict[str, TensorRange]:
        """Ranges of ``plan.roots``."""
        if self.file is not None:
            return _ranges_for(plan, self.file, self.path)
        assert self.data is not None, "static quantization without data or ranges"
        return observe(
            prepared,
            self.data,
            plan.roots,
            self.calibration,
            threads=self.threads,
            progress=progress,
        )


def _static_ranges(
    prepared: PreparedModel, config: QuantConfig, source: _Ranges, progress: Progress | None
) -> tuple[QuantPlan, dict[str, TensorRange], str, dict[str, str]]:
    """The plan, its activation ranges, where they come from and the activation tensors
    kept float. Tensors whose range is too wide for one scale
    (additive masks) are then kept float and the plan is made again without them."""
    plan = make_plan(prepared.model, config)
    if not plan.roots:
        why = "none needed (weights only)" if config.weights_only else "none needed"
        return plan, {}, why, {}
    if source.file is not None:
        source.file.check_model(prepared.fingerprint, source.path)
        source.file.check_scheme(
            config.activation_scheme.value, source.path, config.activation_bits
        )
        if not source.file.fits(config.activation_scheme.value, config.activation_bits):
            log.info("ranges file made for another activation width: no SQNR remedy")
            config = replace(config, auto_sqnr=0.0)
        what = f"{source.path} ({source.file.method})"
    else:
        what = f"calibrated on {source.path} ({source.calibration.method.value})"
    observed = source.get(prepared, plan, progress)
    forbidden, observed = _auto_remedy(observed, config)
    if forbidden:
        forbidden = _with_aliases(forbidden, plan.aliases)
        log.info("keeping %d activation tensors in float", len(forbidden))
        plan = _replan(prepared, config, source, observed, forbidden)
    return plan, observed, what, forbidden


def _with_aliases(forbidden: dict[str, str], aliases: dict[str, str]) -> dict[str, str]:
    """``forbidden`` plus the integer-domain tensors that share a forbidden root's range."""
    return {**forbidden, **{t: forbidden[r] for t, r in aliases.items() if r in forbidden}}


def _replan(
    prepared: PreparedModel,
    config: QuantConfig,
    source: _Ranges,
    observed: dict[str, TensorRange],
    forbidden: dict[str, str],
    float_nodes: dict[str, str] | None = None,
) -> QuantPlan:
    """The plan with ``forbidden`` tensors and ``float_nodes`` kept float; ranges of roots
    it has that earlier plans did not are observed now (added to ``observed``)."""
    plan = make_plan(prepared.model, config, forbidden, float_nodes)
    missing = [t for t in plan.roots if t not in observed]
    if missing:
        observed.update(source.get(prepared, replace(plan, roots=tuple(missing))))
    return plan


class _CandidateBuilder:
    """Plans and rewrites the model again with more tensors and nodes kept float (for the
    output check), reusing the ranges observed so far and the GPTQ codes."""

    def __init__(
        self,
        prepared: PreparedModel,
        config: QuantConfig,
        source: _Ranges,
        observed: dict[str, TensorRange],
        forbidden: dict[str, str],
        first: QuantPlan,
        codes: dict[str, tuple[np.ndarray, QParams]],
        means: dict[str, np.ndarray],
    ) -> None:
        self.means = means  # input means of the weighted nodes (bias correction)
        self.prepared = prepared
        self.config = config
        self.source = source
        self.observed = dict(observed)
        self.forbidden = dict(forbidden)
        self.aliases = dict(first.aliases)
        self.codes = codes

    def __call__(self, tensors: dict[str, str], nodes: dict[str, str]) -> Candidate:
        forbidden = _with_aliases({**self.forbidden, **tensors}, self.aliases)
        plan = _replan(self.prepared, self.config, self.source, self.observed, forbidden, nodes)
        return self.candidate(plan)

    def candidate(self, plan: QuantPlan) -> Candidate:
        qparams = {t: _activation_qparams(self.observed[t], self.config) for t in plan.roots}
        result = rewrite(self.prepared.model, plan, qparams, self.config, self.codes)
        if self.means:
            model, corrected = correct_biases(result.model, self.prepared.model, self.means)
            result = replace(result, model=model, corrected_biases=corrected)
        result = _with_embeddings(result, plan.decisions)
        if not self.config.fold_weights:
            return Candidate(plan, qparams, result)
        folded, count = fold_float_weights(result.model)
        if not count:
            return Candidate(plan, qparams, result)
        written = replace(result, model=folded, folded_weights=count)
        return Candidate(plan, qparams, written, simulated=result.model)


def _with_embeddings(result: RewriteResult, decisions: tuple[NodeDecision, ...]) -> RewriteResult:
    """``result`` with its embedding tables stored as int8 rows."""
    embedded, tables = quantize_embeddings(result.model, decisions)
    if not tables:
        return result
    return replace(
        result,
        model=embedded,
        quantized_nodes=result.quantized_nodes + tables,
        quantized_weights=result.quantized_weights + tables,
    )


def _gptq_weights(
    prepared: PreparedModel,
    plan: QuantPlan,
    config: QuantConfig,
    data: Dataset,
    calibration: CalibrationConfig,
    threads: int,
    progress: Progress | None,
) -> dict[str, tuple[np.ndarray, QParams]]:
    """GPTQ codes of the 2-D weights of quantized MatMul and Gemm nodes, by node name,
    laid out as the plan stores the weight (blocked along the reduction axis, per output
    channel or per tensor)."""
    idx = GraphIndex(prepared.model)
    nodes = {n.name: n for n in prepared.model.graph.node}
    uses = [
        u
        for u in plan.weights
        if u.spec is not None
        and nodes[u.node].op_type in ("MatMul", "Gemm")
        and u.layout.kind in ("block", "channel", "tensor")
        and len(idx.initializers[u.tensor].dims) == 2
    ]
    inputs = sorted({nodes[u.node].input[0] for u in uses})
    if not inputs:
        return {}
    moments = input_moments(
        prepared,
        data,
        inputs,
        batch_size=calibration.batch_size,
        threads=threads,
        progress=progress,
    )
    out = {}
    for u in uses:
        assert u.spec is not None
        w = numpy_helper.to_array(idx.initializers[u.tensor]).astype(np.float32)
        transposed = (
            u.layout.kind == "block"
            and u.layout.axis == 1
            or (u.layout.kind == "channel" and u.layout.axis == 0)
        )
        kn = w.T if transposed else w  # [K, N]: rows are the reduction axis
        codes, qp = gptq(
            kn,
            moments[nodes[u.node].input[0]],
            u.spec.qtype,
            symmetric=u.spec.scheme is Scheme.SYM,
            block=u.layout.size if u.layout.kind == "block" else None,
            per_channel=u.layout.kind in ("channel", "group"),
            restricted=config.restricted,
        )
        if transposed:
            codes = codes.T
            axis = None if qp.axis is None else 1 - qp.axis
            scale = qp.scale.T if qp.block_size else qp.scale
            zp = qp.zero_point.T if qp.block_size else qp.zero_point
            qp = replace(qp, scale=scale, zero_point=zp, axis=axis)
        out[u.node] = (codes, qp)
    log.info("GPTQ rounded %d weights", len(out))
    return out


def _ranges_for(plan: QuantPlan, ranges: RangesFile, source: str) -> dict[str, TensorRange]:
    missing = [t for t in plan.roots if t not in ranges.tensors]
    if missing:
        raise RangesError(
            f"ranges file '{source}' has no range for tensor '{missing[0]}' "
            f"({len(missing)} missing); recalibrate with this onnxq version"
        )
    return {t: ranges.tensors[t] for t in plan.roots}


# An activation whose observed magnitude passes this cannot share one 8-bit (16-bit) scale
# with its ordinary values: typically an additive attention mask of -1e4 or -3.4e38.
WIDE_RANGE = {8: 5e3, 16: 1e9}


def _auto_remedy(
    observed: dict[str, TensorRange], config: QuantConfig
) -> tuple[dict[str, str], dict[str, TensorRange]]:
    """Activations one scale cannot hold, and the ranges to use instead.

    * a tensor whose magnitude passes ``WIDE_RANGE`` (an additive mask) stays float;
    * with ``config.auto_sqnr`` > 0, a tensor whose estimated SQNR on its range is below
      it gets its MSE-optimal range when that reaches ``auto_sqnr``, else stays float.
    Nodes reading or making a float tensor keep integer weights (weights only) or stay
    float. Returns (tensor -> why it stays float, ranges to use).
    """
    limit = WIDE_RANGE[config.activation_bits]
    forbidden: dict[str, str] = {}
    ranges = dict(observed)
    for name, r in observed.items():
        lo = float(np.min(r.min))
        hi = float(np.max(r.max))
        if r.observed_min is not None and r.observed_max is not None:
            lo = min(lo, float(np.min(r.observed_min)))
            hi = max(hi, float(np.max(r.observed_max)))
        bits = config.activation_bits
        if not max(abs(lo), abs(hi)) <= limit:  # also inf
            forbidden[name] = f"spans [{lo:.3g}, {hi:.3g}], too wide for one {bits}-bit scale"
            continue
        q = r.quality
        if config.auto_sqnr <= 0 or q is None or q.sqnr_db >= config.auto_sqnr:
            continue
        if q.robust_sqnr_db >= config.auto_sqnr:
            f32 = np.float32
            ranges[name] = replace(
                r, min=np.asarray(q.robust_min, f32), max=np.asarray(q.robust_max, f32), axis=None
            )
        else:
            forbidden[name] = (
                f"would keep {q.sqnr_db:.1f} dB on a {bits}-bit grid ({q.robust_sqnr_db:.1f} dB "
                f"clipped), below --auto-sqnr {config.auto_sqnr:g}"
            )
    return forbidden, ranges


def _activation_qparams(r: TensorRange, config: QuantConfig) -> QParams:
    whole = r.per_tensor() if r.axis is not None else r
    return compute_qparams(
        np.asarray(whole.min),
        np.asarray(whole.max),
        config.activation_qtype,
        symmetric=config.activation_scheme is Scheme.SYM,
        restricted=config.restricted,
    )
