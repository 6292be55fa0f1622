"""Stochastic rounding and AdaRound (onnxq.quant.rounding), and the Conv helpers that
feed AdaRound: weights as matrices, qparams of those matrices and im2col moments."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxq.quant import QParams, QType, compute_qparams, dequantize, quantize
from onnxq.quant.rounding import (
    DenseMoments,
    PatchMoments,
    adaround_quantize,
    conv_as_matrix,
    matrix_as_conv,
    matrix_qparams,
    stochastic_quantize,
)

# --- helpers ----------------------------------------------------------------------------


def _full(values: np.ndarray, shape: tuple[int, ...], qp: QParams) -> np.ndarray:
    """Scale or zero point expanded to ``shape`` (written out here, not the module's)."""
    values = np.asarray(values)
    if qp.axis is None:
        return np.full(shape, values.item())
    if qp.block_size is None:
        out = [1] * len(shape)
        out[qp.axis] = -1
        return np.broadcast_to(values.reshape(out), shape)
    rep = np.repeat(values, qp.block_size, axis=qp.axis)
    return np.take(rep, np.arange(shape[qp.axis]), axis=qp.axis)


def _floor_codes(w: np.ndarray, qp: QParams) -> np.ndarray:
    """``floor(w / S) + zp`` with ``w / S`` in float32, as QuantizeLinear."""
    scale = _full(qp.scale, w.shape, qp).astype(np.float32)
    return np.floor(w.astype(np.float32) / scale) + _full(qp.zero_point, w.shape, qp)


def _assert_floor_or_ceil(codes: np.ndarray, w: np.ndarray, qp: QParams) -> None:
    lo, hi = qp.qtype.min(restricted=qp.restricted), qp.qtype.max
    low = _floor_codes(w, qp)
    down, up = np.clip(low, lo, hi), np.clip(low + 1, lo, hi)
    assert codes.dtype == qp.qtype.dtype
    assert np.all((codes == down) | (codes == up))


def _layouts(w: np.ndarray, qtype: QType, symmetric: bool, restricted: bool) -> list[QParams]:
    """Per-tensor, per-column (axis 1) and blocked (axis 0, a partial last block) qparams."""
    k = w.shape[0]
    b = 5 if k % 5 else 7
    parts = [w[i : i + b] for i in range(0, k, b)]
    lo_b = np.stack([p.min(axis=0) for p in parts])
    hi_b = np.stack([p.max(axis=0) for p in parts])
    kw = {"symmetric": symmetric, "restricted": restricted}
    return [
        compute_qparams(w.min(), w.max(), qtype, **kw),
        compute_qparams(w.min(axis=0), w.max(axis=0), qtype, axis=1, **kw),
        compute_qparams(lo_b, hi_b, qtype, axis=0, block_size=b, **kw),
    ]


# --- stochastic rounding ----------------------------------------------------------------

DRAWS = 4000


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    qtype=st.sampled_from([QType.INT8, QType.UINT8, QType.INT4]),
    restricted=st.booleans(),
    layout=st.sampled_from(["tensor", "channel", "block"]),
    scale=st.floats(1e-3, 1e3),
)
def test_stochastic_mean_converges_to_the_real_code(seed, qtype, restricted, layout, scale):
    rng = np.random.default_rng(seed)
    lo, hi = qtype.min(restricted=restricted), qtype.max
    c, n = 3, 4
    scales = (scale * rng.uniform(0.5, 2.0, (c, 2))).astype(np.float32)
    zps = rng.integers(lo, hi + 1, (c, 2)).astype(qtype.dtype)
    target = rng.uniform(lo, hi, (c, n))  # real codes w / S + zp inside the range
    if layout == "tensor":
        qp = QParams(scales[0, 0], zps[0, 0], qtype, restricted=restricted)
    elif layout == "channel":
        qp = QParams(scales[:, 0], zps[:, 0], qtype, axis=0, restricted=restricted)
    else:
        qp = QParams(scales, zps, qtype, axis=1, block_size=3, restricted=restricted)
    s_full, zp_full = _full(qp.scale, (c, n), qp), _full(qp.zero_point, (c, n), qp)
    w = ((target - zp_full) * s_full).astype(np.float32)
    if layout == "block":  # tile along axis 0, the blocks' scale with it
        tiled = replace(qp, scale=np.tile(scales, (DRAWS, 1)), zero_point=np.tile(zps, (DRAWS, 1)))
        codes = stochastic_quantize(np.tile(w, (DRAWS, 1)), tiled, rng)
        mean = codes.astype(np.float64).reshape(DRAWS, c, n).mean(axis=0)
    else:  # tile along axis 1; per-tensor and axis-0 qparams still fit
        codes = stochastic_quantize(np.tile(w, (1, DRAWS)), qp, rng)
        mean = codes.astype(np.float64).reshape(c, DRAWS, n).mean(axis=1)
    real = w.astype(np.float64) / s_full + zp_full
    frac = real - np.floor(real)
    bound = 6 * np.sqrt(frac * (1 - frac) / DRAWS) + 1e-5 * (1 + np.abs(real))
    assert np.all(np.abs(mean - real) <= bound)


