"""Cross-layer equalisation: the numpy maths (onnxq.quant.equalize) and the graph pass
(onnxq.graph.passes.equalize), checked in onnxruntime against the float model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, DataError
from onnxq.graph.passes.equalize import equalize
from onnxq.graph.passes.result import ChangeKind, PassResult
from onnxq.quant.equalize import (
    SCALE_MAX,
    Layer,
    Layout,
    equalization_scales,
    equalize_chain,
    input_ranges,
    input_response,
    output_ranges,
)

F32 = np.float32
CONV = Layout(0, 1)
MATMUL = Layout(1, 0)


# --- building and running models --------------------------------------------------------


def _vi(name: str, rank: int) -> onnx.ValueInfoProto:
    """A float tensor of ``rank`` dimensions of unknown size."""
    return helper.make_tensor_value_info(
        name, TensorProto.FLOAT, [f"{name}_{i}" for i in range(rank)]
    )


def _build(nodes, inputs, output_rank: int, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "equalize",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [_vi("y", output_rank)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], *extra: str) -> list[np.ndarray]:
    """The model's outputs (and the tensors ``extra``, exposed as outputs) in onnxruntime."""
    if extra:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.extend(
            helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra
        )
        model = copy
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _equalize(model: onnx.ModelProto, **kwargs) -> PassResult:
    """The pass, checking that it leaves its input alone and returns a valid model."""
    before = model.SerializeToString()
    result = equalize(model, **kwargs)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model)
    return result


def _assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> None:
    """Equal within ``rel`` of the reference output's largest magnitude."""
    err = float(np.max(np.abs(got - want)))
    assert err <= rel * float(np.max(np.abs(want))), (err, float(np.max(np.abs(want))))


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _spread(rng: np.random.Generator, n: int, decades: float) -> np.ndarray:
    """Per-channel factors 10^u, u uniform in [-decades/2, decades/2]."""
    return 10.0 ** rng.uniform(-decades / 2, decades / 2, n)


def conv_chain(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """conv_a → Relu → depthwise conv_dw → conv_pw (1x1) → LeakyRelu → conv_g (group 2).
    Badly scaled: each link's channels are multiplied by factors over four decades in one
    layer and divided by them in the next."""
    rng = np.random.default_rng(seed)
    n = rng.normal
    s1, s2, s3 = (_spread(rng, 8, 4) for _ in range(3))
    col = (slice(None), None, None, None)  # broadcast along axis 0 of a conv weight
    w_g = n(0, 0.3, (2, 3, 4, 3, 3)) / s3.reshape(2, 1, 4, 1, 1)  # input c = 4·group + j
    inits = {
        "w_a": n(0, 0.3, (8, 4, 3, 3)) * s1[col],
        "b_a": n(0, 0.3, 8) * s1,
        "w_dw": n(0, 0.3, (8, 1, 3, 3)) * (s2 / s1)[col],
        "b_dw": n(0, 0.3, 8) * s2,
        "w_pw": n(0, 0.3, (8, 8, 1, 1)) / s2[None, :, None, None] * s3[col],
        "b_pw": n(0, 0.3, 8) * s3,
        "w_g": w_g.reshape(6, 4, 3, 3),
        "b_g": n(0, 0.3, 6),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w_a", "b_a"], ["c_a"], name="conv_a", pads=[1, 1, 1, 1]),
        node("Relu", ["c_a"], ["r_a"], name="relu_a"),
        node("Conv", ["r_a", "w_dw", "b_dw"], ["c_dw"], name="conv_dw", pads=[1] * 4, group=8),
        node("Conv", ["c_dw", "w_pw", "b_pw"], ["c_pw"], name="conv_pw"),
        node("LeakyRelu", ["c_pw"], ["r_pw"], name="leaky", alpha=0.1),
        node("Conv", ["r_pw", "w_g", "b_g"], ["y"], name="conv_g", pads=[1] * 4, group=2),
    ]
    model = _build(nodes, [("x", ["N", 4, 8, 8])], 4, _f32(inits))
    return model, {"x": rng.normal(0, 1, (2, 4, 8, 8)).astype(F32)}


def _f32(inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, F32) for k, v in inits.items()}


