"""Graph tests: the rewrite on small models built in code, run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import (
    ActivationSpec,
    Granularity,
    OptimizeFor,
    QuantConfig,
    RangeMode,
    Scheme,
    WeightSpec,
)
from onnxq.graph.plan import NodeAction
from onnxq.runtime import optimized_op_types

import models
from helpers import NO_CHECK, op_types, output_step, quantize_in_memory, run

# Which onnxruntime integer kernel each op type must become under default settings.
FUSED = {
    "conv": "QLinearConv",
    "gemm": "QGemm",
    "gemm_transb": "QGemm",
    "matmul": "MatMulIntegerToFloat",
    "matmul_act": "MatMulIntegerToFloat",
    "add": "QLinearAdd",
    "mul": "QLinearMul",
    "concat": "QLinearConcat",
    "avgpool": "QLinearAveragePool",
    "globalavgpool": "QLinearGlobalAveragePool",
    "maxpool": "NhwcMaxPool",  # onnxruntime's uint8 NHWC max pool
    "resize": "Resize",
    "conv_transpose": "QLinearConv",  # the stem; ConvTranspose itself runs in float
}


@pytest.mark.parametrize("kind", models.SINGLE_OP_KINDS)
def test_single_op_models_quantize_close_to_float_and_fuse(kind, tmp_path):
    model, feed = models.single_op(kind)
    result, plan = quantize_in_memory(model, feed, tmp_path=tmp_path)
    onnx.checker.check_model(result.model, full_check=True)
    assert any(d.name == "op" and d.action is not NodeAction.FLOAT for d in plan.decisions)

    (reference,) = run(model, feed)
    (fused,) = run(result.model, feed)
    (literal,) = run(result.model, feed, optimize=False)  # Q/DQ executed as written
    step = output_step(result.model, "y", reference)
    # Integer kernels compute what the Q/DQ graph says, to a rounding step or two.
    assert np.abs(fused - literal).max() <= 2 * step + 1e-6
    # And the quantized model stays within a few output steps of float.
    assert np.abs(fused - reference).max() <= 8 * step
    kernels = {op.rsplit(":", 1)[-1] for op in optimized_op_types(result.model)}
    assert FUSED[kind] in kernels, kernels


def test_integer_kernels_replace_every_float_compute_op(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, _ = quantize_in_memory(model, feed, tmp_path=tmp_path)
    ops = optimized_op_types(result.model)
    names = {op.rsplit(":", 1)[-1] for op in ops}
    assert {"QLinearConv", "QLinearAdd", "QLinearConcat", "QLinearAveragePool", "QGemm"} <= names
    assert not {"Conv", "Gemm", "Add", "Concat", "AveragePool", "DequantizeLinear"} & names
    assert ops["QuantizeLinear"] == 1  # only the model input is quantized at run time


def test_shape_ops_run_on_integers_without_their_own_qdq(tmp_path):
    model, feed = models.single_op("gemm")
    result, plan = quantize_in_memory(model, feed, tmp_path=tmp_path)
    reshape = next(n for n in result.model.graph.node if n.op_type == "Reshape")
    producers = {o: n for n in result.model.graph.node for o in n.output}
    assert producers[reshape.input[0]].op_type == "QuantizeLinear"
    consumer = next(n for n in result.model.graph.node if reshape.output[0] in n.input)
    assert consumer.op_type == "DequantizeLinear"
    assert plan.root_of("flat") == "h"  # Reshape's output shares the Conv output's range
    assert op_types(result.model).count("QuantizeLinear") == 2  # input x and h, nothing more


def test_relu_is_fused_into_the_quantized_conv_output(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, plan = quantize_in_memory(model, feed, tmp_path=tmp_path)
    assert "Relu" not in op_types(result.model)
    assert {d.name for d in plan.decisions if d.action == "fused"} == {"relu1", "relu2"}
    # with symmetric activations the zero point is not the lowest code: Relu must stay
    sym, plan = quantize_in_memory(
        model, feed, QuantConfig(activations=ActivationSpec(scheme=Scheme.SYM)), tmp_path=tmp_path
    )
    assert op_types(sym.model).count("Relu") == 2
    (a,), (b,) = run(model, feed), run(sym.model, feed)
    assert np.abs(a - b).max() <= 8 * output_step(sym.model, "logits", a)


def test_weights_are_stored_as_integers_with_per_channel_axes(tmp_path):
    model, feed = models.single_op("gemm")
    result, _ = quantize_in_memory(model, feed, tmp_path=tmp_path)
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert not any(v.dtype == np.float32 and v.size >= 64 for v in inits.values())
    dq = {n.input[0]: n for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
    w = next(k for k in dq if k.startswith("wf"))
    b = next(k for k in dq if k.startswith("bf"))
    assert inits[w].dtype == np.int8 and inits[b].dtype == np.int32
    axis = next(a.i for a in dq[w].attribute if a.name == "axis")
    assert axis == 1  # Gemm without transB: one range per column of B
    scale_w = inits[dq[w].input[1]]
    scale_b = inits[dq[b].input[1]]
    x_scale = inits[
        next(
            n
            for n in result.model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0].startswith("h")
        ).input[1]
    ]
    np.testing.assert_allclose(scale_b, scale_w * x_scale, rtol=1e-6)


@pytest.mark.parametrize(
    "kind,axis", [("conv", 0), ("conv_transpose", 1), ("gemm_transb", 0), ("matmul", 1)]
)
def test_per_channel_axis_follows_the_op(kind, axis, tmp_path):
    model, feed = models.single_op(kind)
    result, plan = quantize_in_memory(model, feed, tmp_path=tmp_path)
    op_inputs = set(next(n for n in result.model.graph.node if n.name == "op").input)
    dq = next(
        n
        for n in result.model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.output[0] in op_inputs
        and n.input[0].startswith("w")
    )
    assert next(a.i for a in dq.attribute if a.name == "axis") == axis


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(weights=WeightSpec(granularity=Granularity.TENSOR)),
        QuantConfig(range_mode=RangeMode.RESTRICTED),
        QuantConfig(weights=WeightSpec(scheme=Scheme.ASYM)),
        QuantConfig(
            weights=WeightSpec(scheme=Scheme.SYM), activations=ActivationSpec(scheme=Scheme.SYM)
        ),
    ],
    ids=["per-tensor", "restricted", "asym-weights", "all-sym"],
)
def test_every_setting_runs_close_to_float(config, tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)}
    result, _ = quantize_in_memory(model, feed, config, tmp_path=tmp_path)
    onnx.checker.check_model(result.model)
    (a,), (b,) = run(model, feed), run(result.model, feed)
    assert np.abs(a - b).max() <= 8 * output_step(result.model, "logits", a)
    if config.range_mode is RangeMode.RESTRICTED:
        for t in result.model.graph.initializer:
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.int8:
                assert arr.min() >= -127


def test_excluded_nodes_stay_float(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, plan = quantize_in_memory(
        model, feed, QuantConfig(exclude=("conv2", "Gemm")), tmp_path=tmp_path
    )
    decisions = {d.name: d for d in plan.decisions}
    assert decisions["conv2"].action == "float" and "conv2" in decisions["conv2"].reason
    assert decisions["fc"].action == "float" and "Gemm" in decisions["fc"].reason
    float_inits = {t.name for t in result.model.graph.initializer if t.data_type == 1 and t.dims}
    assert {"w2", "wfc"} <= float_inits


def test_shared_weight_is_quantized_once(tmp_path):
    model = models.cnn()
    # conv3 reads conv2's weight slice? make two Convs share one initializer
    for node in model.graph.node:
        if node.name == "conv3":
            node.input[1] = "w2"
            node.attribute.extend([onnx.helper.make_attribute("pads", [1, 1, 1, 1])])
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, _ = quantize_in_memory(model, feed, tmp_path=tmp_path)
    quantized = [
        t.name for t in result.model.graph.initializer if t.name.startswith("w2_quantized")
    ]
    assert len(quantized) == 1
    (a,), (b,) = run(model, feed), run(result.model, feed)
    assert np.abs(a - b).max() <= 8 * output_step(result.model, "logits", a)


def test_old_opset_is_upgraded_for_per_channel(tmp_path):
    model = models.cnn(opset=11)
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, _ = quantize_in_memory(model, feed, tmp_path=tmp_path)
    assert next(o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    (a,), (b,) = run(model, feed), run(result.model, feed)
    assert np.abs(a - b).max() <= 8 * output_step(result.model, "logits", a)


def test_constant_node_weights_are_quantized_as_weights(tmp_path):
    model = models.cnn()
    w = next(t for t in model.graph.initializer if t.name == "w2")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["w2"], value=w))
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    result, plan = quantize_in_memory(model, feed, tmp_path=tmp_path)
    assert any(u.tensor == "w2" for u in plan.weights)
    assert any(
        t.name.startswith("w2_quantized") and t.data_type == onnx.TensorProto.INT8
        for t in result.model.graph.initializer
    )


@pytest.mark.parametrize("mode", ["static", "dynamic", "weights-only"])
def test_embedding_tables_are_stored_as_int8_rows(mode, tmp_path):
    from onnxq import quantize
    from onnxq.config import Mode

    model, feed = models.embedding_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    config = {
        "static": QuantConfig(),
        "dynamic": QuantConfig(mode=Mode.DYNAMIC),
        "weights-only": QuantConfig(weights_only=True),
    }[mode]
    report = quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", config, data=tmp_path / "d.npz")
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q)
    embed = next(d for d in report.decisions if d.name == "embed")
    assert embed.action == "quantize" and "embedding" in embed.reason
    table = next(t for t in q.graph.initializer if t.name.startswith("table_quantized"))
    assert table.data_type == onnx.TensorProto.INT8 and list(table.dims) == [5000, 32]
    assert not any(t.name == "table" for t in q.graph.initializer)
    assert "DequantizeLinear" not in [n.op_type for n in q.graph.node if "table" in n.input[0]]
    assert report.quantized_bytes < 0.3 * report.float_bytes
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 0.03 * np.abs(a).max()


@pytest.mark.parametrize("additive_input", [False, True])
def test_tensors_with_extreme_ranges_stay_float(tmp_path, additive_input):
    """An additive attention mask (-3.4e38) would give its tensor a scale of ~1e36 and
    collapse every score: onnxq keeps that tensor, and the nodes around it, in float. A
    mask computed in the graph is float maths the Add would have to round again; one
    given as an input is kept float for its range."""
    from onnxq import quantize

    model, feed = models.masked_attention(additive_input=additive_input)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    report = quantize(
        tmp_path / "m.onnx",
        tmp_path / "q.onnx",
        QuantConfig(target=NO_CHECK, optimize_for=OptimizeFor.SIZE),
        data=tmp_path / "d.npz",
    )
    decisions = {d.name: d for d in report.decisions}
    assert decisions["mask_add"].action == "float"
    why = "too wide" if additive_input else "an input from float maths"
    assert why in decisions["mask_add"].reason
    assert decisions["q_proj"].action == "quantize" and decisions["pv"].action == "quantize"
    assert report.fidelity is not None and report.fidelity.outputs[0].cosine_mean > 0.995


def test_tensors_read_inside_subgraphs_keep_their_values(tmp_path):
    """A tensor read by an If branch from the outer scope is a real reader: the Relu in
    front of it is not fused away and the tensor is still produced."""
    from onnxq import quantize

    model, feed = models.with_if_branch()
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = np.stack([feed["x"]] * 4)  # one complete feed per index (cond is a scalar)
    np.savez(tmp_path / "d.npz", x=feeds, cond=np.array([True, False, True, False]))
    quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", data=tmp_path / "d.npz")
    q = onnx.load(str(tmp_path / "q.onnx"))
    for cond in (True, False):
        full = {"x": feed["x"], "cond": np.array(cond)}
        (a,), (b,) = run(model, full), run(q, full)
        assert np.abs(a - b).max() <= 8 * output_step(q, "r", a) + 0.05 * np.abs(a).max()


def test_shape_inference_on_stand_ins_matches_onnx_on_the_whole_model():
    """The pass infers on a graph whose large float weights are typed inputs (no data);
    the types and shapes it writes are onnx's own on the whole model, through a Reshape
    whose shape is an integer initializer (kept: its values decide a shape) and an If
    whose branch reads a large outer weight, and the model it was given is untouched."""
    import onnx.shape_inference

    from onnxq.graph.passes.shapes import STAND_IN_ELEMENTS, _stand_in, infer_shapes

    rng = np.random.default_rng(0)
    big = rng.normal(size=(64, 64)).astype(np.float32)
    assert big.size > STAND_IN_ELEMENTS
    then = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            onnx.numpy_helper.from_array(big, "w"),
            onnx.numpy_helper.from_array(np.array([4, 32], np.int64), "shape"),
            onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    light = _stand_in(model)
    assert [i.name for i in light.graph.initializer] == ["shape", "zero"]
    assert "w" in {i.name for i in light.graph.input}
    result = infer_shapes(model)
    assert result.changed and model.SerializeToString() == before
    whole = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    assert result.model.graph.value_info == whole.graph.value_info
    assert result.model.graph.node == whole.graph.node  # the branch's inferred types too
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in result.model.graph.value_info
    }
    assert shapes["h"] == [2, 64] and shapes["r"] == [4, 32]
    assert [i.name for i in result.model.graph.initializer] == ["w", "shape", "zero"]
