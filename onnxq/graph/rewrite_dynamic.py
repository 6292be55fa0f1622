"""Dynamic quantization: weights stored as integers ahead of time, activation ranges
computed at run time by DynamicQuantizeLinear, integer MatMul via MatMulInteger.

The pattern written is DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul, which
onnxruntime's CPU provider fuses into DynamicQuantizeMatMul. Conv is kept in float:
onnxruntime's ConvInteger has no uint8 × int8 kernel, and dynamic uint8 × uint8
convolution is slower than float on CPUs without VNNI.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.config import Granularity, QuantConfig, Scheme
from onnxq.graph.edit import drop_unused_initializers, topological
from onnxq.graph.external import stored_tensor, tensor_values, uses_external_data
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.plan import (
    EMBEDDING_REASON,
    NodeAction,
    NodeDecision,
    check_patterns,
    first_match,
)
from onnxq.graph.rules import GraphIndex, attribute, embedding_check
from onnxq.quant import quantize
from onnxq.quant.weights import WeightLayout, weight_qparams

__all__ = ["dynamic_decisions", "rewrite_dynamic"]

CONV_REASON = (
    "dynamic Conv kept in float: onnxruntime's ConvInteger has no uint8 x int8 kernel and "
    "uint8 x uint8 is slower than float on this kind of CPU"
)


def _float_attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return float(attribute(node, name, default))


def _check(node: onnx.NodeProto, idx: GraphIndex, config: QuantConfig) -> str | None:
    """None when ``node`` is quantized dynamically, else why not."""
    pattern = first_match(node, config.exclude)
    if pattern is not None:
        return f"excluded by --exclude {pattern}"
    if node.op_type in ("Conv", "ConvTranspose"):
        return CONV_REASON
    if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
        return f"no dynamic rule for {node.op_type}; kept in float"
    a, b = node.input[0], node.input[1]
    if not idx.is_float_activation(a):
        return f"input '{a}' is not a float32 activation"
    if not idx.is_float_initializer(b) or idx.ranks.get(b) != 2:
        return f"weight '{b}' is not a 2-D float32 constant"
    if node.op_type == "Gemm" and _float_attr(node, "transA", 0):
        return "Gemm with transA is kept in float"
    return None


def dynamic_decisions(model: onnx.ModelProto, config: QuantConfig) -> tuple[NodeDecision, ...]:
    """What dynamic quantization does to each node of ``model`` (prepared)."""
    check_patterns(model, config.exclude)
    idx = GraphIndex(model)
    out = []
    for node in model.graph.node:
        if node.op_type == "Gather" and first_match(node, config.exclude) is None:
            reason, done = embedding_check(node, idx), EMBEDDING_REASON
        else:
            reason, done = _check(node, idx, config), "dynamic uint8 x int8"
        action = NodeAction.FLOAT if reason else NodeAction.QUANTIZE
        out.append(NodeDecision(node.name, node.op_type, action, reason or done))
    return tuple(out)


def rewrite_dynamic(
    model: onnx.ModelProto, decisions: tuple[NodeDecision, ...], config: QuantConfig
) -> PassResult:
    """The dynamically quantized copy of ``model`` (prepared: named nodes, shapes
    inferred) for ``decisions`` (:func:`dynamic_decisions`); embeddings are left to
    :func:`onnxq.graph.passes.embeddings.quantize_embeddings`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    names = NameFactory(out)
    chosen = {d.name for d in decisions if d.quantized and d.op_type != "Gather"}
    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    activations: dict[str, tuple[str, str, str]] = {}  # x -> (x_q, x_scale, x_zp)
    weights: list[str] = []
    spill = uses_external_data(model)
    for node in out.graph.node:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        x = node.input[0]
        if x not in activations:
            q, s, z = (names.new(f"{x}_{k}") for k in ("quantized", "scale", "zp"))
            new_nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [x], [q, s, z], name=names.new(f"{x}_DynamicQ")
                )
            )
            activations[x] = (q, s, z)
        q, s, z = activations[x]
        w = tensor_values(idx.initializers[node.input[1]]).astype(np.float32)
        alpha, bias = 1.0, None
        if node.op_type == "Gemm":
            if _float_attr(node, "transB", 0):
                w = w.T
            alpha = _float_attr(node, "alpha", 1.0)
            if len(node.input) > 2 and node.input[2]:
                bias = (node.input[2], _float_attr(node, "beta", 1.0))
        spec = config.weights
        layout = (
            WeightLayout(Granularity.CHANNEL, 1)
            if spec.granularity is Granularity.CHANNEL
            else WeightLayout()
        )
        qp = weight_qparams(
            w,
            layout,
            spec.method,
            spec.qtype,
            symmetric=spec.scheme is Scheme.SYM,
            restricted=config.restricted,
            percentile=spec.percentile,
        )
        base = node.input[1]
        w_q, w_zp, w_scale = (names.new(f"{base}_{k}") for k in ("quantized", "zp", "scale"))
        inits += [
            stored_tensor(quantize(w, qp), w_q, spill=spill),  # external data: to the spill
            numpy_helper.from_array(qp.zero_point, w_zp),
            numpy_helper.from_array((qp.scale * np.float32(alpha)).astype(np.float32), w_scale),
        ]
        weights.append(base)
        y = node.output[0]
        acc, acc_f, both = (names.new(f"{y}_{k}") for k in ("int32", "float", "scale"))
        last = y if bias is None else names.new(f"{y}_nobias")
        new_nodes += [
            helper.make_node(
                "MatMulInteger",
                [q, w_q, z, w_zp],
                [acc],
                name=names.new(f"{node.name}_MatMulInteger"),
            ),
            helper.make_node(
                "Cast",
                [acc],
                [acc_f],
                name=names.new(f"{node.name}_Cast"),
                to=onnx.TensorProto.FLOAT,
            ),
            helper.make_node("Mul", [s, w_scale], [both], name=names.new(f"{node.name}_Scale")),
            helper.make_node("Mul", [acc_f, both], [last], name=names.new(f"{node.name}_Mul")),
        ]
        if bias is not None:
            c_name, beta = bias
            if beta != 1.0:
                c = tensor_values(idx.initializers[c_name]).astype(np.float32) * np.float32(beta)
                c_name = names.new(f"{c_name}_scaled")
                inits.append(numpy_helper.from_array(c, c_name))
            new_nodes.append(
                helper.make_node("Add", [last, c_name], [y], name=names.new(f"{node.name}_Bias"))
            )
    del out.graph.node[:]
    out.graph.node.extend(topological(new_nodes, out.graph))
    out.graph.initializer.extend(inits)
    drop_unused_initializers(out)
    changes = [Change(ChangeKind.NODE_QUANTIZED, d.name) for d in decisions if d.name in chosen]
    changes += [Change(ChangeKind.WEIGHT_QUANTIZED, w, "weight") for w in weights]
    changes += [Change(ChangeKind.QDQ_PAIR, x, "dynamic") for x in activations]
    return PassResult(out, bool(changes), tuple(changes))