def conv_pair(
    act: str | None = "Relu",
    *,
    seed: int = 0,
    pads: int = 0,
    bias_a: np.ndarray | None = None,
    decades: float = 4,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """conv_a (16 channels) → act → conv_b, conv_a's channel i multiplied and conv_b's
    input channel i divided by 10^(-decades/2 … decades/2)."""
    rng = np.random.default_rng(seed)
    s = 10.0 ** np.linspace(-decades / 2, decades / 2, 16)
    inits = {
        "w_a": rng.normal(0, 0.3, (16, 4, 3, 3)) * s[:, None, None, None],
        "b_a": (rng.normal(0, 0.1, 16) if bias_a is None else bias_a) * s,
        "w_b": rng.normal(0, 0.3, (8, 16, 3, 3)) / s[None, :, None, None],
        "b_b": rng.normal(0, 0.1, 8),
    }
    nodes = [helper.make_node("Conv", ["x", "w_a", "b_a"], ["c_a"], name="conv_a", pads=[1] * 4)]
    mid = "c_a"
    if act == "Clip6":
        inits.update(lo=np.array(0.0), hi=np.array(6.0))
        nodes.append(helper.make_node("Clip", ["c_a", "lo", "hi"], ["r_a"], name="act"))
        mid = "r_a"
    elif act == "Clip0":  # min 0, no max: Relu
        inits.update(lo=np.array(0.0))
        nodes.append(helper.make_node("Clip", ["c_a", "lo"], ["r_a"], name="act"))
        mid = "r_a"
    elif act in ("PRelu", "PReluPerChannel"):
        inits["slope"] = np.full((16, 1, 1) if act == "PReluPerChannel" else (1,), 0.2)
        nodes.append(helper.make_node("PRelu", ["c_a", "slope"], ["r_a"], name="act"))
        mid = "r_a"
    elif act is not None:
        nodes.append(helper.make_node(act, ["c_a"], ["r_a"], name="act"))
        mid = "r_a"
    nodes.append(
        helper.make_node("Conv", [mid, "w_b", "b_b"], ["y"], name="conv_b", pads=[pads] * 4)
    )
    model = _build(nodes, [("x", ["N", 4, 8, 8])], 4, _f32(inits))
    return model, {"x": rng.normal(0, 1, (4, 4, 8, 8)).astype(F32)}


def mlp(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Gemm (transB=1) → Relu → Gemm (transB=0, alpha 0.5, beta 2) → Relu → Gemm, each
    hidden channel multiplied in one layer and divided in the next by 10^(-2 … 2)."""
    rng = np.random.default_rng(seed)
    s1, s2 = _spread(rng, 16, 4), _spread(rng, 12, 4)
    inits = {
        "w1": rng.normal(0, 0.3, (16, 8)) * s1[:, None],
        "b1": rng.normal(0, 0.2, 16) * s1,
        "w2": rng.normal(0, 0.3, (16, 12)) / s1[:, None] * s2[None, :],
        "b2": rng.normal(0, 0.2, (1, 12)) * s2,
        "w3": rng.normal(0, 0.3, (12, 3)) / s2[:, None],
        "b3": rng.normal(0, 0.2, 3),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["y"], name="fc3"),
    ]
    model = _build(nodes, [("x", ["N", 8])], 2, _f32(inits))
    return model, {"x": rng.normal(0, 1, (32, 8)).astype(F32)}


def matmuls(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, 5, 8] @ W1 [8, 16] @ W2 [16, 4], hidden channels scaled by 10^(-2 … 2)."""
    rng = np.random.default_rng(seed)
    s = _spread(rng, 16, 4)
    inits = {
        "w1": rng.normal(0, 0.3, (8, 16)) * s[None, :],
        "w2": rng.normal(0, 0.3, (16, 4)) / s[:, None],
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
    ]
    model = _build(nodes, [("x", ["N", 5, 8])], 3, _f32(inits))
    return model, {"x": rng.normal(0, 1, (3, 5, 8)).astype(F32)}


# --- numpy maths ------------------------------------------------------------------------

_ranges = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8)


@given(_ranges, st.data())
def test_scales_make_both_ranges_the_geometric_mean(r1: list[float], data) -> None:
    r2 = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=len(r1), max_size=len(r1)))
    s = equalization_scales(r1, r2)
    mean = np.sqrt(np.multiply(r1, r2))
    np.testing.assert_allclose(np.divide(r1, s), mean, rtol=1e-12)
    np.testing.assert_allclose(np.multiply(r2, s), mean, rtol=1e-12)


