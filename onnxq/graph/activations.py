"""Which activation tensors calibration may need a range for, and along which axis their
per-channel statistics run: read off the graph alone, before any plan is made (so
calibration depends on the graph rules, never on the planner)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import onnx
from onnx import numpy_helper

from onnxq.graph.rules import (
    ACTIVATION_FUSIONS,
    COMPUTE,
    CONV_LIKE,
    LOOKUP,
    NEEDS_QUANTIZED_INPUT,
    RULES,
    TRANSPARENT,
    GraphIndex,
    Role,
)

__all__ = [
    "REARRANGING",
    "calibrated_tensors",
    "candidate_tensors",
    "channel_axis",
    "in_graph_order",
    "never_quantized",
    "origin_node",
    "rectified_sources",
    "scaled_sources",
    "value_aliases",
]

# Ops whose output holds exactly the values of their first input, rearranged: the same
# minimum, maximum and histogram.
REARRANGING = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def in_graph_order(model: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    """``tensors`` in the order the graph first mentions them (inputs first)."""
    wanted = set(tensors)
    order: list[str] = [v.name for v in model.graph.input if v.name in wanted]
    seen = set(order)
    for node in model.graph.node:
        for t in (*node.input, *node.output):
            if t in wanted and t not in seen:
                seen.add(t)
                order.append(t)
    return order


def channel_axis(tensor: str, idx: GraphIndex) -> int:
    """Axis of per-channel activation statistics: 1 for NCHW tensors, else the last."""
    ops = [n.op_type for n in idx.consumers.get(tensor, [])]
    if tensor in idx.producer:
        ops.append(idx.producer[tensor].op_type)
    rank = idx.ranks.get(tensor, 0)
    if rank >= 4 or (rank == 3 and any(op in CONV_LIKE for op in ops)):
        return 1
    return -1


def candidate_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation of a node with a rule, passthrough or fusable activation:
    the tensors a float session fetches activations from (its outputs, and so the bytes
    a run of it allocates, by which later stages size their batches)."""
    return _tensors_of(model, GraphIndex(model), frozenset())


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation that some quantization setting may need a range for (what
    ``onnxq calibrate`` keeps): the :func:`candidate_tensors` of the nodes other than the
    element-wise ones no setting quantizes (:func:`never_quantized`)."""
    idx = GraphIndex(model)
    return _tensors_of(model, idx, frozenset(never_quantized(model, idx)))


def _tensors_of(model: onnx.ModelProto, idx: GraphIndex, skipped: frozenset[str]) -> list[str]:
    kinds = set(RULES) | TRANSPARENT | ACTIVATION_FUSIONS
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in kinds and node.domain in ("", "ai.onnx") and node.name not in skipped:
            wanted.update(t for t in (*node.input, *node.output) if idx.is_float_activation(t))
    return in_graph_order(model, wanted)


def origin_node(tensor: str, idx: GraphIndex) -> onnx.NodeProto | None:
    """The node that computes ``tensor``, looking through shape ops and Relu/Clip (None:
    a graph input)."""
    node = idx.producer.get(tensor)
    seen = 0
    while node is not None and (node.op_type in TRANSPARENT or node.op_type in ACTIVATION_FUSIONS):
        node = idx.producer.get(node.input[0])
        seen += 1
        if seen > 64:
            break
    return node


def never_quantized(model: onnx.ModelProto, idx: GraphIndex | None = None) -> set[str]:
    """Names of the element-wise nodes (:data:`NEEDS_QUANTIZED_INPUT`) that no setting
    quantizes, read off the graph: the planner quantizes one only when every activation
    input comes from a quantized node, a graph input or a :data:`LOOKUP` op of a quantized
    node, and one from quantized compute (:func:`onnxq.graph.plan._check_neighbour`); a
    node with an input made by a node that is never quantized (Erf, Div, Sqrt, ... or an
    element-wise node of this set) fails that whatever the setting. A decomposed GELU or
    LayerNorm: the encoder of bench/calibration.py loses 16 of its 133 tensors, a quarter
    of its bytes."""
    idx = idx or GraphIndex(model)
    never: set[str] = set()

    def may_be_integer(node: onnx.NodeProto) -> bool:
        if node.op_type in LOOKUP and node.input:  # an integer lookup of its input
            source = origin_node(node.input[0], idx)
            return source is not None and may_be_integer(source)
        if node.domain not in ("", "ai.onnx") or node.name in never:
            return False
        return node.op_type in RULES or node.op_type == "Gather"  # Gather: an embedding

    for node in model.graph.node:  # in graph order: every origin is judged before
        if node.op_type not in NEEDS_QUANTIZED_INPUT or node.domain not in ("", "ai.onnx"):
            continue
        roles = RULES[node.op_type].roles(node, idx)
        if isinstance(roles, str):  # the rule refuses it, whatever the setting
            never.add(node.name)
            continue
        origins = [
            origin_node(node.input[r.index], idx) for r in roles if r.role is Role.ACTIVATION
        ]
        made = [o for o in origins if o is not None]
        if not all(may_be_integer(o) for o in made) or not any(o.op_type in COMPUTE for o in made):
            never.add(node.name)
    return never


def value_aliases(model: onnx.ModelProto, tensors: Iterable[str]) -> dict[str, str]:
    """Each of ``tensors`` made by a chain of :data:`REARRANGING` ops from another of
    ``tensors``, mapped to the first tensor of its chain: its per-tensor statistics are
    that tensor's (the attention heads' Reshape and Transpose of a transformer: a quarter
    of its tensors), so they need not be fetched and reduced again."""
    wanted = set(tensors)
    idx = GraphIndex(model)
    out: dict[str, str] = {}
    for name in in_graph_order(model, wanted):  # a chain's start comes first
        node = idx.producer.get(name)
        if node is None or node.op_type not in REARRANGING or node.domain not in ("", "ai.onnx"):
            continue
        source = node.input[0] if node.input else ""
        if source in wanted:
            out[name] = out.get(source, source)
    return out


def rectified_sources(model: onnx.ModelProto, tensors: Iterable[str]) -> dict[str, str]:
    """Each of ``tensors`` that a Relu makes of another of ``tensors``, mapped to that
    input: ``max(x, 0)`` element by element, so its values follow from the input's without
    a fetch (:mod:`onnxq.calibration.derived`). The Conv -> Relu pairs of a CNN: half the
    tensors it calibrates."""
    wanted = set(tensors)
    idx = GraphIndex(model)
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Relu" or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        source, made = node.input[0], node.output[0]
        if source in wanted and made in wanted and idx.is_float_activation(source):
            out[made] = source
    return out


def scaled_sources(model: onnx.ModelProto, tensors: Iterable[str]) -> dict[str, tuple[str, float]]:
    """Each of ``tensors`` that a Mul or Div by a positive power-of-two scalar constant
    makes of another of ``tensors``, mapped to that input and the factor: scaling a float
    by a power of two rounds as the float maths does, so the values follow from the
    input's without a fetch (:mod:`onnxq.calibration.derived`). Attention scores scaled
    by 1/sqrt(64) = 1/8."""
    wanted = set(tensors)
    idx = GraphIndex(model)
    out: dict[str, tuple[str, float]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Mul", "Div") or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) != 2 or node.output[0] not in wanted:
            continue
        order = [(0, 1), (1, 0)] if node.op_type == "Mul" else [(0, 1)]
        for data, const in order:
            source, value = node.input[data], _scalar(node.input[const], idx)
            if source not in wanted or value is None or not idx.is_float_activation(source):
                continue
            if not math.isfinite(value) or value == 0.0:
                continue
            rank = idx.ranks.get(source)
            if rank is None or rank != idx.ranks.get(node.output[0]):
                continue  # a constant of higher rank broadcasts the axes apart
            factor = 1.0 / value if node.op_type == "Div" else value
            mantissa, _ = math.frexp(factor)
            if factor > 0.0 and mantissa == 0.5 and 2.0**-60 <= factor <= 2.0**60:
                out[node.output[0]] = (source, factor)
                break
    return out


def _scalar(name: str, idx: GraphIndex) -> float | None:
    """The value of a float32 scalar constant (one element), else None."""
    if not idx.is_float_constant(name):
        return None
    value = numpy_helper.to_array(idx.initializers[name])
    return float(value.reshape(-1)[0]) if value.size == 1 else None
