"""Prepare's own fusions: a constant Mul/Add after a convolution folded into it, and
arithmetic hard-sigmoid / hard-swish written as HardSigmoid. Each must give the model's
outputs (float rounding only) in a real onnxruntime session, and leave alone what it must
not touch. Plus the plan rule they feed: an element-wise op is quantized only when every
activation input is already integer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxq.config import QuantConfig
from onnxq.graph.passes.fold_affine import fold_affine
from onnxq.graph.passes.hard_sigmoid import hard_sigmoids
from onnxq.graph.plan import make_plan
from onnxq.stages.prepare import prepare

C = 6  # channels


def _model(nodes, inits, extra_outputs=()):
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4)
            for o in ("y", *extra_outputs)
        ],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)


def _conv(seed: int = 0, bias: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"w": rng.normal(0, 0.5, (C, 3, 3, 3))}
    if bias:
        out["b"] = rng.normal(0, 0.5, C)
    return out


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --- fold_affine ---------------------------------------------------------------------


SHAPES = {"scalar": (), "one": (1,), "channel": (1, C, 1, 1), "channel3": (C, 1, 1)}


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["Mul", "Add"]), st.sampled_from(sorted(SHAPES))),
        min_size=1,
        max_size=3,
    ),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_constant_affines_after_a_conv_fold_into_it(steps, bias, seed):
    """Any chain of scalar or per-channel Mul/Add after a Conv becomes the Conv alone,
    and the outputs are the same up to float rounding."""
    rng = np.random.default_rng(seed)
    inits = _conv(seed, bias)
    conv_in = ["x", "w", "b"] if bias else ["x", "w"]
    nodes = [helper.make_node("Conv", conv_in, ["t0"], name="conv", pads=[1, 1, 1, 1])]
    for i, (op, shape) in enumerate(steps):
        inits[f"c{i}"] = rng.uniform(0.5, 2.0, SHAPES[shape]) * rng.choice([-1, 1])
        out = "y" if i == len(steps) - 1 else f"t{i + 1}"
        nodes.append(helper.make_node(op, [f"t{i}", f"c{i}"], [out], name=f"op{i}"))
    model = _model(nodes, inits)
    result = fold_affine(model)
    assert result.changed and _ops(result.model) == ["Conv"]
    assert result.model.graph.node[0].output[0] == "y"
    assert {i.name for i in result.model.graph.initializer}.isdisjoint({"w", "c0"})
    (a,), (b,) = _run(model, _x(seed)), _run(result.model, _x(seed))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.parametrize(
    "case",
    ["two_readers", "graph_output", "other_axis", "activation", "conv_transpose", "fed"],
)
def test_affines_that_are_not_per_channel_constants_stay(case):
    """Not folded: a Conv output read twice or given as output, a constant varying along
    another axis, a product with an activation, a ConvTranspose, a constant that is also a
    graph input (a feed may replace its initializer)."""
    inits = _conv()
    op_type = "ConvTranspose" if case == "conv_transpose" else "Conv"
    if case == "conv_transpose":
        inits["w"] = np.random.default_rng(1).normal(0, 0.5, (3, C, 3, 3))
    nodes = [helper.make_node(op_type, ["x", "w", "b"], ["t"], name="conv", pads=[1, 1, 1, 1])]
    extra: tuple[str, ...] = ()
    other = "c"
    inits["c"] = np.full((1, C, 1, 1), 1.5)
    if case == "other_axis":
        inits["c"] = np.linspace(0.5, 2.0, 8).reshape(1, 1, 1, 8)
    if case == "activation":
        other = "t"
    nodes.append(helper.make_node("Mul", ["t", other], ["y"], name="mul"))
    if case == "two_readers":
        nodes.append(helper.make_node("Relu", ["t"], ["r"], name="relu"))
        extra = ("r",)
    if case == "graph_output":
        extra = ("t",)
    model = _model(nodes, inits, extra_outputs=extra)
    if case == "fed":
        model.graph.input.append(
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, C, 1, 1])
        )
    assert not fold_affine(model).changed


# --- hard_sigmoids -------------------------------------------------------------------


def _hard_chain(form: str, three: float = 3.0, six: float = 6.0, reader: bool = False):
    """Conv, then an arithmetic hard-sigmoid/-swish in one of the export forms."""
    inits = {**_conv(), "three": three, "zero": 0.0, "six": six, "sixth": 1 / 6}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h", "three"], ["a"], name="add3"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
    ]
    if form == "swish_mul_div":  # x · clip / 6 (PP-OCR)
        nodes += [
            helper.make_node("Mul", ["h", "c"], ["m"], name="mul_x"),
            helper.make_node("Div", ["m", "six"], ["y"], name="div6"),
        ]
    elif form == "swish_div_mul":  # x · (clip / 6)
        nodes += [
            helper.make_node("Div", ["c", "six"], ["d"], name="div6"),
            helper.make_node("Mul", ["d", "h"], ["y"], name="mul_x"),
        ]
    elif form == "swish_sixth":  # x · clip · (1/6)
        nodes += [
            helper.make_node("Mul", ["c", "h"], ["m"], name="mul_x"),
            helper.make_node("Mul", ["sixth", "m"], ["y"], name="sixth_mul"),
        ]
    else:  # the gate alone
        nodes += [helper.make_node("Div", ["c", "six"], ["y"], name="div6")]
    extra: tuple[str, ...] = ()
    if reader:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        extra = ("r",)
    return _model(nodes, inits, extra_outputs=extra)


@pytest.mark.parametrize("form", ["swish_mul_div", "swish_div_mul", "swish_sixth", "sigmoid"])
def test_arithmetic_hard_sigmoids_become_hardsigmoid(form):
    model = _hard_chain(form)
    result = hard_sigmoids(model)
    swish = form != "sigmoid"
    expected = ["Conv", "HardSigmoid", "Mul"] if swish else ["Conv", "HardSigmoid"]
    assert result.changed and _ops(result.model) == expected
    assert result.model.graph.node[-1].output[0] == "y"
    if swish:  # the product is with the convolution's output itself
        assert "h" in result.model.graph.node[-1].input
    (a,), (b,) = _run(model, _x()), _run(result.model, _x())
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("change", [{"three": 2.5}, {"six": 5.0}, {"reader": True}])
def test_other_arithmetic_stays(change):
    """Other constants, or an intermediate read elsewhere: not a hard-sigmoid to replace."""
    assert not hard_sigmoids(_hard_chain("swish_mul_div", **change)).changed


def test_a_constant_of_wider_rank_stays():
    """x + 3 with a 3 of rank 5 broadcasts x (rank 4) to rank 5: HardSigmoid(x) would not."""
    model = _hard_chain("swish_mul_div", three=np.full((1, 1, 1, 1, 1), 3.0))
    assert not hard_sigmoids(model).changed


def test_a_constant_a_feed_may_replace_stays():
    """The 6 of Clip(x + 3, 0, 6) listed as a graph input too: not a constant."""
    model = _hard_chain("swish_mul_div")
    model.graph.input.append(helper.make_tensor_value_info("six", TensorProto.FLOAT, []))
    assert not hard_sigmoids(model).changed


def test_prepare_runs_both_and_keeps_the_outputs():
    """A PP-LCNet-like block (Conv, scalar affine, arithmetic hard-swish) prepares to
    Conv, HardSigmoid, Mul with the same outputs."""
    inits = {**_conv(), "s": 2.17, "t": 1.0, "three": 3.0, "zero": 0.0, "six": 6.0}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h0"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "h0"], ["h1"], name="lab_scale"),
        helper.make_node("Add", ["h1", "t"], ["h"], name="lab_bias"),
        helper.make_node("Add", ["h", "three"], ["a"], name="add3"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
        helper.make_node("Mul", ["h", "c"], ["m"], name="mul_x"),
        helper.make_node("Div", ["m", "six"], ["y"], name="div6"),
    ]
    model = _model(nodes, inits)
    prepared = prepare(model).model
    assert _ops(prepared) == ["Conv", "HardSigmoid", "Mul"]
    (a,), (b,) = _run(model, _x()), _run(prepared, _x())
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


# --- the plan rule ---------------------------------------------------------------------


def test_elementwise_ops_round_only_integer_inputs():
    """After int8 convolutions: a residual Add of two of them is quantized; x ·
    HardSigmoid(x) is not (the gate is float maths, a second rounding); x · Sigmoid(x)
    is (onnxruntime's QLinearSigmoid keeps the gate integer)."""
    inits = {**_conv(), "w2": np.random.default_rng(2).normal(0, 0.5, (C, C, 1, 1))}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["h"], ["g"], name="gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h", "g"], ["s"], name="swish"),
        helper.make_node("Conv", ["s", "w2"], ["h2"], name="conv2"),
        helper.make_node("Conv", ["h", "w2"], ["h3"], name="conv3"),
        helper.make_node("Add", ["h2", "h3"], ["r"], name="residual"),
        helper.make_node("Sigmoid", ["h3"], ["sg"], name="sigmoid"),
        helper.make_node("Mul", ["h3", "sg"], ["silu"], name="silu"),
        helper.make_node("Add", ["r", "silu"], ["y"], name="sum"),
    ]
    model = prepare(_model(nodes, inits)).model
    plan = make_plan(model, QuantConfig())
    actions = {d.name: d for d in plan.decisions}
    assert not actions["swish"].action.quantized
    assert "an input from float maths" in actions["swish"].reason
    assert actions["residual"].action.quantized
    assert actions["silu"].action.quantized
    # the Sigmoid excluded reads the float tensor (no DQ, no QLinearSigmoid): its output
    # is float maths, so the SiLU product stays float
    excluded = {d.name: d for d in make_plan(model, QuantConfig(exclude=("sigmoid",))).decisions}
    assert not excluded["silu"].action.quantized
    assert "an input from float maths" in excluded["silu"].reason