def test_scales_degenerate_channels() -> None:
    s = equalization_scales([0.0, 1.0, 1e30, 1e-30, np.inf], [1.0, 0.0, 1e-30, 1e30, 1.0])
    np.testing.assert_array_equal(s, [1.0, 1.0, SCALE_MAX, 1e-8, 1.0])


@given(
    group=st.integers(1, 4),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_grouped_ranges_and_response_match_a_loop(
    group: int, per_group_in: int, per_group_out: int, seed: int
) -> None:
    """Input channel c of a grouped conv is read at slice c % (C/g) by group c // (C/g)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(group * per_group_out, per_group_in, 2, 3))
    layout = Layout(0, 1, group)
    c = rng.normal(size=group * per_group_in)
    want_r = np.zeros(group * per_group_in)
    want_resp = np.zeros(group * per_group_out)
    for o in range(w.shape[0]):
        g = o // per_group_out
        for j in range(per_group_in):
            ch = g * per_group_in + j
            want_r[ch] = max(want_r[ch], np.abs(w[o, j]).max())
            want_resp[o] += w[o, j].sum() * c[ch]
    np.testing.assert_allclose(input_ranges(w, layout), want_r)
    np.testing.assert_allclose(output_ranges(w, layout), np.abs(w).max(axis=(1, 2, 3)))
    np.testing.assert_allclose(input_response(w, layout, c), want_resp)


@given(seed=st.integers(0, 2**16), n=st.integers(2, 4))
@settings(max_examples=25)
def test_chain_keeps_the_linear_map_and_converges(seed: int, n: int) -> None:
    """A MatMul chain without activations computes the same product after equalising,
    and every pair's ranges agree once the sweeps stop."""
    rng = np.random.default_rng(seed)
    dims = rng.integers(2, 7, n + 1)
    layers = [
        Layer(rng.normal(size=(a, b)) * _spread(rng, int(b), 4), rng.normal(size=b), MATMUL)
        for a, b in zip(dims, dims[1:], strict=False)
    ]
    result = equalize_chain(layers)
    assert result.sweeps < 50
    x = rng.normal(size=(3, dims[0]))

    def forward(ls) -> np.ndarray:
        h = x
        for layer in ls:
            h = h @ layer.weight + layer.bias
        return h

    np.testing.assert_allclose(forward(result.layers), forward(layers), rtol=1e-9, atol=1e-9)
    for a, b in zip(result.layers, result.layers[1:], strict=False):
        np.testing.assert_allclose(
            output_ranges(a.weight, MATMUL), input_ranges(b.weight, MATMUL), rtol=1e-3
        )


# --- the pass keeps the float function --------------------------------------------------


@given(seed=st.integers(0, 2**16))
@settings(max_examples=6, deadline=None)
def test_conv_chain_outputs_unchanged(seed: int) -> None:
    model, feed = conv_chain(seed)
    result = _equalize(model)
    assert result.changed
    assert result.names(ChangeKind.PAIR_EQUALIZED) == (
        "conv_a -> conv_dw",
        "conv_dw -> conv_pw",
        "conv_pw -> conv_g",
    )
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    _assert_close(_run(result.model, feed)[0], _run(model, feed)[0])
    after = _weights(result.model)
    for first, second, layout in [("w_a", "w_dw", 8), ("w_dw", "w_pw", 1), ("w_pw", "w_g", 2)]:
        r1 = output_ranges(after[first], CONV)
        r2 = input_ranges(after[second], Layout(0, 1, layout))
        np.testing.assert_allclose(r1, r2, rtol=2e-3)  # jointly equalised chain


@pytest.mark.parametrize("build", [mlp, matmuls])
def test_gemm_and_matmul_outputs_unchanged(build) -> None:
    model, feed = build()
    result = _equalize(model)
    assert result.count(ChangeKind.PAIR_EQUALIZED) == len(model.graph.node) // 2
    _assert_close(_run(result.model, feed)[0], _run(model, feed)[0])
    assert _weights(result.model).keys() == _weights(model).keys()  # rewritten in place


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "PRelu", "Clip0", None])
def test_conv_pair_outputs_unchanged_across_homogeneous_activations(act: str | None) -> None:
    model, feed = conv_pair(act)
    result = _equalize(model)
    assert result.names(ChangeKind.PAIR_EQUALIZED) == ("conv_a -> conv_b",)
    _assert_close(_run(result.model, feed)[0], _run(model, feed)[0])


