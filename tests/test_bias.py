"""Bias correction: the shift formula against onnxruntime, and the correction end to end
(weights-only nodes corrected, integer-activation nodes left alone)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnxq import OptimizeFor, QuantConfig, quantize
from onnxq.cli.main import cli
from onnxq.config import WeightSpec
from onnxq.graph.outputs import with_outputs
from onnxq.quant.bias_correction import conv_shift, matmul_shift

import models
from helpers import NO_CHECK, corrected_pair, graph_bytes, run

f32 = np.float32


def _conv(weight: np.ndarray, group: int, channels: int) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=group)],
            "conv",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, 6, 7])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    group=st.sampled_from([1, 2, 4]),
    per_group_out=st.integers(1, 3),
    kernel=st.sampled_from([(1, 1), (3, 3), (2, 3)]),
)
def test_conv_shift_is_the_mean_output_of_the_error_filter(seed, group, per_group_out, kernel):
    """With every input channel constant, each output of ``conv(x, ε)`` is exactly the
    shift of its channel (no padding): the formula, checked by onnxruntime."""
    rng = np.random.default_rng(seed)
    channels = 4
    error = rng.normal(0, 1, (group * per_group_out, channels // group, *kernel)).astype(f32)
    mean = rng.normal(0, 3, channels).astype(f32)
    x = np.broadcast_to(mean[None, :, None, None], (1, channels, 6, 7)).astype(f32)
    (y,) = run(_conv(error, group, channels), {"x": x}, optimize=False)
    expected = conv_shift(error, mean, group)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 0, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 30), k=st.integers(1, 9))
def test_matmul_shift_is_the_mean_row_of_x_times_the_error(seed, rows, k):
    rng = np.random.default_rng(seed)
    x, error = rng.normal(2, 1, (rows, k)), rng.normal(0, 1, (k, 5))
    np.testing.assert_allclose(matmul_shift(error, x.mean(axis=0)), (x @ error).mean(axis=0))


def test_shapes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        conv_shift(np.zeros((4, 2, 3, 3)), np.zeros(3), group=2)
    with pytest.raises(ValueError):
        matmul_shift(np.zeros((4, 2)), np.zeros(3))


# ----------------------------------------------------------------------------- end to end


def _biased_model(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv without bias -> Relu -> Conv with bias -> MatMul -> Add(constant): inputs far
    from zero mean, so rounding errors that do not cancel over a filter shift the outputs;
    plus a MatMul with no Add after it (nothing to put a correction in)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(f32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 8, 3, 3)).astype(f32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(f32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.2, (6, 5)).astype(f32), "w3"),
        numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(f32), "b3"),
        numpy_helper.from_array(rng.normal(0, 0.2, (6, 3)).astype(f32), "w4"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("MatMul", ["c2", "w3"], ["m3"], name="mm3"),
        helper.make_node("Add", ["m3", "b3"], ["y"], name="add3"),
        helper.make_node("MatMul", ["c2", "w4"], ["z"], name="mm4"),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "biased",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 10, 10])],
            [
                helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 6, 5]),
                helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 8, 6, 3]),
            ],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model, {"x": rng.normal(4.0, 1.0, (64, 4, 10, 10)).astype(f32)}


def test_weights_only_nodes_get_their_mean_back(tmp_path):
    model, feed = _biased_model()
    plain, fixed = corrected_pair(model, feed, tmp_path)  # 4-bit: coarse rounding
    assert plain.corrected_biases == ()
    # conv1 had no bias (one is added); mm3's goes into the Add; mm4 has nowhere to put it
    assert set(fixed.corrected_biases) == {"conv1", "conv2", "mm3"}

    def outputs(m: onnx.ModelProto) -> list[np.ndarray]:
        return run(with_outputs(m, ["c1"]), feed)  # y, z, and conv1's output

    ref = outputs(model)
    before = outputs(onnx.load(str(tmp_path / "a.onnx")))
    after = outputs(onnx.load(str(tmp_path / "b.onnx")))

    def shift(out: list[np.ndarray], k: int, axes: tuple[int, ...]) -> float:
        return float(np.abs((out[k] - ref[k]).mean(axis=axes)).max())

    # conv1 (linear, no padding, means from the same data): its channel means are exact again
    assert shift(after, 2, (0, 2, 3)) < 0.02 * shift(before, 2, (0, 2, 3))
    # y, after a ReLU (which turns noise into a shift no bias can know): much closer
    assert shift(after, 0, (0, 2)) < 0.6 * shift(before, 0, (0, 2))
    sqnr = [r.fidelity.outputs[0].sqnr_db for r in (plain, fixed)]
    assert sqnr[1] > sqnr[0] + 1, sqnr
    written = onnx.load(str(tmp_path / "b.onnx"))
    onnx.checker.check_model(written)
    names = {i.name for i in written.graph.initializer}
    assert "b2" not in names and "b3" not in names  # replaced by corrected copies, not kept


def test_nodes_on_integer_activations_are_left_alone(tmp_path):
    model = models.cnn()
    shape = [d.dim_value or 16 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"input": np.random.default_rng(0).normal(0, 1, shape).astype(f32)}
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    size = OptimizeFor.SIZE  # int8 activations (balanced writes this tiny model weights-only)
    on = quantize(
        tmp_path / "m.onnx",
        tmp_path / "a.onnx",
        QuantConfig(optimize_for=size),
        data=tmp_path / "d.npz",
    )
    quantize(
        tmp_path / "m.onnx",
        tmp_path / "b.onnx",
        QuantConfig(bias_correction=False, optimize_for=size),
        data=tmp_path / "d.npz",
    )
    assert on.corrected_biases == ()
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(tmp_path / "b.onnx")


def test_cli_switch_and_json(tmp_path):
    model, feed = _biased_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    args = ["quantize", str(tmp_path / "m.onnx"), "--weights-only", "--data"]
    args += [str(tmp_path / "d.npz"), "--target-sqnr", "0", "--json"]
    on = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a.onnx")])
    off = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b.onnx"), "--no-bias-correction"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert sorted(json.loads(on.stdout)["corrected_biases"]) == ["conv1", "conv2", "mm3"]
    assert json.loads(off.stdout)["corrected_biases"] == []


def _single(node: onnx.NodeProto, x_shape, inits, out_shape) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph(
            [node],
            "single",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )


def _mean_shift(tmp_path, model, feed, axes, **cfg) -> tuple[float, float, onnx.ModelProto]:
    """Largest per-channel mean shift of the output without and with bias correction
    (4-bit weights-only), and the corrected model."""
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    base = QuantConfig(weights_only=True, target=NO_CHECK, **cfg, weights=WeightSpec(bits=4))
    shifts = []
    for name, on in (("off.onnx", False), ("on.onnx", True)):
        quantize(
            tmp_path / "m.onnx",
            tmp_path / name,
            replace(base, bias_correction=on),
            data=tmp_path / "d.npz",
        )
        (ref,) = run(model, feed)
        (out,) = run(onnx.load(str(tmp_path / name)), feed)
        shifts.append(float(np.abs((out - ref).mean(axis=axes)).max()))
    written = onnx.load(str(tmp_path / "on.onnx"))
    onnx.checker.check_model(written, full_check=True)
    return shifts[0], shifts[1], written


def test_conv_with_an_empty_bias_slot_gets_its_bias_there(tmp_path):
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (6, 4, 3, 3)).astype(f32), "w")
    node = helper.make_node("Conv", ["x", "w", ""], ["y"], name="conv")
    model = _single(node, ["N", 4, 9, 9], [w], ["N", 6, 7, 7])
    feed = {"x": rng.normal(3.0, 1.0, (32, 4, 9, 9)).astype(f32)}
    before, after, written = _mean_shift(tmp_path, model, feed, (0, 2, 3))
    assert after < 0.02 * before
    (conv,) = [n for n in written.graph.node if n.op_type == "Conv"]
    assert len(conv.input) == 3 and conv.input[2]


@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_correction_honours_alpha_beta_and_trans_b(tmp_path, with_c):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (5, 7)).astype(f32), "w")]  # [N, K]
    inputs = ["x", "w"]
    if with_c:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(f32), "c"))
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", alpha=0.5, beta=2.0, transB=1)
    model = _single(node, ["N", 7], inits, ["N", 5])
    feed = {"x": rng.normal(2.0, 1.0, (64, 7)).astype(f32)}
    before, after, _ = _mean_shift(tmp_path, model, feed, (0,))
    assert after < 0.02 * before


def test_a_tensor_read_along_two_axes_is_not_corrected(tmp_path):
    """``x`` feeds a Conv (channels on axis 1) and a MatMul (columns on the last axis),
    both with 4 entries: one set of means cannot serve both, so neither is corrected,
    while a Conv on another tensor still is."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(f32), "wc"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4)).astype(f32), "wm"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(f32), "bm"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(f32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv"),
        helper.make_node("MatMul", ["x", "wm"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "bm"], ["y"], name="add"),
        helper.make_node("Conv", ["c", "w2"], ["z"], name="conv2"),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "two_axes",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 4, 4])],
            [
                helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 4, 4]),
                helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 4, 4, 4]),
            ],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = rng.normal(0, 1, (32, 4, 4, 4)) + np.arange(4)[None, :, None, None] * 3.0
    np.savez(tmp_path / "d.npz", x=(x - np.arange(4) * 5.0).astype(f32))
    cfg = QuantConfig(weights_only=True, target=NO_CHECK, weights=WeightSpec(bits=4))
    report = quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", cfg, data=tmp_path / "d.npz")
    assert report.corrected_biases == ("conv2",)


