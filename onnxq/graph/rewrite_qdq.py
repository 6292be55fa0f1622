"""The Q/DQ rewrite: turns a plan and activation qparams into a quantized model.

Activations get QuantizeLinear -> DequantizeLinear pairs right after the tensor is
made; weights are stored as integer initializers with a DequantizeLinear; biases of
Conv/Gemm as int32 with scale = input scale × weight scale. This is the layout that
onnxruntime's CPU provider fuses into integer kernels (QLinearConv, QGemm, …).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import ml_dtypes
import numpy as np
import onnx
from onnx import helper

from onnxq.config import QuantConfig, Scheme
from onnxq.graph.edit import drop_unused_initializers, replace_input, replace_output, topological
from onnxq.graph.external import row_reader, stored_tensor, tensor_values, uses_external_data
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.plan import QuantPlan, WeightUse
from onnxq.graph.rules import GraphIndex, Role
from onnxq.quant import QParams, QType, quantize
from onnxq.quant.bias import bias_codes
from onnxq.quant.methods import CalibrationMethod, Rounding
from onnxq.quant.rounding import stochastic_quantize
from onnxq.quant.weights import WeightLayout, in_slabs, slab_axis, slicer, weight_qparams

__all__ = ["is_codebook", "rewrite_qdq", "use_qparams"]


class _Builder:
    """Collects new nodes and initializers for one rewrite."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.names = NameFactory(model)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        # a model with external data: new tensors go to the spill file, not the proto
        self.spill = uses_external_data(model)

    def constant(self, base: str, value: np.ndarray, qtype: QType | None = None) -> str:
        """A new initializer; codes of 4-bit types are stored packed, as ONNX defines."""
        name = self.names.new(base)
        arr = np.asarray(value)
        if qtype is not None and qtype.bits == 4:
            arr = arr.astype(ml_dtypes.int4 if qtype.signed else ml_dtypes.uint4)
        self.inits.append(stored_tensor(arr, name, spill=self.spill))
        return name

    def qparams(self, base: str, qp: QParams, *, omit_zero: bool = False) -> list[str]:
        """Scale and zero-point initializers; with ``omit_zero`` an all-zero zero point
        (an optional input) is left out."""
        scale = self.constant(f"{base}_scale", qp.scale.astype(np.float32))
        if omit_zero and not np.any(qp.zero_point):
            return [scale]
        return [scale, self.constant(f"{base}_zp", qp.zero_point, qp.qtype)]

    def node(
        self,
        op: str,
        inputs: list[str],
        output: str,
        base: str,
        axis: int | None,
        block_size: int | None = None,
    ) -> None:
        node = helper.make_node(op, inputs, [output], name=self.names.new(base))
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        if block_size is not None:
            node.attribute.append(helper.make_attribute("block_size", block_size))
        self.nodes.append(node)