def test_stochastic_is_deterministic_per_seed_and_varies_across_seeds():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 16)).astype(np.float32)
    for qp in _layouts(w, QType.INT8, symmetric=False, restricted=False):
        a = stochastic_quantize(w, qp, np.random.default_rng(7))
        b = stochastic_quantize(w, qp, np.random.default_rng(7))
        c = stochastic_quantize(w, qp, np.random.default_rng(8))
        assert a.tobytes() == b.tobytes()
        assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("qtype", "symmetric", "restricted"),
    [(QType.INT8, True, True), (QType.UINT8, False, False), (QType.INT4, True, False)],
)
def test_stochastic_codes_are_floor_or_ceil_and_saturate(qtype, symmetric, restricted):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (23, 6)).astype(np.float32)
    for qp in _layouts(w, qtype, symmetric, restricted):
        tight = replace(qp, scale=(qp.scale * 0.5).astype(np.float32))  # a quarter saturates
        for params in (qp, tight):
            codes = stochastic_quantize(w, params, rng)
            _assert_floor_or_ceil(codes, w, params)
            assert np.all(np.abs(codes.astype(int) - quantize(w, params).astype(int)) <= 1)


def test_stochastic_keeps_exact_codes_in_every_layout():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (23, 6)).astype(np.float32)
    for qp in _layouts(w, QType.INT8, symmetric=False, restricted=False):
        exact = dequantize(quantize(w, qp), qp)  # on the grid: w / S is an integer
        assert np.array_equal(stochastic_quantize(exact, qp, rng), quantize(exact, qp))


# --- AdaRound ---------------------------------------------------------------------------


