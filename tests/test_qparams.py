"""Property tests of the quantization maths (onnxq.quant)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxq.quant import QType, compute_qparams, dequantize, observed_range, quantize

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
qtypes = st.sampled_from([QType.INT8, QType.UINT8])
arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite
)


def _tol(scale: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scale / 2 of rounding, plus float32 rounding of x / S and of (q - zp) * S."""
    eps = float(np.finfo(np.float32).eps)
    return scale / 2 + 4 * eps * (np.abs(x) + scale)


@given(x=arrays, qtype=qtypes, symmetric=st.booleans(), restricted=st.booleans())
def test_round_trip_within_half_a_step_inside_the_range(x, qtype, symmetric, restricted):
    lo, hi = observed_range(x)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, restricted=restricted)
    err = np.abs(dequantize(quantize(x, qp), qp) - x)
    assert np.all(err <= _tol(qp.scale, x))


@given(lo=finite, hi=finite, qtype=qtypes, symmetric=st.booleans(), restricted=st.booleans())
def test_zero_is_exactly_representable(lo, hi, qtype, symmetric, restricted):
    lo, hi = min(lo, hi), max(lo, hi)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, restricted=restricted)
    assert dequantize(quantize(np.float32(0.0), qp), qp) == 0.0
    assert qtype.min(restricted=restricted) <= int(qp.zero_point) <= qtype.max


@given(lo=finite, hi=finite, restricted=st.booleans())
def test_symmetric_signed_has_zero_point_zero(lo, hi, restricted):
    qp = compute_qparams(
        min(lo, hi), max(lo, hi), QType.INT8, symmetric=True, restricted=restricted
    )
    assert int(qp.zero_point) == 0


@given(x=arrays, symmetric=st.booleans())
def test_restricted_int8_never_yields_minus_128(x, symmetric):
    lo, hi = observed_range(x)
    qp = compute_qparams(lo, hi, QType.INT8, symmetric=symmetric, restricted=True)
    q = quantize(x, qp)
    # values inside the clipping range never reach -128
    assert q.min() >= -127


def test_restricted_symmetric_int8_scale_is_max_over_127():
    qp = compute_qparams(-2.0, 1.0, QType.INT8, symmetric=True, restricted=True)
    assert qp.scale == pytest.approx(2.0 / 127)
    full = compute_qparams(-2.0, 1.0, QType.INT8, symmetric=True, restricted=False)
    assert full.scale == pytest.approx(4.0 / 255)  # the survey's 2 max|r| / (2^b - 1)


def test_asymmetric_uint8_maps_the_range_onto_all_codes():
    qp = compute_qparams(-1.0, 3.0, QType.UINT8, symmetric=False)
    assert qp.scale == pytest.approx(4.0 / 255)
    assert int(qp.zero_point) == 64
    assert quantize(np.array([-1.0, 3.0], np.float32), qp).tolist() == [0, 255]


@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)),
        elements=finite,
    ),
    axis=st.integers(0, 2),
    qtype=qtypes,
    symmetric=st.booleans(),
)
def test_per_channel_equals_per_tensor_slice_by_slice(x, axis, qtype, symmetric):
    lo, hi = observed_range(x, axis=axis)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, axis=axis)
    q = quantize(x, qp)
    for i in range(x.shape[axis]):
        sl = np.take(x, i, axis=axis)
        qp_i = compute_qparams(sl.min(), sl.max(), qtype, symmetric=symmetric)
        np.testing.assert_array_equal(np.take(q, i, axis=axis), quantize(sl, qp_i))
        assert qp.scale[i] == qp_i.scale and qp.zero_point[i] == qp_i.zero_point


@given(value=finite, qtype=qtypes, symmetric=st.booleans(), restricted=st.booleans())
def test_degenerate_ranges_give_a_valid_scale(value, qtype, symmetric, restricted):
    for lo, hi in ((value, value), (0.0, 0.0)):
        qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, restricted=restricted)
        assert np.isfinite(qp.scale) and qp.scale > 0
        assert qp.scale >= np.finfo(np.float32).tiny
        x = np.full(3, lo, np.float32)
        assert np.all(np.abs(dequantize(quantize(x, qp), qp) - x) <= _tol(qp.scale, x))


@settings(max_examples=50)
@given(x=arrays)
def test_quantize_matches_onnx_quantizelinear(x):
    """Our numpy quantize is bit-exact with onnxruntime's QuantizeLinear."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    lo, hi = observed_range(x)
    assume(hi > lo)
    qp = compute_qparams(lo, hi, QType.UINT8, symmetric=False)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n"])],
        [numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    flat = x.reshape(-1)
    np.testing.assert_array_equal(sess.run(None, {"x": flat})[0], quantize(flat, qp))