def rewrite_qdq(
    model: onnx.ModelProto,
    plan: QuantPlan,
    activation_qparams: Mapping[str, QParams],
    config: QuantConfig,
    weight_codes: Mapping[str, tuple[np.ndarray, QParams]] | None = None,
) -> PassResult:
    """The quantized copy of ``model``. ``activation_qparams`` holds one entry per
    ``plan.roots``; ``weight_codes`` gives precomputed codes and qparams of some weights
    (GPTQ), by node name; ``model`` is left untouched."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    b = _Builder(out)
    by_name = {n.name: n for n in out.graph.node}

    qname = _quantize_activations(out, idx, plan, activation_qparams, b, by_name)
    _rewire_passthrough(out, idx, plan, activation_qparams, qname, b, by_name)
    float_biases = _quantize_weights(
        plan, activation_qparams, config, b, by_name, idx, weight_codes or {}
    )

    removed = set(plan.fused)
    nodes = [n for n in out.graph.node if n.name not in removed] + b.nodes
    del out.graph.node[:]
    out.graph.node.extend(topological(nodes, out.graph))
    out.graph.initializer.extend(b.inits)
    drop_unused_initializers(out)
    floated = set(float_biases)
    changes = [Change(ChangeKind.NODE_QUANTIZED, d.name) for d in plan.quantized_nodes]
    stored = dict.fromkeys(  # ordered, distinct; codebook weights: their own pass's changes
        (w.tensor, w.role) for w in plan.weights if not is_codebook(w)
    )
    changes += [
        Change(ChangeKind.WEIGHT_QUANTIZED, t, role.value)
        for t, role in stored
        if not (role is Role.BIAS and t in floated)
    ]
    changes += [Change(ChangeKind.BIAS_KEPT_FLOAT, t, "int32 would overflow") for t in float_biases]
    changes += [
        Change(ChangeKind.QDQ_PAIR, n.input[0]) for n in b.nodes if n.op_type == "QuantizeLinear"
    ]
    changes += [Change(ChangeKind.ACTIVATION_CODES, q, t) for t, q in qname.items()]
    return PassResult(out, True, tuple(changes))


def _quantize_activations(
    model: onnx.ModelProto,
    idx: GraphIndex,
    plan: QuantPlan,
    qparams: Mapping[str, QParams],
    b: _Builder,
    by_name: dict[str, onnx.NodeProto],
) -> dict[str, str]:
    """One Q (and a DQ where a float reader remains) per root tensor. Returns the name
    of each tensor's integer version."""
    producer_of = {t: p for t, p in idx.producer.items()}
    for act, owner in plan.fused.items():  # the fused node now makes the activation's output
        producer_of[by_name[act].output[0]] = by_name[owner]
    qname: dict[str, str] = {}
    for root in plan.roots:
        params = b.qparams(root, qparams[root])
        q = b.names.new(f"{root}_quantized")
        qname[root] = q
        readers = [
            n
            for n in idx.consumers.get(root, [])
            if n.name not in plan.passthrough and n.name not in plan.float_readers
        ]
        producer = producer_of.get(root)
        if producer is None:  # a graph input: Q reads it, consumers read the DQ copy
            source, dq = root, b.names.new(f"{root}_dequantized")
            for node in readers:
                replace_input(node, root, dq)
        else:
            source, dq = b.names.new(f"{root}_float"), root
            owner = by_name[producer.name]
            replace_output(owner, _fused_source(owner, root, plan, by_name), source)
            for node in idx.consumers.get(root, []):
                if node.name in plan.float_readers:  # excluded: the float value, not a DQ
                    replace_input(node, root, source)
        b.node("QuantizeLinear", [source, *params], q, f"{root}_Q", None)
        if readers or root in idx.graph_outputs:
            b.node("DequantizeLinear", [q, *params], dq, f"{root}_DQ", None)
        for node in idx.consumers.get(root, []):
            if node.name in plan.passthrough:
                replace_input(node, root, q)
    return qname


def _fused_source(
    owner: onnx.NodeProto, root: str, plan: QuantPlan, by_name: dict[str, onnx.NodeProto]
) -> str:
    """The output of ``owner`` that becomes ``root``: itself, or the input of a removed
    activation node whose output ``root`` is."""
    for act, node_name in plan.fused.items():
        if node_name == owner.name and by_name[act].output[0] == root:
            return str(by_name[act].input[0])
    return root


def _rewire_passthrough(
    model: onnx.ModelProto,
    idx: GraphIndex,
    plan: QuantPlan,
    qparams: Mapping[str, QParams],
    qname: dict[str, str],
    b: _Builder,
    by_name: dict[str, onnx.NodeProto],
) -> None:
    shared: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name not in plan.passthrough:
            continue
        out = node.output[0]
        root = plan.root_of(out)
        q = b.names.new(f"{out}_quantized")
        qname[out] = q
        node.output[0] = q
        for consumer in idx.consumers.get(out, []):
            if consumer.name in plan.passthrough:
                replace_input(consumer, out, q)
        readers = [n for n in idx.consumers.get(out, []) if n.name not in plan.passthrough]
        if readers or out in idx.graph_outputs:
            if root not in shared:
                shared[root] = b.qparams(f"{root}_shared", qparams[root])
            b.node("DequantizeLinear", [q, *shared[root]], out, f"{out}_DQ", None)


def _quantize_weights(
    plan: QuantPlan,
    act_qparams: Mapping[str, QParams],
    config: QuantConfig,
    b: _Builder,
    by_name: dict[str, onnx.NodeProto],
    idx: GraphIndex,
    codes: Mapping[str, tuple[np.ndarray, QParams]],
) -> list[str]:
    done: dict[tuple[object, ...], tuple[str, QParams]] = {}
    float_biases: list[str] = []
    for use in plan.weights:
        if use.role is Role.BIAS or is_codebook(use):
            continue  # a codebook weight stays float here (see is_codebook)
        key: tuple[object, ...] = (use.tensor, use.role, use.layout, use.spec)
        if use.role is Role.WEIGHT and use.node in codes:
            key = (*key, use.node)  # rounded for this node's inputs
        if key not in done:
            done[key] = _store_weight(use, config, b, idx, codes.get(use.node))
        by_name[use.node].input[use.index] = done[key][0]
    for use in plan.weights:
        if use.role is not Role.BIAS:
            continue
        w_use = next(w for w in plan.weights if w.node == use.node and w.role is Role.WEIGHT)
        if is_codebook(w_use):
            continue  # no weight scale: the bias stays float (weights-only nodes have none)
        w_key = (w_use.tensor, Role.WEIGHT, w_use.layout, w_use.spec)
        w_qp = done[(*w_key, w_use.node) if w_use.node in codes else w_key][1]
        x_qp = act_qparams[use.activation or ""]
        name = _store_bias(use, x_qp, w_qp, b, idx)
        if name is None:
            float_biases.append(use.tensor)
        else:
            by_name[use.node].input[use.index] = name
    return float_biases