def _problem(seed: int, k: int, n: int = 16, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Correlated inputs [rows, K] and a weight [K, N]."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(0, 1, (k, k)) / np.sqrt(k) + np.eye(k)
    x = rng.normal(0, 1, (rows, k)) @ mix
    return x, rng.normal(0, 0.1, (k, n)).astype(np.float32)


def _grid(qp: QParams, bits: int) -> QParams:
    """``qp`` (symmetric, 8-bit container) coarsened to a ``bits``-bit grid."""
    factor = (2 * qp.qtype.max + 1) / (2**bits - 1)
    return replace(qp, scale=(qp.scale * factor).astype(np.float32))


def _qparams_cases(w: np.ndarray) -> list[tuple[int, QParams]]:
    cases = []
    for qp in _layouts(w, QType.INT8, symmetric=True, restricted=False):
        cases += [(2, _grid(qp, 2)), (3, _grid(qp, 3))]
    cases += [(4, qp) for qp in _layouts(w, QType.INT4, symmetric=True, restricted=False)]
    cases += [(4, qp) for qp in _layouts(w, QType.INT4, symmetric=True, restricted=True)]
    cases += [(8, qp) for qp in _layouts(w, QType.UINT8, symmetric=False, restricted=False)]
    return cases


def _output_error(x_f: np.ndarray, x_q: np.ndarray, w: np.ndarray, codes, qp) -> float:
    return float(np.sum((x_f @ w - x_q @ dequantize(codes, qp).astype(np.float64)) ** 2))


@pytest.mark.parametrize(("seed", "k"), [(0, 32), (1, 48), (2, 64)])
def test_adaround_never_loses_to_nearest_and_usually_wins(seed, k):
    x, w = _problem(seed, k)
    gram = x.T @ x
    for bits, qp in _qparams_cases(w):
        codes = adaround_quantize(w, qp, gram, iters=300)
        _assert_floor_or_ceil(codes, w, qp)
        ada = _output_error(x, x, w, codes, qp)
        near = _output_error(x, x, w, quantize(w, qp), qp)
        assert ada <= near * (1 + 1e-9)
        if bits in (3, 4):
            assert ada < 0.85 * near, (bits, qp.axis, qp.block_size)


def test_adaround_respects_saturation():
    x, w = _problem(3, 40)
    a = np.abs(w).max(axis=0) * 0.4  # most of the tails saturate
    qp = compute_qparams(-a, a, QType.INT4, symmetric=True, restricted=True, axis=1)
    codes = adaround_quantize(w, qp, x.T @ x, iters=300)
    _assert_floor_or_ceil(codes, w, qp)
    low = _floor_codes(w, qp)
    assert np.array_equal(codes[low >= 7], np.full(np.sum(low >= 7), 7))
    assert np.array_equal(codes[low + 1 <= -7], np.full(np.sum(low + 1 <= -7), -7))
    near = _output_error(x, x, w, quantize(w, qp), qp)
    assert _output_error(x, x, w, codes, qp) < near


def test_adaround_uses_the_cross_moment():
    x_f, w = _problem(4, 48)
    rng = np.random.default_rng(5)
    x_q = x_f * rng.uniform(0.8, 1.0, 48) + rng.normal(0, 0.1, x_f.shape)  # upstream error
    a = np.abs(w).max(axis=0)
    qp = compute_qparams(-a, a, QType.INT4, symmetric=True, axis=1)
    with_cross = adaround_quantize(w, qp, x_q.T @ x_q, x_q.T @ x_f, iters=300)
    without = adaround_quantize(w, qp, x_q.T @ x_q, iters=300)
    _assert_floor_or_ceil(with_cross, w, qp)
    near = _output_error(x_f, x_q, w, quantize(w, qp), qp)
    err_cross = _output_error(x_f, x_q, w, with_cross, qp)
    assert err_cross < 0.8 * _output_error(x_f, x_q, w, without, qp)
    assert err_cross < 0.8 * near


def test_adaround_without_iterations_or_signal_is_nearest():
    x, w = _problem(6, 32)
    for _, qp in _qparams_cases(w):
        scale = _full(qp.scale, w.shape, qp).astype(np.float32)
        untied = (w / scale) % 1 != 0.5  # symmetric grids put -amax on a tie
        near = quantize(w, qp)
        for codes in (
            adaround_quantize(w, qp, x.T @ x, iters=0),
            adaround_quantize(w, qp, np.zeros((32, 32)), iters=50),
        ):
            _assert_floor_or_ceil(codes, w, qp)
            assert np.array_equal(codes[untied], near[untied])


def test_adaround_falls_back_to_nearest_when_it_does_worse():
    x, w = _problem(9, 32)
    for _, qp in _qparams_cases(w):  # one huge Adam step flips every code the same way
        codes = adaround_quantize(w, qp, x.T @ x, iters=1, lr=10.0, warmup=1.0)
        assert np.array_equal(codes, quantize(w, qp))


def test_adaround_does_not_depend_on_the_scale_of_inputs_or_weights():
    x, w = _problem(10, 32)
    gram = x.T @ x
    rng = np.random.default_rng(11)
    x_q = x + rng.normal(0, 0.3, x.shape)
    cross = x_q.T @ x
    a = np.abs(w).max(axis=0)
    qp = compute_qparams(-a, a, QType.INT4, symmetric=True, axis=1)
    big = replace(qp, scale=(qp.scale * 2.0**-9).astype(np.float32))
    for c in (None, cross):  # powers of two: every product is scaled exactly
        codes = adaround_quantize(w, qp, gram, c, iters=100)
        scaled = None if c is None else c * 2.0**20
        same = adaround_quantize(w * np.float32(2.0**-9), big, gram * 2.0**20, scaled, iters=100)
        assert np.array_equal(codes, same)


def test_adaround_rejects_bad_shapes():
    x, w = _problem(7, 8, n=4)
    qp = compute_qparams(w.min(), w.max(), QType.INT8, symmetric=True)
    with pytest.raises(ValueError, match="gram must be"):
        adaround_quantize(w, qp, np.eye(9))
    with pytest.raises(ValueError, match="cross must be"):
        adaround_quantize(w, qp, np.eye(8), np.eye(7))
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        adaround_quantize(w[None], qp, np.eye(8))
    with pytest.raises(ValueError, match="non-finite"):
        adaround_quantize(np.full_like(w, np.nan), qp, np.eye(8))
    with pytest.raises(ValueError, match="per-axis qparams"):
        adaround_quantize(w, replace(qp, scale=np.ones(3, np.float32), axis=1), np.eye(8))


# --- Conv weights as matrices -----------------------------------------------------------

CONVS = [  # weight shape, group
    ((8, 3, 3, 3), 1),
    ((6, 2, 3, 2), 2),
    ((12, 1, 3, 3), 4),  # depthwise, channel multiplier 3
    ((6, 2, 5), 3),  # 1-D
]


@pytest.mark.parametrize(("shape", "group"), CONVS)
def test_conv_matrix_round_trip(shape, group):
    w = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    mats = conv_as_matrix(w, group)
    per, k = shape[0] // group, int(np.prod(shape[1:]))
    assert len(mats) == group and all(m.shape == (k, per) for m in mats)
    assert mats[-1][0, 0] == w[(group - 1) * per].reshape(-1)[0]
    assert np.array_equal(matrix_as_conv(mats, shape), w)


@pytest.mark.parametrize(("shape", "group"), CONVS)
def test_matrix_qparams_quantize_like_the_conv_weight(shape, group):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, shape).astype(np.float32)
    per_channel = np.moveaxis(w, 0, -1).reshape(-1, shape[0])
    layouts = [
        compute_qparams(w.min(), w.max(), QType.INT8, symmetric=False),
        compute_qparams(
            per_channel.min(axis=0), per_channel.max(axis=0), QType.INT4, symmetric=True, axis=0
        ),
    ]
    for qp in layouts:
        mats = conv_as_matrix(w, group)
        codes = [quantize(m, matrix_qparams(qp, shape, i, group)) for i, m in enumerate(mats)]
        assert np.array_equal(matrix_as_conv(codes, shape), quantize(w, qp))


