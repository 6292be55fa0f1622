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
        helper.make_node(
            "MaxPool", ["sum"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Concat", ["p1", "p1"], ["cat"], name="concat", axis=1),
        helper.make_node(
            "AveragePool", ["cat"], ["p2"], name="avg", kernel_shape=[2, 2], strides=[2, 2]
        ),
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


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def single_op(kind: str, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model around one op type, with a matching random feed generator's first feed.

    Each graph starts with a Conv or MatMul so that the op under test sees a quantized
    activation, as in a real network.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    x = rng.normal(0, 1, (4, 3, 8, 8)).astype(f32)
    w0 = _init("w0", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32))
    b0 = _init("b0", rng.normal(0, 0.1, 8).astype(f32))
    stem = helper.make_node("Conv", ["x", "w0", "b0"], ["h"], name="stem", pads=[1, 1, 1, 1])
    inits = [w0, b0]
    nodes = [stem]
    out_shape: list = ["N", 8, 8, 8]
    if kind == "conv":
        inits.append(_init("w1", rng.normal(0, 0.2, (6, 8, 3, 3)).astype(f32)))
        nodes.append(helper.make_node("Conv", ["h", "w1"], ["y"], name="op", strides=[2, 2]))
        out_shape = ["N", 6, 3, 3]
    elif kind == "conv_transpose":
        inits.append(_init("w1", rng.normal(0, 0.2, (8, 5, 2, 2)).astype(f32)))
        inits.append(_init("b1", rng.normal(0, 0.1, 5).astype(f32)))
        nodes.append(
            helper.make_node("ConvTranspose", ["h", "w1", "b1"], ["y"], name="op", strides=[2, 2])
        )
        out_shape = ["N", 5, 16, 16]
    elif kind in ("gemm", "gemm_transb"):
        trans = kind == "gemm_transb"
        wshape = (7, 512) if trans else (512, 7)
        inits.append(_init("wf", rng.normal(0, 0.05, wshape).astype(f32)))
        inits.append(_init("bf", rng.normal(0, 0.1, 7).astype(f32)))
        inits.append(_init("shape", np.array([-1, 512], np.int64)))
        nodes.append(helper.make_node("Reshape", ["h", "shape"], ["flat"], name="flatten"))
        nodes.append(
            helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="op", transB=int(trans))
        )
        out_shape = ["N", 7]
    elif kind == "matmul":
        inits.append(_init("wm", rng.normal(0, 0.2, (8, 5)).astype(f32)))
        nodes.append(helper.make_node("Transpose", ["h"], ["t"], name="nhwc", perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("MatMul", ["t", "wm"], ["y"], name="op"))
        out_shape = ["N", 8, 8, 5]
    elif kind == "matmul_act":
        nodes.append(helper.make_node("Transpose", ["h"], ["t"], name="tr", perm=[0, 1, 3, 2]))
        nodes.append(helper.make_node("MatMul", ["h", "t"], ["y"], name="op"))
    elif kind in ("add", "mul"):
        inits.append(_init("w1", rng.normal(0, 0.2, (8, 8, 1, 1)).astype(f32)))
        nodes.append(helper.make_node("Conv", ["x", "w0"], ["h2"], name="side", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node(kind.capitalize(), ["h", "h2"], ["y"], name="op"))
    elif kind == "concat":
        nodes.append(helper.make_node("Conv", ["x", "w0"], ["h2"], name="side", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Concat", ["h", "h2"], ["y"], name="op", axis=1))
        out_shape = ["N", 16, 8, 8]
    elif kind == "avgpool":
        nodes.append(
            helper.make_node(
                "AveragePool", ["h"], ["y"], name="op", kernel_shape=[2, 2], strides=[2, 2]
            )
        )
        out_shape = ["N", 8, 4, 4]
    elif kind == "globalavgpool":
        nodes.append(helper.make_node("GlobalAveragePool", ["h"], ["y"], name="op"))
        out_shape = ["N", 8, 1, 1]
    elif kind in ("maxpool", "resize"):
        if kind == "maxpool":
            nodes.append(
                helper.make_node(
                    "MaxPool", ["h"], ["p"], name="op", kernel_shape=[2, 2], strides=[2, 2]
                )
            )
        else:
            inits.append(_init("scales", np.array([1, 1, 2, 2], f32)))
            nodes.append(
                helper.make_node("Resize", ["h", "", "scales"], ["p"], name="op", mode="nearest")
            )
        inits.append(_init("w1", rng.normal(0, 0.2, (4, 8, 1, 1)).astype(f32)))
        nodes.append(helper.make_node("Conv", ["p", "w1"], ["y"], name="after"))
        out_shape = ["N", 4, 4, 4] if kind == "maxpool" else ["N", 4, 16, 16]
    else:
        raise ValueError(kind)
    model = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", out_shape)], inits)
    return model, {"x": x}


SINGLE_OP_KINDS = (
    "conv",
    "conv_transpose",
    "gemm",
    "gemm_transb",
    "matmul",
    "matmul_act",
    "add",
    "mul",
    "concat",
    "avgpool",
    "globalavgpool",
    "maxpool",
    "resize",
)


def outlier_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> Conv on 8x16x16 inputs (for outlier-robust ranges)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("w1", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(f32)),
        _init("w2", rng.normal(0, 0.1, (16, 16, 3, 3)).astype(f32)),
        _init("w3", rng.normal(0, 0.1, (8, 16, 1, 1)).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    return _model(nodes, [_vi("x", ["N", 8, 16, 16])], [_vi("y", ["N", 8, 16, 16])], inits)


def embedding_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """int64 token ids -> Gather from a [5000, 32] table -> MatMul -> Add; integer inputs."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("table", rng.normal(0, 1, (5000, 32)).astype(f32)),
        _init("w", rng.normal(0, 0.2, (32, 8)).astype(f32)),
        _init("b", rng.normal(0, 0.1, 8).astype(f32)),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
        helper.make_node("MatMul", ["emb", "w"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="bias"),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 12])
    model = _model(nodes, [ids], [_vi("y", ["N", 12, 8])], inits)
    return model, {"ids": rng.integers(0, 5000, (32, 12)).astype(np.int64)}


def masked_attention(
    seed: int = 0, *, additive_input: bool = False
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Scores = x W; scores + (1 - mask) * -3.4e38 (an additive mask); Softmax; MatMul.
    ``additive_input``: the additive mask is the graph input itself (computed outside)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("wq", rng.normal(0, 0.3, (16, 16)).astype(f32)),
        _init("wv", rng.normal(0, 0.3, (16, 16)).astype(f32)),
    ]
    masking = [
        helper.make_node("Sub", ["one", "mask"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "big"], ["additive"], name="additive"),
    ]
    if not additive_input:
        inits += [_init("one", np.array(1.0, f32)), _init("big", np.array(-3.4e38, f32))]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "xt"], ["scores"], name="qk"),
        *([] if additive_input else masking),
        helper.make_node("Add", ["scores", "additive"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="pv"),
    ]
    mask_input = "additive" if additive_input else "mask"
    inputs = [_vi("x", ["N", 8, 16]), _vi(mask_input, ["N", 1, 8])]
    model = _model(nodes, inputs, [_vi("y", ["N", 8, 16])], inits)
    mask = np.ones((32, 1, 8), f32)
    mask[:, :, 6:] = 0.0  # the last two positions are padding
    if additive_input:
        mask = ((1.0 - mask) * np.float32(-3.4e38)).astype(f32)
    return model, {"x": rng.normal(0, 1, (32, 8, 16)).astype(f32), mask_input: mask}


def outlier_channel_mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x W1 has one output channel (99 of 384) sixty times larger than the others, as the
    outlying channels of transformer LayerNorm outputs; then x W1 W2."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w1 = rng.normal(0, 0.05, (384, 384)).astype(f32)
    w1[:, 99] *= 60.0
    inits = [_init("w1", w1), _init("w2", rng.normal(0, 0.05, (384, 32)).astype(f32))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="down"),
    ]
    model = _model(nodes, [_vi("x", ["N", 16, 384])], [_vi("y", ["N", 16, 32])], inits)
    return model, {"x": rng.normal(0, 1, (32, 16, 384)).astype(f32)}


def with_if_branch(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv -> Relu -> r, and an If whose branches read r from the outer scope."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [_init("w", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(f32))]
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["t_out"])],
        "then",
        [],
        [_vi("t_out", ["N", 4, 8, 8])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e_out"])],
        "else",
        [],
        [_vi("e_out", ["N", 4, 8, 8])],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g
        ),
    ]
    inputs = [_vi("x", ["N", 3, 8, 8]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    model = _model(nodes, inputs, [_vi("y", ["N", 4, 8, 8])], inits)
    feed = {"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(f32)}
    return model, feed


def tiny_encoder(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One transformer encoder block on [N, 8, 32]: LayerNorm, single-head attention
    (MatMul q/k/v, scaled scores, Softmax, MatMul), projection and residual Add, LayerNorm,
    an MLP (MatMul + bias, Relu, MatMul + bias) and a residual Add."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    d, h = 32, 64

    def w(name: str, *shape: int, std: float = 0.15) -> TensorProto:
        return _init(name, rng.normal(0, std, shape).astype(f32))

    inits = [
        _init("ln1_g", (1 + 0.1 * rng.normal(size=d)).astype(f32)),
        _init("ln1_b", (0.1 * rng.normal(size=d)).astype(f32)),
        _init("ln2_g", (1 + 0.1 * rng.normal(size=d)).astype(f32)),
        _init("ln2_b", (0.1 * rng.normal(size=d)).astype(f32)),
        w("wq", d, d),
        w("wk", d, d),
        w("wv", d, d),
        w("wo", d, d),
        w("w1", d, h),
        w("b1", h, std=0.1),
        w("w2", h, d),
        w("b2", d, std=0.1),
        _init("scale", np.array(1.0 / np.sqrt(d), f32)),
    ]
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["ln1"], name="ln1", axis=-1),
        n("MatMul", ["ln1", "wq"], ["q"], name="q_proj"),
        n("MatMul", ["ln1", "wk"], ["k"], name="k_proj"),
        n("MatMul", ["ln1", "wv"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["qk"], name="qk"),
        n("Mul", ["qk", "scale"], ["scores"], name="scale_scores"),
        n("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        n("MatMul", ["ctx", "wo"], ["attn"], name="o_proj"),
        n("Add", ["x", "attn"], ["res1"], name="res1"),
        n("LayerNormalization", ["res1", "ln2_g", "ln2_b"], ["ln2"], name="ln2", axis=-1),
        n("MatMul", ["ln2", "w1"], ["m1"], name="fc1"),
        n("Add", ["m1", "b1"], ["m1b"], name="fc1_bias"),
        n("Relu", ["m1b"], ["act"], name="act"),
        n("MatMul", ["act", "w2"], ["m2"], name="fc2"),
        n("Add", ["m2", "b2"], ["m2b"], name="fc2_bias"),
        n("Add", ["res1", "m2b"], ["y"], name="res2"),
    ]
    model = _model(nodes, [_vi("x", ["N", 8, d])], [_vi("y", ["N", 8, d])], inits)
    return model, {"x": rng.normal(0, 1, (48, 8, d)).astype(f32)}


def scale_model(factor: float) -> onnx.ModelProto:
    """y = x * factor on [N, 16] (as a candidate: noise proportional to each feed's
    signal)."""
    c = numpy_helper.from_array(np.array(factor, np.float32), "c")
    return helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "c"], ["y"])],
            "scale",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
            [c],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )


def gelu_mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul + bias, an Erf GELU written out (Div, Erf, Add 1, Mul by x, Mul 0.5), a
    SiLU of the bias output (Sigmoid, Mul) added to it, and a MatMul: element-wise maths
    the planner never quantizes, beside a bias Add it may."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        _init("w1", rng.normal(0, 0.3, (16, 32)).astype(f32)),
        _init("b1", rng.normal(0, 0.1, 32).astype(f32)),
        _init("w2", rng.normal(0, 0.3, (32, 16)).astype(f32)),
        _init("sqrt2", np.array(np.sqrt(2.0), f32)),
        _init("one", np.array(1.0, f32)),
        _init("half", np.array(0.5, f32)),
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        n("Add", ["m1", "b1"], ["h"], name="fc1_bias"),
        n("Div", ["h", "sqrt2"], ["hs"], name="gelu_div"),
        n("Erf", ["hs"], ["e"], name="gelu_erf"),
        n("Add", ["e", "one"], ["e1"], name="gelu_add"),
        n("Mul", ["h", "e1"], ["he"], name="gelu_mul"),
        n("Mul", ["he", "half"], ["g"], name="gelu_half"),
        n("Sigmoid", ["h"], ["s"], name="silu_sigmoid"),
        n("Mul", ["h", "s"], ["silu"], name="silu_mul"),
        n("Add", ["g", "silu"], ["both"], name="sum"),
        n("MatMul", ["both", "w2"], ["y"], name="fc2"),
    ]
    model = _model(nodes, [_vi("x", ["N", 8, 16])], [_vi("y", ["N", 8, 16])], inits)
    return model, {"x": rng.normal(0, 1, (24, 8, 16)).astype(f32)}
