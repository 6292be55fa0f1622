"""Small float models built in code for graph tests (random but fixed weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inputs, outputs, inits, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn(seed: int = 0, opset: int = OPSET) -> onnx.ModelProto:
    """Conv-Relu, two branches added and concatenated, MaxPool, AveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("w1", rng.normal(0, 0.5, (8, 1, 3, 3)).astype(f32)),
        _init("b1", rng.normal(0, 0.1, 8).astype(f32)),
        _init("w2", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(f32)),
        _init("b2", rng.normal(0, 0.1, 8).astype(f32)),
        _init("w3", rng.normal(0, 0.2, (8, 8, 1, 1)).astype(f32)),
        _init("wfc", rng.normal(0, 0.2, (10, 64)).astype(f32)),
        _init("bfc", rng.normal(0, 0.1, 10).astype(f32)),
        _init("shape", np.array([-1, 64], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r1", "w3"], ["c3"], name="conv3"),
        helper.make_node("Add", ["r2", "c3"], ["sum"], name="add"),
        helper.make_node("MaxPool", ["sum"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["p1", "p1"], ["cat"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["p2"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
        opset,
    )
