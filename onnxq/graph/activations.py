"""Which activation tensors calibration may need a range for, and along which axis their
per-channel statistics run: read off the graph alone, before any plan is made (so
calibration depends on the graph rules, never on the planner)."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxq.graph.rules import ACTIVATION_FUSIONS, CONV_LIKE, RULES, TRANSPARENT, GraphIndex

__all__ = [
    "REARRANGING",
    "candidate_tensors",
    "channel_axis",
    "in_graph_order",
    "rectified_sources",
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
    """Every float activation that some quantization setting may need a range for:
    inputs and outputs of nodes with a rule, passthrough or fusable activation."""
    idx = GraphIndex(model)
    kinds = set(RULES) | TRANSPARENT | ACTIVATION_FUSIONS
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in kinds and node.domain in ("", "ai.onnx"):
            wanted.update(t for t in (*node.input, *node.output) if idx.is_float_activation(t))
    return in_graph_order(model, wanted)


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
    input: ``max(x, 0)`` element by element, so its minimum and maximum (per tensor or per
    channel of the same axis) are the input's clamped at zero and its histogram is the
    input's with the negative bins moved to the one holding zero
    (:func:`onnxq.calibration.estimate.finish_rectified`). The Conv -> Relu pairs of a
    CNN: half the tensors it calibrates."""
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