def test_matrix_qparams_blocked_only_for_one_by_one_kernels():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (6, 5, 1, 1)).astype(np.float32)  # 2 groups, Cin/g = 5
    a = np.abs(w).reshape(6, 5)
    amax = np.stack([a[:, :4].max(axis=1), a[:, 4:].max(axis=1)], axis=1)[..., None, None]
    qp = compute_qparams(-amax, amax, QType.INT4, symmetric=True, axis=1, block_size=4)
    codes = [
        quantize(m, matrix_qparams(qp, w.shape, i, 2)) for i, m in enumerate(conv_as_matrix(w, 2))
    ]
    assert np.array_equal(matrix_as_conv(codes, w.shape), quantize(w, qp))
    w3 = rng.normal(0, 1, (6, 5, 3, 3)).astype(np.float32)
    ones = np.ones((6, 2, 3, 3), np.float32)
    qp3 = replace(qp, scale=ones, zero_point=np.zeros((6, 2, 3, 3), np.int8))
    with pytest.raises(ValueError, match="not supported"):
        matrix_qparams(qp3, w3.shape, 0, 2)
    with pytest.raises(ValueError, match="no matrix form"):
        matrix_qparams(replace(qp, block_size=None, scale=np.ones(5)), w.shape, 0, 2)


# --- im2col moments ---------------------------------------------------------------------


