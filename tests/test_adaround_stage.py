"""The AdaRound stage on real onnxruntime sessions: codes one step from nearest in the
initializer's layout with the rewrite's qparams, a layer loss never above nearest's
(measured here independently, by running the layers), results independent of the memory
budget, Conv padding resolved as onnxruntime pads, and the weights it leaves alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq.calibration.collect import FloatSession
from onnxq.calibration.remedy import activation_qparams
from onnxq.config import CalibrationConfig, Granularity, QuantConfig, WeightSpec
from onnxq.data import open_dataset
from onnxq.graph.candidate import Candidate
from onnxq.graph.model_io import input_specs
from onnxq.graph.outputs import with_outputs
from onnxq.graph.passes.result import ChangeKind
from onnxq.graph.plan import make_plan
from onnxq.graph.rewrite_qdq import rewrite_qdq, use_qparams
from onnxq.graph.rules import Role
from onnxq.quant import dequantize, quantize
from onnxq.quant.qparams import broadcast_param
from onnxq.quant.rounding import PatchMoments
from onnxq.stages.adaround import _conv_geometry, adaround_codes
from onnxq.stages.prepare import prepare

from helpers import run

F32 = np.float32
WEIGHTED = {"dw", "conv", "pw", "fc", "mm"}


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "adaround",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mixed_model(seed: int = 0) -> onnx.ModelProto:
    """Depthwise 3x3 Conv, 3x3 Conv (stride 2, SAME_UPPER), 1x1 Conv, Gemm (transB=1),
    MatMul."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w_dw", rng.normal(0, 0.4, (4, 1, 3, 3)).astype(F32)),
        _init("b_dw", rng.normal(0, 0.1, 4).astype(F32)),
        _init("w_conv", rng.normal(0, 0.2, (8, 4, 3, 3)).astype(F32)),
        _init("w_pw", rng.normal(0, 0.3, (8, 8, 1, 1)).astype(F32)),
        _init("w_fc", rng.normal(0, 0.1, (16, 128)).astype(F32)),
        _init("b_fc", rng.normal(0, 0.1, 16).astype(F32)),
        _init("w_mm", rng.normal(0, 0.3, (16, 10)).astype(F32)),
        _init("shape", np.array([-1, 128], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_dw", "b_dw"], ["c1"], name="dw", group=4, pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w_conv"], ["c2"], name="conv", strides=[2, 2], auto_pad="SAME_UPPER"
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w_pw"], ["c3"], name="pw"),
        helper.make_node("Reshape", ["c3", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["h"], name="fc", transB=1),
        helper.make_node("Relu", ["h"], ["rh"], name="relu3"),
        helper.make_node("MatMul", ["rh", "w_mm"], ["y"], name="mm"),
    ]
    return _model(nodes, inits, ["N", 4, 8, 8], ["N", 10])


def shared_model(seed: int = 0) -> onnx.ModelProto:
    """Two MatMuls reading one weight, then a MatMul with a weight of its own."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w_shared", rng.normal(0, 0.3, (8, 8)).astype(F32)),
        _init("w_own", rng.normal(0, 0.3, (8, 5)).astype(F32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_shared"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["ra"], name="relu"),
        helper.make_node("MatMul", ["ra", "w_shared"], ["b"], name="mm2"),
        helper.make_node("MatMul", ["b", "w_own"], ["y"], name="mm3"),
    ]
    return _model(nodes, inits, ["N", 8], ["N", 5])


def _setup(model: onnx.ModelProto, feed: dict, config: QuantConfig, tmp_path):
    """The candidate the pipeline would build (nearest rounding), its float session and
    the calibration data."""
    prepared = prepare(model, min_opset=config.min_opset).model
    plan = make_plan(prepared, config)
    path = tmp_path / "calib.npz"
    np.savez(path, **feed)
    data = open_dataset(path, input_specs(model))
    floats = FloatSession(prepared)
    observed = floats.observe(data, plan.roots, CalibrationConfig()) if plan.roots else {}
    qparams = {
        t: activation_qparams(observed[t], config.activations, restricted=config.restricted)
        for t in plan.roots
    }
    result = rewrite_qdq(prepared, plan, qparams, config)
    return Candidate(plan.decisions, result, plan, qparams), floats, data


def _feed(n: int = 24, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, 4, 8, 8)).astype(F32)}


def _uses(candidate: Candidate):
    return {u.node: u for u in candidate.plan.weights if u.role is Role.WEIGHT}


def _weights(floats: FloatSession) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in floats.model.graph.initializer}


CONFIGS = {
    "channel": QuantConfig(adaround_iters=150),
    "tensor": QuantConfig(weights=WeightSpec(granularity=Granularity.TENSOR), adaround_iters=150),
    "block": QuantConfig(
        weights=WeightSpec(granularity=Granularity.BLOCK, block_size=4), adaround_iters=150
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_codes_are_floor_or_ceiling_in_the_weights_layout_with_the_rewrites_qparams(name, tmp_path):
    config = CONFIGS[name]
    candidate, floats, data = _setup(mixed_model(), _feed(), config, tmp_path)
    calls = []
    result = adaround_codes(
        candidate, floats, data, config, batch_size=8, progress=lambda *a: calls.append(a)
    )
    rounded = {c.name for c in result.changes if c.kind is ChangeKind.WEIGHT_ADAROUND}
    skipped = {c.name for c in result.changes if c.kind is ChangeKind.WEIGHT_ADAROUND_SKIPPED}
    # blocked qparams have no matrix form on kernels larger than 1x1 (dw, conv)
    expected = WEIGHTED - {"dw", "conv"} if name == "block" else WEIGHTED
    assert rounded == set(result.codes) == expected
    assert skipped == WEIGHTED - expected
    assert calls == [("AdaRound", i + 1, len(expected)) for i in range(len(expected))]
    uses, weights = _uses(candidate), _weights(floats)
    moved = 0
    for node, (codes, qp) in result.codes.items():
        use = uses[node]
        w = weights[use.tensor].astype(F32)
        want = use_qparams(use, w, config)
        assert (qp.axis, qp.block_size, qp.qtype, qp.restricted) == (
            want.axis,
            want.block_size,
            want.qtype,
            want.restricted,
        )
        np.testing.assert_array_equal(qp.scale, want.scale)
        np.testing.assert_array_equal(qp.zero_point, want.zero_point)
        nearest = quantize(w, want)
        assert codes.shape == w.shape and codes.dtype == nearest.dtype
        scale = broadcast_param(want.scale, w.shape, want)
        zp = broadcast_param(want.zero_point, w.shape, want).astype(np.float64)
        low = np.floor((w / scale).astype(np.float64)) + zp
        lo, hi = want.qtype.min(restricted=want.restricted), want.qtype.max
        c = codes.astype(np.float64)
        assert np.all((c == np.clip(low, lo, hi)) | (c == np.clip(low + 1, lo, hi))), node
        moved += int(np.sum(codes != nearest))
    assert moved > 0  # AdaRound really chose other codes than nearest somewhere
    # the rewrite stores them as they are, and the model runs
    plan, qparams = candidate.plan, candidate.qparams
    written = rewrite_qdq(floats.model, plan, qparams, config, weight_codes=result.codes).model
    inits = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    dq_input = {
        n.output[0]: n.input[0] for n in written.graph.node if n.op_type == "DequantizeLinear"
    }
    for node in written.graph.node:
        if node.name in result.codes:
            stored = inits[dq_input[node.input[1]]]
            np.testing.assert_array_equal(stored.astype(np.int64), result.codes[node.name][0])
    assert np.all(np.isfinite(run(written, _feed(4))[0]))


def _conv_out(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The Conv ``node`` (its attributes, no bias) on ``x`` with weight ``w``."""
    conv = helper.make_node("Conv", ["cx", "cw"], ["cy"])
    conv.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [conv],
        "conv",
        [helper.make_tensor_value_info("cx", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cy", TensorProto.FLOAT, None)],
        [_init("cw", w.astype(F32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return run(model, {"cx": x}, optimize=False)[0]


def _layer_out(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if node.op_type == "Conv":
        return _conv_out(node, x, w)
    if node.op_type == "Gemm":
        return x.astype(np.float64) @ w.T.astype(np.float64)
    return x.astype(np.float64) @ w.astype(np.float64)


@pytest.mark.parametrize("quantized_inputs", [False, True])
@pytest.mark.parametrize("weights_only", [False, True])
def test_layer_loss_on_the_calibration_data_is_never_above_nearest(
    weights_only, quantized_inputs, tmp_path
):
    config = QuantConfig(weights_only=weights_only, adaround_iters=150)
    candidate, floats, data = _setup(mixed_model(), _feed(), config, tmp_path)
    # max_rows above the rows of a batch: the moments are exact, so is the guarantee
    result = adaround_codes(
        candidate,
        floats,
        data,
        config,
        batch_size=8,
        max_rows=10**6,
        quantized_inputs=quantized_inputs,
    )
    assert set(result.codes) == WEIGHTED
    f_nodes = {n.name: n for n in floats.model.graph.node}
    q_nodes = {n.name: n for n in candidate.model.graph.node}
    feed = _feed()
    x_f = floats.run(feed, sorted({f_nodes[n].input[0] for n in WEIGHTED}))
    x_f.update({k: v for k, v in feed.items()})
    q_names = sorted({q_nodes[n].input[0] for n in WEIGHTED} - set(feed))
    fetched = run(with_outputs(candidate.model, q_names), feed, optimize=False)
    outputs = [o.name for o in with_outputs(candidate.model, q_names).graph.output]
    x_q = {**dict(zip(outputs, fetched, strict=True)), **feed}
    if weights_only:  # the first layer reads the float input: X_q = X_f there
        assert q_nodes["dw"].input[0] == "x"
    uses, weights = _uses(candidate), _weights(floats)
    better = 0
    for node, (codes, qp) in result.codes.items():
        w = weights[uses[node].tensor].astype(F32)
        target = _layer_out(f_nodes[node], x_f[f_nodes[node].input[0]], w)
        # the inputs the codes were fitted to: the candidate's, or the float model's
        xq = x_q[q_nodes[node].input[0]] if quantized_inputs else x_f[f_nodes[node].input[0]]

        def loss(c, xq=xq, node=node, qp=qp, target=target):
            out = _layer_out(f_nodes[node], xq, dequantize(c, qp))
            return float(np.sum((target.astype(np.float64) - out) ** 2))

        ada, near = loss(codes), loss(quantize(w, qp))
        assert ada <= near * (1 + 1e-6), (node, ada, near)
        better += ada < 0.99 * near
    assert better >= 3, better  # most layers gain more than 1%


def test_a_tiny_budget_gives_the_same_codes_as_a_large_one(tmp_path):
    config = QuantConfig(adaround_iters=100, seed=5)
    candidate, floats, data = _setup(mixed_model(), _feed(), config, tmp_path)
    kw = dict(batch_size=8, max_rows=40)  # sampled rows: the seeding must not depend on grouping
    big = adaround_codes(candidate, floats, data, config, budget_bytes=2**30, **kw)
    tiny = adaround_codes(candidate, floats, data, config, budget_bytes=1, **kw)
    assert set(big.codes) == set(tiny.codes) == WEIGHTED
    for node in big.codes:
        np.testing.assert_array_equal(big.codes[node][0], tiny.codes[node][0])
    assert big.changes == tiny.changes
    other = adaround_codes(candidate, floats, data, QuantConfig(adaround_iters=100, seed=6), **kw)
    assert any(  # and the seed does choose the sampled rows
        not np.array_equal(big.codes[n][0], other.codes[n][0]) for n in WEIGHTED
    )


def test_a_weight_shared_by_two_nodes_is_skipped_and_gets_no_codes(tmp_path):
    config = QuantConfig(adaround_iters=50)
    feed = {"x": np.random.default_rng(2).normal(0, 1, (32, 8)).astype(F32)}
    candidate, floats, data = _setup(shared_model(), feed, config, tmp_path)
    result = adaround_codes(candidate, floats, data, config, batch_size=16)
    assert set(result.codes) == {"mm3"}
    skipped = {
        c.name: c.detail for c in result.changes if c.kind is ChangeKind.WEIGHT_ADAROUND_SKIPPED
    }
    assert set(skipped) == {"mm1", "mm2"}
    assert all("shared by 2" in why for why in skipped.values())
    (done,) = [c for c in result.changes if c.kind is ChangeKind.WEIGHT_ADAROUND]
    assert done.name == "mm3" and "K=8" in done.detail and "50 iters" in done.detail


def test_a_dynamic_mode_candidate_has_nothing_to_round(tmp_path):
    config = QuantConfig()
    candidate, floats, data = _setup(shared_model(), {"x": np.ones((4, 8), F32)}, config, tmp_path)
    bare = Candidate(candidate.decisions, candidate.result)  # no plan, as dynamic mode
    result = adaround_codes(bare, floats, data, config, batch_size=4)
    assert result.codes == {} and result.changes == ()


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"])
def test_conv_patches_are_those_onnxruntime_convolves(auto_pad):
    """The geometry's patches equal onnxruntime's: a Conv with one-hot kernels outputs
    each patch entry (c, i, j) as a channel."""
    c, kh, kw = 2, 4, 3
    pads = {"pads": [2, 0, 1, 1]} if auto_pad == "NOTSET" else {}
    # onnxruntime refuses dilations with SAME_* padding
    dilations = [1, 1] if auto_pad.startswith("SAME") else [1, 2]
    attrs = dict(strides=[2, 2], dilations=dilations, auto_pad=auto_pad, **pads)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    x = np.random.default_rng(0).normal(0, 1, (2, c, 7, 9)).astype(F32)
    k = c * kh * kw
    one_hot = np.eye(k, dtype=F32).reshape(k, c, kh, kw)
    patches = _conv_out(node, x, one_hot)  # [N, K, oh, ow]
    rows = patches.transpose(0, 2, 3, 1).reshape(-1, k).astype(np.float64)
    geometry = _conv_geometry(node, (5, c, kh, kw), x.shape)
    assert not isinstance(geometry, str)
    moments = PatchMoments(
        geometry.channels,
        geometry.kernel,
        geometry.strides,
        geometry.pads,
        geometry.dilations,
        geometry.group,
    )
    moments.update(x)
    assert moments.rows == rows.shape[0]
    np.testing.assert_allclose(moments.gram[0], rows.T @ rows, rtol=1e-6, atol=1e-6)
    if auto_pad.startswith("SAME"):  # pads need the spatial size
        assert isinstance(_conv_geometry(node, (5, c, kh, kw), (None, c, None, 9)), str)