@pytest.mark.parametrize(
    ("build", "first", "second", "layouts"),
    [
        (matmuls, "w1", "w2", (MATMUL, MATMUL)),
        (lambda: conv_pair("LeakyRelu"), "w_a", "w_b", (CONV, CONV)),
        (lambda: conv_pair(None), "w_a", "w_b", (CONV, CONV)),
    ],
)
def test_single_pair_ranges_match(build, first: str, second: str, layouts) -> None:
    model, _ = build()
    before, after = _weights(model), _weights(_equalize(model).model)
    r1 = output_ranges(before[first], layouts[0])
    r2 = input_ranges(before[second], layouts[1])
    assert np.max(np.maximum(r1, r2) / np.minimum(r1, r2)) > 10  # badly scaled to start
    r1 = output_ranges(after[first], layouts[0])
    r2 = input_ranges(after[second], layouts[1])
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def _fake_quant(w: np.ndarray) -> np.ndarray:
    """Per-tensor symmetric int8: round(w / s) · s with s = max|w| / 127."""
    s = float(np.max(np.abs(w))) / 127
    return (np.clip(np.round(w / s), -127, 127) * s).astype(w.dtype)


def _quantized_weights(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(_fake_quant(numpy_helper.to_array(t)), t.name))
    return copy


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_equalising_lowers_int8_weight_error_of_a_conv_pair() -> None:
    model, feed = conv_pair("Relu")
    equalized = _equalize(model).model
    want = _run(model, feed)[0]
    errors = [
        _relative_error(_run(_quantized_weights(m, ("w_a", "w_b")), feed)[0], want)
        for m in (model, equalized)
    ]
    assert errors[1] < 0.1 * errors[0], errors


def test_equalising_lowers_int8_weight_error_of_each_gemm() -> None:
    """Weight-only error of each layer relative to that layer's output (numpy), for the
    MLP's first pair: neither layer gets worse, the worse one ten times better."""
    model, feed = mlp()
    x = feed["x"].astype(np.float64)

    def layer_errors(m: onnx.ModelProto) -> list[float]:
        w = {k: v.astype(np.float64) for k, v in _weights(m).items()}
        h1 = x @ w["w1"].T + w["b1"]
        h1q = x @ _fake_quant(w["w1"]).T + w["b1"]
        a1 = np.maximum(h1, 0)
        h2 = 0.5 * a1 @ w["w2"]
        h2q = 0.5 * a1 @ _fake_quant(w["w2"])
        return [_relative_error(h1q, h1), _relative_error(h2q, h2)]

    before, after = layer_errors(model), layer_errors(_equalize(model).model)
    assert all(a <= b for a, b in zip(after, before, strict=True)), (before, after)
    assert max(after) < 0.1 * max(before), (before, after)


# --- refusals and ReLU6 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("act", "reason"),
    [
        ("HardSwish", "HardSwish between conv_a and conv_b is not positive-homogeneous"),
        ("Sigmoid", "Sigmoid between conv_a and conv_b is not positive-homogeneous"),
        ("Clip6", "Clip between conv_a and conv_b (ReLU6) is not positive-homogeneous"),
        ("PReluPerChannel", "PRelu between conv_a and conv_b has a slope that is not one"),
    ],
)
def test_refused_across_non_homogeneous_activations(act: str, reason: str) -> None:
    model, _ = conv_pair(act)
    result = _equalize(model)
    assert not result.changed and result.model is model
    assert [(c.kind, c.name) for c in result.changes] == [
        (ChangeKind.PAIR_SKIPPED, "conv_a -> conv_b")
    ]
    assert result.changes[0].detail.startswith(reason)