def is_codebook(use: WeightUse) -> bool:
    """A weight whose spec asks for codebook levels: the rewrite leaves the node reading
    its float initializer; :func:`onnxq.graph.passes.codebook.store_codebook_weights`
    stores it afterwards."""
    return use.spec is not None and use.spec.codebook


def _store_weight(
    use: WeightUse,
    config: QuantConfig,
    b: _Builder,
    idx: GraphIndex,
    precomputed: tuple[np.ndarray, QParams] | None = None,
) -> tuple[str, QParams]:
    """Integer initializer + DequantizeLinear for a weight (its spec, or codes computed
    elsewhere) or a constant input of an element-wise node (stored like the activations)."""
    if precomputed is not None:
        codes, qp = precomputed
        return _write_weight(use.tensor, codes, qp, b)
    init = idx.initializers[use.tensor]
    if use.spec is not None and config.rounding is Rounding.STOCHASTIC:
        w = tensor_values(init).astype(np.float32, copy=False)
        qp = use_qparams(use, w, config)
        # one stream per tensor: the codes of a weight do not depend on the others
        rng = np.random.default_rng([config.seed, zlib.crc32(use.tensor.encode())])
        return _write_weight(use.tensor, stochastic_quantize(w, qp, rng), qp, b)

    def nearest(part: np.ndarray) -> tuple[np.ndarray, QParams]:
        part = part.astype(np.float32, copy=False)
        part_qp = use_qparams(use, part, config)
        return quantize(part, part_qp), part_qp

    # a large weight in slabs, read from its file slab by slab when it has one: memory
    # follows the slab, not the weight
    layout = use.layout if use.spec is not None else WeightLayout()
    axis = slab_axis(layout, len(init.dims))
    read = row_reader(init) if axis == 0 else None
    if read is None:
        read = slicer(tensor_values(init), axis)
    codes, qp = in_slabs(tuple(init.dims), layout, read, nearest)
    return _write_weight(use.tensor, codes, qp, b)


def use_qparams(use: WeightUse, w: np.ndarray, config: QuantConfig) -> QParams:
    """The qparams the rewrite gives weight ``w`` of ``use``: its spec's, or (a constant
    input of an element-wise node, ``spec`` None) per tensor like the activations."""
    if use.spec is not None:
        spec = use.spec
        return weight_qparams(
            w,
            use.layout,
            spec.method,
            spec.qtype,
            symmetric=spec.scheme is Scheme.SYM,
            restricted=config.restricted,
            percentile=spec.percentile,
        )
    return weight_qparams(
        w,
        WeightLayout(),
        CalibrationMethod.MINMAX,
        config.activations.qtype,
        symmetric=config.activations.scheme is Scheme.SYM,
        restricted=config.restricted,
    )


def _write_weight(tensor: str, codes: np.ndarray, qp: QParams, b: _Builder) -> tuple[str, QParams]:
    q_name = b.constant(f"{tensor}_quantized", codes, qp.qtype)
    params = b.qparams(tensor, qp)
    dq = b.names.new(f"{tensor}_dq")
    b.node("DequantizeLinear", [q_name, *params], dq, f"{tensor}_DQ", qp.axis, qp.block_size)
    return dq, qp


def _store_bias(
    use: WeightUse, x_qp: QParams, w_qp: QParams, b: _Builder, idx: GraphIndex
) -> str | None:
    """int32 bias with scale = input scale × weight scale (zero point 0), or None when it
    stays float (:func:`onnxq.quant.bias.bias_codes`)."""
    bias = tensor_values(idx.initializers[use.tensor])
    stored = bias_codes(bias, x_qp.scale, w_qp.scale)
    if stored is None:
        return None
    codes, qp = stored
    q_name = b.constant(f"{use.tensor}_quantized", codes)
    params = b.qparams(use.tensor, qp, omit_zero=True)
    dq = b.names.new(f"{use.tensor}_dq")
    b.node("DequantizeLinear", [q_name, *params], dq, f"{use.tensor}_DQ", qp.axis)
    return dq
