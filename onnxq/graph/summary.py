"""What is in a model: opset, inputs and outputs, op histogram, parameters, and the
weights it stores as codebooks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxq.graph.model_io import opset_version
from onnxq.graph.passes.codebook import find_codebooks

__all__ = ["CodebookInfo", "ModelSummary", "TensorInfo", "summarize"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class CodebookInfo:
    """A weight stored as codebook indices (:mod:`onnxq.graph.passes.codebook`)."""

    name: str  # the decoded tensor
    shape: tuple[int, ...]
    bits: int
    axis: int | None  # per channel along this axis, or None (one table)
    stored_bytes: int  # packed indices and float32 levels


@dataclass(frozen=True)
class ModelSummary:
    opset: int
    producer: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_histogram: dict[str, int]
    nodes: int
    parameters: int  # codebook weights count their decoded values
    parameter_bytes: int
    codebook_weights: tuple[CodebookInfo, ...] = ()


def _info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))) if tt.elem_type else "?"
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return TensorInfo(vi.name, dtype, tuple(dims))


def _constant_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Tensors held by Constant nodes, here and in subgraphs (weights of many exporters)."""
    out = []
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                out.append(attr.t)
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                out.extend(sub.initializer)
                out.extend(_constant_tensors(sub))
    return out


def summarize(model: onnx.ModelProto) -> ModelSummary:
    """Opset, inputs and outputs, op histogram, parameters (initializers and Constant
    node values, subgraphs included; a codebook weight counts its decoded values, not its
    words and levels) and the codebook weights of the main graph."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    tensors = [*g.initializer, *_constant_tensors(g)]
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors)
    books = find_codebooks(model)
    for book in books:
        # its words (uint32) and levels (float32) out, its values in
        params += int(np.prod(book.shape, dtype=np.int64)) - book.stored_bytes // 4
    nbytes = 0
    for t in tensors:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        nbytes += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return ModelSummary(
        opset=opset_version(model),
        producer=producer,
        inputs=tuple(_info(v) for v in g.input if v.name not in inits),
        outputs=tuple(_info(v) for v in g.output),
        op_histogram=dict(Counter(n.op_type for n in g.node).most_common()),
        nodes=len(g.node),
        parameters=params,
        parameter_bytes=nbytes,
        codebook_weights=tuple(
            CodebookInfo(b.output, b.shape, b.codebook.bits, b.codebook.axis, b.stored_bytes)
            for b in books
        ),
    )
