"""Constant Div/Mul of quantized activations folded into scales (issue #15): hard-swish
written out as x·clip(x+3, 0, 6)/6 keeps no float Div between a DQ and a Q."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq import FidelityTarget, OptimizeFor, QuantConfig, quantize
from onnxq.graph.passes.fold_rescale import fold_rescales
from onnxq.graph.passes.result import ChangeKind
from onnxq.runtime import optimized_op_types

import models
from helpers import run


def hardswish_cnn(divisor: float = 6.0) -> onnx.ModelProto:
    """Conv → x·clip(x+3, 0, 6)/divisor → Conv → the same → Conv (PP-OCR's hard-swish)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        models._init("three", np.array(3.0, f32)),
        models._init("zero", np.array(0.0, f32)),
        models._init("six", np.array(6.0, f32)),
        models._init("div", np.array(divisor, f32)),
    ]
    nodes, x, ch = [], "input", 3
    for i in range(3):
        inits.append(models._init(f"w{i}", rng.normal(0, 0.4, (8, ch, 3, 3)).astype(f32)))
        inits.append(models._init(f"b{i}", rng.normal(0, 0.1, 8).astype(f32)))
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4
            )
        )
        x, ch = f"c{i}", 8
        if i == 2:
            break
        nodes += [
            helper.make_node("Add", [x, "three"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Clip", [f"a{i}", "zero", "six"], [f"r{i}"], name=f"clip{i}"),
            helper.make_node("Mul", [x, f"r{i}"], [f"m{i}"], name=f"mul{i}"),
            helper.make_node("Div", [f"m{i}", "div"], [f"h{i}"], name=f"hswish{i}"),
        ]
        x = f"h{i}"
    return models._model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 8, 16, 16])],
        inits,
    )


CONFIG = QuantConfig(target=FidelityTarget(sqnr_db=0), optimize_for=OptimizeFor.SIZE)


def _quantized(model: onnx.ModelProto, data: np.ndarray, tmp_path) -> onnx.ModelProto:
    onnx.save(model, str(tmp_path / "f.onnx"))
    np.savez(tmp_path / "d.npz", input=data)
    quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", CONFIG, data=tmp_path / "d.npz")
    return onnx.load(str(tmp_path / "q.onnx"))


def test_hardswish_div_is_folded_into_the_dequantize_scale(tmp_path):
    data = np.random.default_rng(1).normal(size=(16, 3, 16, 16)).astype(np.float32)
    model = hardswish_cnn()
    q = _quantized(model, data, tmp_path)
    ops = [n.op_type for n in q.graph.node]
    assert "Div" not in ops  # both hard-swish divisions folded
    onnx.checker.check_model(q)
    runtime = optimized_op_types(q)
    assert "Div" not in runtime and runtime["com.microsoft:QLinearConv"] == 3
    feed = {"input": data[:4]}
    ref, got = run(model, feed)[0], run(q, feed)[0]
    step = float(np.abs(ref).max()) / 255  # one uint8 step of the output's range
    assert np.abs(got - ref).max() <= 12 * step
    assert np.sqrt(np.mean((got - ref) ** 2)) <= 2 * step


def test_a_negative_divisor_is_not_folded(tmp_path):
    data = np.random.default_rng(3).normal(size=(8, 3, 16, 16)).astype(np.float32)
    q = _quantized(hardswish_cnn(-6.0), data, tmp_path)
    assert "Div" in [n.op_type for n in q.graph.node]  # a scale must stay positive
    again = fold_rescales(q)
    assert not again.changed and again.model is q


def test_pass_on_a_hand_written_qdq_chain_is_exact():
    """DQ → Div(4) → Q → DQ becomes DQ with scale / 4, reading the first codes."""
    s, z = np.float32(0.05), np.uint8(10)
    inits = [
        models._init("s", np.array(s)),
        models._init("z", np.array(z)),
        models._init("s2", np.array(np.float32(0.0125))),
        models._init("z2", np.array(np.uint8(3))),
        models._init("four", np.array(np.float32(4.0))),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q0"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq0"),
        helper.make_node("Div", ["xd", "four"], ["y"], name="div"),
        helper.make_node("QuantizeLinear", ["y", "s2", "z2"], ["yq"], name="q1"),
        helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["yd"], name="dq1"),
        helper.make_node("Relu", ["yd"], ["out"], name="relu"),
    ]
    model = models._model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [64])],
        inits,
    )
    result = fold_rescales(model)
    assert result.changed and result.names(ChangeKind.RESCALE_FOLDED) == ("div",)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    onnx.checker.check_model(result.model)
    x = np.linspace(-0.4, 12.0, 64, dtype=np.float32)
    codes = np.clip(np.round(x / s) + z, 0, 255)
    expected = np.maximum((codes - z) * s / 4, 0)  # exact: no second rounding
    got = run(result.model, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