def test_relu6_replaced_by_relu_when_asked() -> None:
    model, feed = conv_pair("Clip6", decades=1)
    relu_model, _ = conv_pair("Relu", decades=1)  # same weights, Relu for Clip(0, 6)
    result = _equalize(model, relu6_to_relu=True)
    assert result.names(ChangeKind.ACTIVATION_REPLACED) == ("act",)
    assert result.names(ChangeKind.PAIR_EQUALIZED) == ("conv_a -> conv_b",)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu", "Conv"]
    assert not {"lo", "hi"} & _weights(result.model).keys()  # the Clip's bounds are gone

    small = {"x": 0.3 * feed["x"]}  # activations stay below 6: same as the ReLU6 model
    assert _run(model, small, "c_a")[1].max() < 6
    _assert_close(_run(result.model, small)[0], _run(model, small)[0])
    big = feed  # some activations above 6: now the Relu model's output
    assert _run(model, big, "c_a")[1].max() > 6
    got, clipped = _run(result.model, big)[0], _run(model, big)[0]
    _assert_close(got, _run(relu_model, big)[0])
    assert not np.allclose(got, clipped, rtol=1e-3, atol=1e-3)


def test_refused_for_shared_or_computed_weights_and_shared_outputs() -> None:
    model, _ = conv_pair("Relu")
    shared = onnx.ModelProto()
    shared.CopyFrom(model)
    shared.graph.node.append(helper.make_node("Conv", ["x2", "w_b"], ["z"], name="conv_c"))
    shared.graph.input.append(_vi("x2", 4))
    shared.graph.output.append(_vi("z", 4))
    detail = _equalize(shared).changes[0].detail
    assert detail == "weight 'w_b' of conv_b is shared with conv_c"

    computed = onnx.ModelProto()
    computed.CopyFrom(model)
    computed.graph.node.insert(0, helper.make_node("Neg", ["w_in"], ["w_neg"], name="neg"))
    computed.graph.node[3].input[1] = "w_neg"  # conv_b
    computed.graph.input.append(_vi("w_in", 4))
    assert _equalize(computed).changes[0].detail == "weight 'w_neg' of conv_b is not an initializer"

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(_vi("c_a", 4))
    assert _equalize(exposed).changes[0].detail == "'c_a' is a graph output"


def test_refused_when_channels_do_not_line_up() -> None:
    model, _ = matmuls()
    w2 = np.ones((8, 4), F32)  # 16 columns come out of mm1, mm2 reads 8 (never run)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2, "w2"))
    result = _equalize(model)
    assert result.changes[0].detail == (
        "channel counts do not line up: mm1 has 16 output channels, mm2 reads 8"
    )


def test_shared_bias_gets_a_new_initializer() -> None:
    model, feed = conv_pair("Relu")
    model.graph.node.append(helper.make_node("Conv", ["x", "w_c", "b_a"], ["z"], name="conv_c"))
    model.graph.output.append(_vi("z", 4))
    w_c = np.random.default_rng(3).normal(0, 0.3, (16, 4, 1, 1)).astype(F32)
    model.graph.initializer.append(numpy_helper.from_array(w_c, "w_c"))
    result = _equalize(model)
    conv_a = result.model.graph.node[0]
    assert conv_a.input[2] not in ("b_a", "") and result.model.graph.node[-1].input[2] == "b_a"
    np.testing.assert_array_equal(_weights(result.model)["b_a"], _weights(model)["b_a"])
    for got, want in zip(_run(result.model, feed), _run(model, feed), strict=True):
        _assert_close(got, want)


def test_bad_arguments() -> None:
    model, _ = conv_pair("Relu")
    with pytest.raises(ConfigError, match="iterations"):
        equalize(model, iterations=0)
    with pytest.raises(DataError, match="'c_a' has 3 values"):
        equalize(model, pre_activation_min={"c_a": np.zeros(3)})


# --- high-bias absorption ---------------------------------------------------------------


def _pre_min(model: onnx.ModelProto, feed: dict[str, np.ndarray], tensor: str) -> np.ndarray:
    values = _run(model, feed, tensor)[-1]
    axis = 1 if values.ndim == 4 else -1
    return values.min(axis=tuple(i for i in range(values.ndim) if i != axis % values.ndim))