def test_non_finite_means_leave_the_bias_alone(tmp_path):
    from onnxq.graph.passes.bias_correction import correct_biases
    from onnxq.graph.passes.result import ChangeKind

    model, feed = _biased_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    cfg = QuantConfig(weights_only=True, bias_correction=False, fold_weights=False, target=NO_CHECK)
    quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", cfg, data=tmp_path / "d.npz")
    written = onnx.load(str(tmp_path / "q.onnx"))
    finite = {"x": np.full(4, 4.0), "r1": np.ones(8), "c2": np.ones(6)}
    corrected = correct_biases(written, model, finite).names(ChangeKind.BIAS_CORRECTED)
    assert set(corrected) == {"conv1", "conv2", "mm3"}
    nan_x = {**finite, "x": np.array([4.0, np.nan, 4, 4])}
    corrected = correct_biases(written, model, nan_x).names(ChangeKind.BIAS_CORRECTED)
    assert set(corrected) == {"conv2", "mm3"}


def _padded_matmul() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, 8, 16] @ w + b, of which only position 0 is output; positions 1..7 are
    "padding" near 4.0: the correction's input mean is mostly theirs, so it moves the
    output position by about 3.5 · Σ ε, several times its own rounding error."""
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    b = rng.normal(0, 0.1, 16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
        helper.make_node("Add", ["xw", "b"], ["h"], name="add"),
        helper.make_node("Gather", ["h", "first"], ["y"], name="take", axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "padded",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 16])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16])],
            [
                numpy_helper.from_array(w, "w"),
                numpy_helper.from_array(b, "b"),
                numpy_helper.from_array(np.array(0, np.int64), "first"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    x = np.full((32, 8, 16), 4.0, np.float32) + rng.normal(0, 0.05, (32, 8, 16)).astype(np.float32)
    x[:, 0] = rng.normal(0, 1, (32, 16))
    return model, {"x": x}


def test_the_output_check_undoes_a_correction_that_adds_noise(tmp_path):
    model, feed = _padded_matmul()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    wo = QuantConfig(weights_only=True)
    checked = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", wo, data=tmp_path / "d.npz")
    plain = replace(wo, target=NO_CHECK)
    corrected = quantize(tmp_path / "m.onnx", tmp_path / "b.onnx", plain, data=tmp_path / "d.npz")
    c = checked.check
    assert corrected.corrected_biases == ("mm",)  # without the check: corrected
    assert c is not None and not c.before.meets(c.target) and c.met
    assert c.uncorrected_db is not None and c.uncorrected_db > 6.0
    assert checked.corrected_biases == () and not c.float_nodes  # undone, nothing floated
    assert c.to_dict()["bias_correction_undone"] is True
    sqnr = [r.fidelity.outputs[0].sqnr_db for r in (checked, corrected)]
    assert sqnr[0] > sqnr[1] + 6.0
    res = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "c.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "--weights-only",
        ],
    )
    assert res.exit_code == 0 and "bias correction undone by the output check" in res.output


def test_a_correction_that_helps_is_kept_by_the_output_check(tmp_path):
    """The biased model of the tests above, weights-only and checked at a target its
    correction helps reach: the correction stays (the simulation is not less noisy)."""
    model, feed = _biased_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    config = QuantConfig(weights_only=True, target=replace(QuantConfig().target, sqnr_db=60.0))
    report = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", config, data=tmp_path / "d.npz")
    c = report.check
    assert c is not None and c.uncorrected_db is None
    assert c.rounds >= 1 and c.float_nodes  # a re-planned candidate was written
    assert report.corrected_biases  # and it was built with the correction


def test_a_correction_that_helps_is_kept_beside_an_int8_embedding_table(tmp_path):
    """A weights-only model whose int8 embedding table the simulation does not quantize:
    the model without the correction is measured, not read off the simulation (which
    blamed the correction for the table's noise and wrote the worse model)."""
    rng = np.random.default_rng(0)
    table = (rng.normal(0, 0.05, (1024, 32)) + 0.3).astype(np.float32)
    table[np.arange(1024), rng.integers(0, 32, 1024)] = 40.0
    inits = [numpy_helper.from_array(table, "table")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h0"], name="emb", axis=0)]
    for i in range(6):
        w = rng.normal(0, 1 / np.sqrt(32), (32, 32)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(rng.normal(1.0, 0.1, 32).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"], name=f"mm{i}"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"], name=f"add{i}"),
        ]
    ids = helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 8])
    out = helper.make_tensor_value_info("h6", onnx.TensorProto.FLOAT, ["N", 8, 32])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [ids], [out], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", ids=rng.integers(0, 1024, (64, 8)).astype(np.int64))
    wo = QuantConfig(weights_only=True)
    config = replace(wo, target=replace(wo.target, sqnr_db=60.0))
    checked = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", config, data=tmp_path / "d.npz")
    c = checked.check
    assert c is not None and c.uncorrected_db is None
    assert checked.corrected_biases  # the written model keeps the correction
    plain = {}
    for on in (True, False):
        cfg = replace(wo, target=NO_CHECK, bias_correction=on)
        r = quantize(tmp_path / "m.onnx", tmp_path / f"{on}.onnx", cfg, data=tmp_path / "d.npz")
        plain[on] = r.fidelity.outputs[0].sqnr_db
    assert plain[True] > plain[False]  # the correction helps here
    assert checked.fidelity.outputs[0].sqnr_db >= plain[True]
