"""Stage: weight transforms chosen before rounding — GPTQ codes of MatMul/Gemm weights
(from the inputs' second moments) and the input means bias correction needs. Each reads
the float model through the shared :class:`FloatSession`: GPTQ in passes of its own, the
means from what the calibration pass summed on the way (a pass of their own otherwise:
ranges from a file, sharded calibration, tensors a re-plan added)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxq.calibration.collect import FloatSession, MeansWanted, Progress
from onnxq.config import CalibrationConfig, Granularity, QuantConfig, Scheme
from onnxq.data import Dataset
from onnxq.errors import ConfigError
from onnxq.graph.external import spilled_array, tensor_values, uses_external_data
from onnxq.graph.passes.bias_correction import bias_inputs
from onnxq.graph.passes.result import Change
from onnxq.graph.plan import QuantPlan, WeightUse
from onnxq.graph.rules import GraphIndex, attribute
from onnxq.quant import QParams
from onnxq.quant.gptq import gptq
from onnxq.tuning.check import check_samples

__all__ = ["WeightChoices", "bias_means", "weight_choices"]

log = logging.getLogger(__name__)

MOMENT_BYTES = 512 * 2**20  # GPTQ input moments held at once (one float pass per group)


@dataclass(frozen=True)
class WeightChoices:
    # precomputed codes and qparams of some weights, by node name (GPTQ)
    codes: dict[str, tuple[np.ndarray, QParams]] = field(default_factory=dict)
    # per-channel input means of weighted nodes (bias correction), by tensor name
    means: dict[str, np.ndarray] = field(default_factory=dict)
    # what made codes computed after the first candidate (AdaRound), for the report
    notes: tuple[Change, ...] = ()


def weight_choices(
    plan: QuantPlan,
    config: QuantConfig,
    floats: FloatSession,
    data: Dataset | None,
    calibration: CalibrationConfig,
    progress: Progress | None,
) -> WeightChoices:
    """GPTQ codes (``config.gptq``) and bias-correction means (``config.bias_correction``)."""
    codes: dict[str, tuple[np.ndarray, QParams]] = {}
    if config.gptq:
        if data is None:
            raise ConfigError("--gptq needs calibration data: give --data")
        codes = gptq_codes(plan, config, floats, data, calibration.batch_size, progress)
    means: dict[str, np.ndarray] = {}
    wanted = bias_means(floats.model, plan, config, data)
    if wanted is not None and data is not None:
        batch_size = floats.affordable_batch(data, calibration.batch_size)
        means = floats.means(data, wanted.axes, samples=wanted.samples, batch_size=batch_size)
    elif config.bias_correction:
        log.info("bias correction needs calibration data (--data): skipped")
    return WeightChoices(codes, means)


def bias_means(
    model: onnx.ModelProto, plan: QuantPlan, config: QuantConfig, data: Dataset | None
) -> MeansWanted | None:
    """The input means bias correction needs for ``plan`` (the inputs of its weighted
    nodes, over the first check samples): asked of the calibration pass
    (:func:`onnxq.stages.ranges.static_ranges`) and read by :func:`weight_choices`. None
    without bias correction or data."""
    if not config.bias_correction or data is None:
        return None
    return MeansWanted(bias_inputs(model, plan), check_samples(data))


def gptq_codes(
    plan: QuantPlan,
    config: QuantConfig,
    floats: FloatSession,
    data: Dataset,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, tuple[np.ndarray, QParams]]:
    """GPTQ codes of the 2-D weights of quantized MatMul and Gemm nodes, by node name,
    laid out as the plan stores the weight (blocked along the reduction axis, per output
    channel or per tensor)."""
    model = floats.model
    idx = GraphIndex(model)
    nodes = {n.name: n for n in model.graph.node}
    uses = [
        u
        for u in plan.weights
        if u.spec is not None
        and nodes[u.node].op_type in ("MatMul", "Gemm")
        and u.layout.kind in (Granularity.BLOCK, Granularity.CHANNEL, Granularity.TENSOR)
        and len(idx.initializers[u.tensor].dims) == 2
    ]
    widths: dict[str, int] = {}  # reduction width of each input (its moments are width²)
    for u in uses:
        widths[nodes[u.node].input[0]] = _reduction_width(nodes[u.node], idx)
    out: dict[str, tuple[np.ndarray, QParams]] = {}
    spill = uses_external_data(model)  # a large model: codes kept on disk until the rewrite
    for group in _moment_groups(widths):
        moments = floats.moments(data, group, batch_size=batch_size, progress=progress)
        for u in uses:
            if nodes[u.node].input[0] in moments:
                codes = _gptq_of(u, nodes[u.node], idx, moments, config)
                if codes is not None:
                    out[u.node] = (spilled_array(codes[0]), codes[1]) if spill else codes
        del moments
    log.info("GPTQ rounded %d weights", len(out))
    return out


def _reduction_width(node: onnx.NodeProto, idx: GraphIndex) -> int:
    """The reduction width of a MatMul/Gemm by its 2-D weight (no weight values read)."""
    dims = idx.initializers[node.input[1]].dims
    trans_b = node.op_type == "Gemm" and bool(attribute(node, "transB", 0))
    return int(dims[1] if trans_b else dims[0])


def _moment_groups(widths: dict[str, int]) -> list[list[str]]:
    """Inputs in groups whose moments (width² float64 each) fit MOMENT_BYTES together, in
    name order: one pass of the float model per group, so memory follows the budget (or
    the largest input), not the model (an LLM's FFN inputs: hundreds of MB each)."""
    groups: list[list[str]] = []
    held = 0
    for name in sorted(widths):
        size = widths[name] ** 2 * 8
        if not groups or held + size > MOMENT_BYTES:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def _gptq_of(
    u: WeightUse,
    node: onnx.NodeProto,
    idx: GraphIndex,
    moments: dict[str, np.ndarray],
    config: QuantConfig,
) -> tuple[np.ndarray, QParams] | None:
    """GPTQ codes of one weight, laid out as the plan stores it; None when its input
    overflows on the data (round to nearest then)."""
    assert u.spec is not None  # filtered by the caller
    if not np.isfinite(moments[node.input[0]]).all():
        log.info("GPTQ skipped for '%s': its input overflows on the data", u.node)
        return None
    w = tensor_values(idx.initializers[u.tensor]).astype(np.float32)
    kind, axis = u.layout.kind, u.layout.axis
    transposed = (kind is Granularity.BLOCK and axis == 1) or (
        kind is Granularity.CHANNEL and axis == 0
    )
    kn = w.T if transposed else w  # [K, N]: rows are the reduction axis
    codes, qp = gptq(
        kn,
        moments[node.input[0]],
        u.spec.qtype,
        symmetric=u.spec.scheme is Scheme.SYM,
        block=u.layout.size if kind is Granularity.BLOCK else None,
        per_channel=kind in (Granularity.CHANNEL, Granularity.GROUP),
        restricted=config.restricted,
    )
    return (codes.T, _transposed(qp)) if transposed else (codes, qp)


def _transposed(qp: QParams) -> QParams:
    axis = None if qp.axis is None else 1 - qp.axis
    scale = qp.scale.T if qp.block_size else qp.scale
    zp = qp.zero_point.T if qp.block_size else qp.zero_point
    return replace(qp, scale=scale, zero_point=zp, axis=axis)