def _naive_patches(x, kernel, strides, pads, dilations, group) -> np.ndarray:
    """[g, rows, K] patches by explicit loops over positions (zero outside the input)."""
    d = len(kernel)
    n, c = x.shape[:2]
    cg = c // group
    out = [
        (x.shape[2 + i] + pads[i] + pads[d + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i]
        + 1
        for i in range(d)
    ]
    rows = []
    for b in range(n):
        for pos in itertools.product(*(range(o) for o in out)):
            row = np.zeros((group, cg, *kernel))
            for g, ch, *offs in itertools.product(range(group), range(cg), *map(range, kernel)):
                idx = [pos[i] * strides[i] - pads[i] + offs[i] * dilations[i] for i in range(d)]
                if all(0 <= j < x.shape[2 + i] for i, j in enumerate(idx)):
                    row[(g, ch, *offs)] = x[(b, g * cg + ch, *idx)]
            rows.append(row.reshape(group, -1))
    return np.stack(rows, axis=1)


@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "pads", "dilations", "group"),
    [
        ((2, 4, 7, 6), (3, 2), (2, 2), (1, 0, 2, 1), (2, 2), 2),
        ((1, 3, 9), (3,), (2,), (2, 1), (2,), 3),
    ],
)
def test_patch_moments_equal_a_naive_im2col(shape, kernel, strides, pads, dilations, group):
    rng = np.random.default_rng(3)
    x_q, x_f = rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    moments = PatchMoments(shape[1], kernel, strides, pads, dilations, group)
    moments.update(x_q.astype(np.float32), x_f.astype(np.float32))
    p_q = _naive_patches(x_q.astype(np.float32), kernel, strides, pads, dilations, group)
    p_f = _naive_patches(x_f.astype(np.float32), kernel, strides, pads, dilations, group)
    assert moments.rows == p_q.shape[1]
    np.testing.assert_allclose(moments.gram, p_q.transpose(0, 2, 1) @ p_q, rtol=1e-10)
    np.testing.assert_allclose(moments.cross, p_q.transpose(0, 2, 1) @ p_f, rtol=1e-10)