def test_high_bias_absorption_keeps_outputs_and_shrinks_ranges() -> None:
    bias = np.where(np.arange(16) % 2 == 0, 12.0, 0.1)  # even channels always positive
    model, feed = conv_pair("Relu", bias_a=bias)
    pre_min = _pre_min(model, feed, "c_a")
    assert (pre_min[::2] > 0).all()
    plain = _equalize(model)
    result = _equalize(model, pre_activation_min={"c_a": pre_min})
    assert result.names(ChangeKind.BIAS_ABSORBED) == ("conv_a",)
    assert result.names(ChangeKind.PAIR_EQUALIZED) == ("conv_a -> conv_b",)
    y, r_absorbed = _run(result.model, feed, "r_a")
    _assert_close(y, _run(model, feed)[0])
    r_plain = _run(plain.model, feed, "r_a")[1]
    top_plain, top_absorbed = r_plain.max(axis=(0, 2, 3)), r_absorbed.max(axis=(0, 2, 3))
    assert (top_absorbed[::2] < top_plain[::2]).all()  # shifted channels: smaller range
    np.testing.assert_allclose(r_absorbed.min(axis=(0, 2, 3))[::2], 0, atol=1e-4)
    np.testing.assert_allclose(top_absorbed[1::2], top_plain[1::2], rtol=1e-6)


def test_high_bias_absorbed_into_gemm_with_alpha_and_beta() -> None:
    model, feed = mlp()
    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    for t in moved.graph.initializer:  # raise fc1's bias: some channels always positive
        if t.name == "b1":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + F32(2.0), "b1"))
    pre_min = _pre_min(moved, feed, "h1")
    assert (pre_min > 0).any()
    result = _equalize(moved, pre_activation_min={"h1": pre_min})
    assert result.names(ChangeKind.BIAS_ABSORBED) == ("fc1",)
    _assert_close(_run(result.model, feed)[0], _run(moved, feed)[0])


def test_absorption_skipped_for_a_padded_layer_two_or_no_activation() -> None:
    bias = np.full(16, 12.0)
    for act, pads, note in [
        ("Relu", 1, "bias not absorbed: Conv conv_b pads its input"),
        (None, 0, "bias not absorbed: no activation between the layers"),
    ]:
        model, feed = conv_pair(act, pads=pads, bias_a=bias)
        result = _equalize(model, pre_activation_min={"c_a": _pre_min(model, feed, "c_a")})
        assert result.count(ChangeKind.BIAS_ABSORBED) == 0
        assert note in result.changes[0].detail
        _assert_close(_run(result.model, feed)[0], _run(model, feed)[0])


def test_activation_ranges_balance_the_activation_against_layer_two() -> None:
    rng = np.random.default_rng(3)
    first = Layer(rng.normal(0, 1, (6, 4, 3, 3)), rng.normal(0, 1, 6), CONV)
    second = Layer(
        rng.normal(0, 1, (5, 6, 1, 1)) * _spread(rng, 6, 3)[None, :, None, None], None, CONV
    )
    act = _spread(rng, 6, 4)  # per-channel range of the activation between them
    result = equalize_chain([first, second], activations=[act])
    s = result.scales[0]
    a_after = act / s
    r2_after = input_ranges(result.layers[1].weight, CONV)
    np.testing.assert_allclose(a_after, r2_after, rtol=1e-9)  # both sqrt(a · r2)
    np.testing.assert_allclose(a_after, np.sqrt(act * input_ranges(second.weight, CONV)))
    # the function is kept: layer 1's output channel i divided by s_i, layer 2's input
    # channel i multiplied by it
    np.testing.assert_allclose(result.layers[0].weight * s[:, None, None, None], first.weight)
    with pytest.raises(ValueError, match="2 activation ranges for 1 pairs"):
        equalize_chain([first, second], activations=[act, act])


def test_a_depthwise_layer_two_gets_its_activation_channels_made_equal() -> None:
    rng = np.random.default_rng(4)
    first = Layer(rng.normal(0, 1, (6, 4, 3, 3)), rng.normal(0, 1, 6), CONV)
    depthwise = Layer(rng.normal(0, 1, (6, 1, 3, 3)), None, Layout(0, 1, 6))
    act = _spread(rng, 6, 4)
    result = equalize_chain([first, depthwise], activations=[act])
    np.testing.assert_allclose(act / result.scales[0], act.max(), rtol=1e-12)
    # each output channel of the depthwise layer scaled as a whole: its per-channel
    # weight range moves with it, so per-channel quantization loses nothing
    ratio = output_ranges(result.layers[1].weight, Layout(0, 1, 6)) / output_ranges(
        depthwise.weight, Layout(0, 1, 6)
    )
    np.testing.assert_allclose(ratio, result.scales[0], rtol=1e-12)
