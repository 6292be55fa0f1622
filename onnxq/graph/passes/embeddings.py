"""Weight-only quantization of embedding tables read by Gather.

A dequantized copy of a whole table each run would cost more than the model (a
DequantizeLinear in front of Gather is not fused by onnxruntime), so the integer table
is gathered first and only the gathered rows are scaled::

    Gather(table_q, ids) -> Cast(float) -> Mul(Unsqueeze(Gather(row_scale, ids), -1))

Rows get one symmetric range each (int8, zero point 0). The nodes are standard ONNX.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph.edit import drop_unused_initializers, topological
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.plan import NodeDecision
from onnxq.graph.rules import GraphIndex
from onnxq.quant import QType, quantize
from onnxq.quant.methods import CalibrationMethod, Granularity
from onnxq.quant.weights import WeightLayout, weight_qparams

__all__ = ["quantize_embeddings"]


def quantize_embeddings(model: onnx.ModelProto, decisions: tuple[NodeDecision, ...]) -> PassResult:
    """A copy of ``model`` with the Gathers the plan chose reading int8 tables; one
    EMBEDDING_QUANTIZED change per table (a quantized node and weight in the counts)."""
    chosen = {d.name for d in decisions if d.op_type == "Gather" and d.quantized}
    if not chosen:
        return PassResult.unchanged(model)  # no copy of a model that does not change
    out = onnx.ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    names = NameFactory(out)
    tables: dict[str, tuple[str, str]] = {}
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        data = node.input[0]
        if data not in tables:
            w = numpy_helper.to_array(idx.initializers[data]).astype(np.float32)
            layout = WeightLayout(Granularity.CHANNEL, 0)
            qp = weight_qparams(w, layout, CalibrationMethod.MINMAX, QType.INT8, symmetric=True)
            q_name, s_name = names.new(f"{data}_quantized"), names.new(f"{data}_row_scale")
            out.graph.initializer.extend(
                [
                    numpy_helper.from_array(quantize(w, qp), q_name),
                    numpy_helper.from_array(qp.scale.astype(np.float32), s_name),
                ]
            )
            tables[data] = (q_name, s_name)
        q_name, s_name = tables[data]
        ids, y = node.input[1], node.output[0]
        rows, rows_f, scale, scale1, axes = (
            names.new(f"{y}_{k}") for k in ("rows_int8", "rows", "scale", "row_scale", "axes")
        )
        out.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        base = node.name
        nodes += [
            helper.make_node(
                "Gather", [q_name, ids], [rows], name=names.new(f"{base}_rows"), axis=0
            ),
            helper.make_node(
                "Cast", [rows], [rows_f], name=names.new(f"{base}_Cast"), to=onnx.TensorProto.FLOAT
            ),
            helper.make_node(
                "Gather", [s_name, ids], [scale], name=names.new(f"{base}_scales"), axis=0
            ),
            helper.make_node(
                "Unsqueeze", [scale, axes], [scale1], name=names.new(f"{base}_Unsqueeze")
            ),
            helper.make_node("Mul", [rows_f, scale1], [y], name=names.new(f"{base}_Scale")),
        ]
    if not tables:
        return PassResult.unchanged(model)
    del out.graph.node[:]
    out.graph.node.extend(topological(nodes, out.graph))
    drop_unused_initializers(out)
    changes = tuple(Change(ChangeKind.EMBEDDING_QUANTIZED, t, "int8 rows") for t in tables)
    return PassResult(out, True, changes)