def _conv(x, w, strides, pads, dilations, group) -> np.ndarray:
    """Direct 2-D grouped convolution [N, g, Cout/g, OH, OW], one kernel offset at a time."""
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    xg = xp.reshape(n, group, cg, *xp.shape[2:])
    wg = w.reshape(group, cout // group, cg, kh, kw)
    y = np.zeros((n, group, cout // group, oh, ow))
    for i, j in itertools.product(range(kh), range(kw)):
        r0, c0 = i * dilations[0], j * dilations[1]
        rows = slice(r0, r0 + strides[0] * (oh - 1) + 1, strides[0])
        cols = slice(c0, c0 + strides[1] * (ow - 1) + 1, strides[1])
        y += np.einsum("ngchw,goc->ngohw", xg[:, :, :, rows, cols], wg[:, :, :, i, j])
    return y


CONV_CASES = [  # input shape, weight shape, strides, pads, dilations, group
    ((3, 4, 9, 8), (6, 2, 3, 3), (2, 1), (1, 1, 0, 2), (1, 2), 2),
    ((2, 4, 8, 8), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4),  # depthwise
]


@pytest.mark.parametrize(("xs", "ws", "strides", "pads", "dilations", "group"), CONV_CASES)
def test_patch_moments_give_the_conv_output_energy(xs, ws, strides, pads, dilations, group):
    rng = np.random.default_rng(4)
    x_q, x_f, w = rng.normal(0, 1, xs), rng.normal(0, 1, xs), rng.normal(0, 1, ws)
    moments = PatchMoments(xs[1], ws[2:], strides, pads, dilations, group)
    moments.update(x_q, x_f)
    y_q = _conv(x_q, w, strides, pads, dilations, group)
    y_f = _conv(x_f, w, strides, pads, dilations, group)
    for i, m in enumerate(conv_as_matrix(w, group)):
        energy = np.sum(y_q[:, i] ** 2)
        np.testing.assert_allclose(np.trace(m.T @ moments.gram[i] @ m), energy, rtol=1e-10)
        inner = np.sum(y_q[:, i] * y_f[:, i])
        np.testing.assert_allclose(np.trace(m.T @ moments.cross[i] @ m), inner, rtol=1e-10)


def test_reference_conv_matches_onnxruntime():
    xs, ws, strides, pads, dilations, group = CONV_CASES[0]
    rng = np.random.default_rng(5)
    x, w = rng.normal(0, 1, xs).astype(np.float32), rng.normal(0, 1, ws).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], strides=strides, pads=pads, dilations=dilations, group=group
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    ref = _conv(x.astype(np.float64), w.astype(np.float64), strides, pads, dilations, group)
    np.testing.assert_allclose(y, ref.reshape(y.shape), rtol=1e-4, atol=1e-4)


def test_moments_merge_like_one_pass():
    rng = np.random.default_rng(6)
    x_q, x_f = rng.normal(0, 1, (4, 4, 6, 6)), rng.normal(0, 1, (4, 4, 6, 6))
    one = PatchMoments(4, (3, 3), pads=(1, 1, 1, 1), group=2)
    one.update(x_q, x_f)
    left = PatchMoments(4, (3, 3), pads=(1, 1, 1, 1), group=2)
    right = PatchMoments(4, (3, 3), pads=(1, 1, 1, 1), group=2)
    left.update(x_q[:1], x_f[:1])
    right.update(x_q[1:], x_f[1:])
    left.merge(right)
    assert left.rows == one.rows == 4 * 36
    np.testing.assert_allclose(left.gram, one.gram, rtol=1e-12)
    np.testing.assert_allclose(left.cross, one.cross, rtol=1e-12)
    with pytest.raises(ValueError, match="cannot merge"):
        left.merge(PatchMoments(4, (3, 3), group=2))

    dense, a, b = DenseMoments(5), DenseMoments(5), DenseMoments(5)
    z = rng.normal(0, 1, (3, 7, 5))
    dense.update(z)
    a.update(z[:2])
    b.update(z[2:])
    a.merge(b)
    rows = z.reshape(-1, 5)
    np.testing.assert_allclose(dense.gram, rows.T @ rows, rtol=1e-12)
    np.testing.assert_allclose(dense.cross, dense.gram)
    np.testing.assert_allclose(a.gram, dense.gram, rtol=1e-12)
    assert a.rows == dense.rows == 21


def test_moments_subsample_at_most_max_rows_reproducibly():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (2, 3, 10, 10))
    runs = []
    for _ in range(2):
        m = PatchMoments(3, (3, 3), pads=(1,) * 4, max_rows=50, seed=3)
        m.update(x)
        m.update(x)
        runs.append(m)
    assert runs[0].rows == 100
    assert np.array_equal(runs[0].gram, runs[1].gram)
    full = PatchMoments(3, (3, 3), pads=(1,) * 4)
    full.update(x)
    ratio = np.trace(runs[0].gram[0]) / runs[0].rows / (np.trace(full.gram[0]) / full.rows)
    assert 0.6 < ratio < 1.6  # a mean over 100 of 200 rows
    wide = PatchMoments(3, (3, 3), pads=(1,) * 4, max_rows=10_000)
    wide.update(x)
    assert np.array_equal(wide.gram, full.gram)
    dense = DenseMoments(3, max_rows=4, seed=1)
    dense.update(rng.normal(0, 1, (10, 3)), rng.normal(0, 1, (10, 3)))
    assert dense.rows == 4


def test_adaround_on_a_depthwise_conv_beats_nearest():
    xs, ws, strides, pads, dilations, group = CONV_CASES[1]
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (16, *xs[1:]))
    x = x + np.roll(x, 1, axis=3)  # neighbouring pixels correlate
    w = rng.normal(0, 0.2, ws).astype(np.float32)
    amax = np.abs(w).reshape(ws[0], -1).max(axis=1)
    qp = compute_qparams(-amax, amax, QType.INT4, symmetric=True, axis=0)
    moments = PatchMoments(xs[1], ws[2:], strides, pads, dilations, group)
    moments.update(x)
    mats = conv_as_matrix(w, group)
    codes = [
        adaround_quantize(m, matrix_qparams(qp, ws, i, group), moments.gram[i], iters=300)
        for i, m in enumerate(mats)
    ]
    conv_codes = matrix_as_conv(codes, ws)
    y = _conv(x, w.astype(np.float64), strides, pads, dilations, group)

    def error(q: np.ndarray) -> float:
        w_hat = dequantize(q, qp).astype(np.float64)
        return float(np.sum((_conv(x, w_hat, strides, pads, dilations, group) - y) ** 2))

    assert error(conv_codes) < 0.9 * error(quantize(w, qp))
