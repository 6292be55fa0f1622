"""Weight-only quantization of embedding tables read by Gather.

A dequantized copy of a whole table each run would cost more than the model (a
DequantizeLinear in front of Gather is not fused by onnxruntime), so the integer table
is gathered first and only the gathered rows are scaled::

    Gather(table_q, ids) -> Cast(float) -> Mul(Unsqueeze(Gather(row_scale, ids), -1))

Rows get one symmetric range each (int8, zero point 0). The nodes are standard ONNX.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.graph.edit import drop_unused_initializers, topological
from onnxq.graph.external import row_reader, stored_tensor, tensor_values, uses_external_data
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.plan import NodeDecision
from onnxq.graph.rules import GraphIndex
from onnxq.quant import QParams, QType, quantize
from onnxq.quant.methods import CalibrationMethod, Granularity
from onnxq.quant.weights import WeightLayout, in_slabs, slicer, weight_qparams

__all__ = ["LOOKUP_DECODE", "lookups_of", "quantize_embeddings"]


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
            table = idx.initializers[data]
            read = row_reader(table) or slicer(tensor_values(table), 0)  # rows, slab by slab
            codes, qp = in_slabs(
                tuple(table.dims), WeightLayout(Granularity.CHANNEL, 0), read, _int8_rows
            )
            q_name, s_name = names.new(f"{data}_quantized"), names.new(f"{data}_row_scale")
            spill = uses_external_data(out)  # new tables beside the model's own data
            out.graph.initializer.extend(
                [
                    stored_tensor(codes, q_name, spill=spill),
                    stored_tensor(qp.scale.astype(np.float32), s_name, spill=spill),
                ]
            )
            del codes
            tables[data] = (q_name, s_name)
        q_name, s_name = tables[data]
        ids, y = node.input[1], node.output[0]
        axes = names.new(f"{y}_axes")
        out.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        nodes += _decode(q_name, s_name, ids, y, axes, node.name, names.new)
    if not tables:
        return PassResult.unchanged(model)
    del out.graph.node[:]
    out.graph.node.extend(topological(nodes, out.graph))
    drop_unused_initializers(out)
    changes = tuple(Change(ChangeKind.EMBEDDING_QUANTIZED, t, "int8 rows") for t in tables)
    return PassResult(out, True, changes)


def _decode(
    table: str, scales: str, ids: str, y: str, axes: str, base: str, new: Callable[[str], str]
) -> list[onnx.NodeProto]:
    """The nodes that make lookup ``y`` from the int8 ``table`` and its row ``scales``
    (``axes``: the constant [-1]; ``new`` makes unique names from a stem)."""
    rows, rows_f, scale, scale1 = (
        new(f"{y}_{k}") for k in ("rows_int8", "rows", "scale", "row_scale")
    )
    return [
        helper.make_node("Gather", [table, ids], [rows], name=new(f"{base}_rows"), axis=0),
        helper.make_node(
            "Cast", [rows], [rows_f], name=new(f"{base}_Cast"), to=onnx.TensorProto.FLOAT
        ),
        helper.make_node("Gather", [scales, ids], [scale], name=new(f"{base}_scales"), axis=0),
        helper.make_node("Unsqueeze", [scale, axes], [scale1], name=new(f"{base}_Unsqueeze")),
        helper.make_node("Mul", [rows_f, scale1], [y], name=new(f"{base}_Scale")),
    ]


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, QParams]:
    """Symmetric int8 codes of an embedding table, one scale per row."""
    layout = WeightLayout(Granularity.CHANNEL, 0)
    w = w.astype(np.float32, copy=False)
    qp = weight_qparams(w, layout, CalibrationMethod.MINMAX, QType.INT8, symmetric=True)
    return quantize(w, qp), qp


def lookups_of(model: onnx.ModelProto, tables: Iterable[str]) -> list[str]:
    """The outputs of ``model``'s Gathers that read one of ``tables`` (a candidate's
    EMBEDDING_QUANTIZED changes name them): the lookups whose rows it decodes."""
    wanted = set(tables)
    return [
        n.output[0]
        for n in model.graph.node
        if n.op_type == "Gather" and n.domain in ("", "ai.onnx") and n.input[0] in wanted
    ]


# the op types one quantized lookup adds to the graph, counted: the decode's nodes less the
# Gather they replace (a Cast and a Mul run over the gathered rows, as large as the output)
LOOKUP_DECODE: Mapping[str, int] = MappingProxyType(
    dict(
        Counter(n.op_type for n in _decode("t", "s", "i", "y", "a", "g", lambda stem: stem))
        - Counter({"Gather": 1})
    )
)
