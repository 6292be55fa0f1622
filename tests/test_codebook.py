"""Codebook weights: k-means and power-of-two levels, packed indices, and the decode
subgraph that onnxruntime folds into the float weight at load."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxq.errors import ConfigError, ModelError
from onnxq.graph.passes.codebook import CodebookUse, store_codebook_weights
from onnxq.graph.passes.result import ChangeKind
from onnxq.quant.codebook import (
    Codebook,
    LevelKind,
    decode,
    fit_codebook,
    pack_indices,
    stored_bytes,
    unpack_indices,
    words_for,
)
from onnxq.report.metrics import sqnr_db

BITS = st.integers(2, 8)
DECODE_OPS = {"Unsqueeze", "BitShift", "BitwiseAnd", "Reshape", "Slice", "Cast", "Add", "Gather"}


# ---------------------------------------------------------------- packing


@settings(max_examples=80, deadline=None)
@given(bits=BITS, count=st.integers(0, 400), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(bits, count, seed):
    indices = np.random.default_rng(seed).integers(0, 1 << bits, count).astype(np.uint8)
    words = pack_indices(indices, bits)
    per = 32 // bits
    assert words.dtype == np.uint32 and words.shape == (math.ceil(count / per),)
    assert np.array_equal(unpack_indices(words, bits, count), indices)
    # the tail of the last word and the unused top bits are zero
    assert not unpack_indices(words, bits, words.size * per)[count:].any()
    if per * bits < 32:
        assert not (words >> np.uint32(per * bits)).any()


def test_pack_layout_is_little_end_first():
    assert pack_indices(np.array([1, 2, 3], np.uint8), 4).tolist() == [0x321]
    assert pack_indices(np.array([3] * 17, np.uint8), 2).tolist() == [0xFFFFFFFF, 0x3]
    assert pack_indices(np.array([5, 1], np.uint8), 3).tolist() == [5 | 1 << 3]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="0, 4"):
        pack_indices(np.array([4], np.uint8), 2)
    with pytest.raises(ValueError, match="2..8"):
        pack_indices(np.array([0], np.uint8), 9)
    with pytest.raises(ValueError, match="hold 16"):
        unpack_indices(np.zeros(1, np.uint32), 2, 17)
    with pytest.raises(ValueError, match="2..8"):
        fit_codebook(np.ones(4, np.float32), 1, LevelKind.KMEANS)
    with pytest.raises(ValueError, match="non-finite"):
        fit_codebook(np.array([1.0, np.nan], np.float32), 4, LevelKind.LOG)


# ---------------------------------------------------------------- k-means


def _rows(w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return w.reshape(1, -1).astype(np.float64)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)


def _uniform_error(w: np.ndarray, bits: int, axis: int | None, h: np.ndarray) -> np.ndarray:
    """Σ h·(w − nearest uniform level)² per row, by brute force."""
    rows, hr = _rows(w, axis), _rows(h, axis)
    lo, hi = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    k = np.arange(1 << bits) / ((1 << bits) - 1)
    levels = (lo + (hi - lo) * k).astype(np.float32).astype(np.float64)
    dist = np.abs(rows[:, :, None] - levels[:, None, :]).min(axis=2)
    return np.sum(hr * dist**2, axis=1)


def _sample(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if kind == "normal":
        w = rng.normal(0, 0.3, shape)
    elif kind == "laplace":
        w = rng.laplace(0.1, 0.2, shape)
    elif kind == "cauchy":  # heavy tails: a few values far outside the bulk
        w = rng.standard_cauchy(shape) * 1e-2
    elif kind == "few":  # fewer distinct values than levels
        w = rng.choice([-1.5, 0.0, 0.25, 3.0], shape)
    else:  # constant rows next to a normal one
        w = np.repeat(rng.normal(0, 1, (shape[0], 1)), shape[1], axis=1)
        w[0] = rng.normal(0, 1, shape[1])
    return w.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    bits=BITS,
    seed=st.integers(0, 2**32 - 1),
    dist=st.sampled_from(["normal", "laplace", "cauchy", "few", "constant"]),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 48)),
    axis=st.sampled_from([None, 0, 1, -1]),
    weighted=st.booleans(),
)
def test_kmeans_never_worse_than_uniform(bits, seed, dist, shape, axis, weighted):
    rng = np.random.default_rng(seed)
    w = _sample(dist, rng, shape)
    h = rng.random(shape) if weighted else np.ones(shape)
    book, idx = fit_codebook(w, bits, LevelKind.KMEANS, axis=axis, weights=h if weighted else None)
    assert idx.dtype == np.uint8 and idx.shape == w.shape and book.bits == bits
    assert book.levels.shape == ((1 << bits,) if axis is None else (shape[axis], 1 << bits))
    assert np.all(np.diff(book.levels, axis=-1) >= 0)  # sorted
    w_hat = decode(book, idx)
    # every value takes its nearest level
    flat = book.levels.reshape(-1, 1 << bits).astype(np.float64)
    dist_best = np.abs(_rows(w, axis)[:, :, None] - flat[:, None, :]).min(axis=2)
    np.testing.assert_array_equal(np.abs(_rows(w, axis) - _rows(w_hat, axis)), dist_best)
    err = np.sum(_rows(h, axis) * (_rows(w, axis) - _rows(w_hat, axis)) ** 2, axis=1)
    uniform = _uniform_error(w, bits, axis, h)
    assert np.all(err <= uniform * (1 + 1e-9) + 1e-30), (err, uniform)


def test_ties_go_to_the_upper_level():
    book, idx = fit_codebook(
        np.array([0.0, 0.5, 2.5, 3.0], np.float32), 2, LevelKind.KMEANS, iters=0
    )
    assert book.levels.tolist() == [0, 1, 2, 3] and idx.tolist() == [0, 1, 3, 3]


def _sqnr_db(w: np.ndarray, w_hat: np.ndarray) -> float:
    w64 = w.astype(np.float64)
    return sqnr_db(float(np.sum(w64**2)), float(np.sum((w64 - w_hat) ** 2)))


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
@pytest.mark.parametrize("axis", [None, 0])
def test_kmeans_beats_uniform_on_bell_shaped_weights(bits, dist, axis):
    w = _sample(dist, np.random.default_rng(bits), (64, 256))
    km = decode(*fit_codebook(w, bits, LevelKind.KMEANS, axis=axis))
    uniform = decode(*fit_codebook(w, bits, LevelKind.KMEANS, axis=axis, iters=0))
    assert _sqnr_db(w, km) > _sqnr_db(w, uniform) + 0.5


def test_kmeans_importance_pulls_levels_towards_important_values():
    """0.2 and 0.3 share a level: their mean, or their importance-weighted mean."""
    w = np.array([0.0, 0.2, 0.3, 1.0], np.float32)
    plain, _ = fit_codebook(w, 2, LevelKind.KMEANS)
    book, idx = fit_codebook(w, 2, LevelKind.KMEANS, weights=np.array([1, 9, 1, 1]))
    assert plain.levels[1] == pytest.approx(0.25) and book.levels[1] == pytest.approx(0.21)
    assert decode(book, idx).tolist() == pytest.approx([0.0, 0.21, 0.21, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        fit_codebook(w, 2, LevelKind.KMEANS, weights=np.array([1, -1, 1, 1]))


# ---------------------------------------------------------------- log levels


@settings(max_examples=40, deadline=None)
@given(
    bits=BITS,
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 7.0, 1e30]),
    axis=st.sampled_from([None, 1]),
)
def test_log_levels_are_signed_powers_of_two(bits, seed, scale, axis):
    rng = np.random.default_rng(seed)
    w = (rng.laplace(0, 1, (3, 40)) * scale).astype(np.float32)
    w[0, 0] = 0.0
    book, idx = fit_codebook(w, bits, LevelKind.LOG, axis=axis)
    w_hat = decode(book, idx)
    nonzero = w_hat[w_hat != 0]
    mantissa, _ = np.frexp(np.abs(nonzero))
    assert np.all(mantissa == 0.5)  # ±2^k
    assert np.all(np.sign(nonzero) == np.sign(w[w_hat != 0]))
    assert w_hat[0, 0] == 0
    rows = book.levels.reshape(-1, 1 << bits)
    # ±2^e … ±2^(e−M+2) and two zeros, e = round(log2 max|w|); 2^k under 2^-149 is 0
    e = np.rint(np.log2(np.abs(_rows(w, axis)).max(axis=1)))[:, None]
    mags = np.exp2(e - np.arange((1 << (bits - 1)) - 1)).astype(np.float32)
    zeros = np.zeros((rows.shape[0], 2), np.float32)
    np.testing.assert_array_equal(rows, np.sort(np.concatenate([-mags, zeros, mags], 1), 1))
    nearest = np.abs(_rows(w, axis)[:, :, None] - rows[:, None, :]).min(axis=2)
    np.testing.assert_array_equal(np.abs(_rows(w, axis) - _rows(w_hat, axis)), nearest)


def test_log_degenerate_rows():
    w = np.array([[0.0, 0.0, 0.0], [3e38, -1.0, 2.0]], np.float32)
    book, idx = fit_codebook(w, 3, LevelKind.LOG, axis=0)
    w_hat = decode(book, idx)
    assert np.all(np.isfinite(book.levels)) and not w_hat[0].any()
    assert w_hat[1, 0] == 2.0**127  # e clipped to float32's largest power of two


def test_codebook_validates_its_levels():
    with pytest.raises(ValueError, match="do not fit"):
        Codebook(np.zeros(8, np.float32), 4, None)
    with pytest.raises(ValueError, match="float32"):
        Codebook(np.zeros(4, np.float64), 2, None)
    book = Codebook(np.arange(8, dtype=np.float32).reshape(2, 4), 2, 0)
    assert decode(book, np.array([[3, 0], [1, 2]])).tolist() == [[3, 0], [5, 6]]
    with pytest.raises(ValueError, match="0, 4"):
        decode(book, np.array([[4, 0], [0, 0]]))


# ---------------------------------------------------------------- graph


def _conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], "conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _matmul_model(second_reader: str | None = None, opset: int = 21) -> onnx.ModelProto:
    """x @ w (w [16, 10]); ``second_reader`` adds a second MatMul of the same weight."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.laplace(0, 0.2, (16, 10)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], "mm")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 10])]
    if second_reader is not None:
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["z"], second_reader))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 10]))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        outputs,
        [w],
    )
    ir = 10 if opset >= 21 else 8
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def _session(model: onnx.ModelProto, level, optimized: str | None = None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    if optimized is not None:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _with_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
    return out


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


CASES = [
    ("conv", "conv", 1, 4, LevelKind.KMEANS, 0),
    ("conv", "conv", 1, 3, LevelKind.LOG, None),
    ("matmul", "mm", 1, 3, LevelKind.KMEANS, 1),
    ("matmul", "mm", 1, 5, LevelKind.LOG, -1),
    ("matmul", "mm", 1, 8, LevelKind.KMEANS, None),
]


@pytest.mark.parametrize(("model_kind", "node", "slot", "bits", "kind", "axis"), CASES)
def test_decoded_model_matches_float_model_with_decoded_weight(
    tmp_path, model_kind, node, slot, bits, kind, axis
):
    model = _conv_model() if model_kind == "conv" else _matmul_model()
    before = model.SerializeToString()
    result = store_codebook_weights(model, [CodebookUse(node, slot, "w", bits, kind, axis)])
    assert model.SerializeToString() == before  # the input is not touched
    out = result.model
    onnx.checker.check_model(out, full_check=True)

    # structure: the node reads the decoder's Gather, the float weight is gone
    assert result.changed and result.names(ChangeKind.WEIGHT_CODEBOOK) == ("w",)
    assert f"{kind.value} {bits}-bit" in result.changes[0].detail
    producer = {o: n for n in out.graph.node for o in n.output}
    reader = next(n for n in out.graph.node if n.name == node)
    assert producer[reader.input[slot]].op_type == "Gather"
    inits = _inits(out)
    assert "w" not in inits
    w = _inits(model)["w"]
    book, indices = fit_codebook(w, bits, kind, axis=axis)
    first = {n.op_type: n for n in reversed(out.graph.node)}
    words, levels = inits[first["Unsqueeze"].input[0]], inits[first["Gather"].input[0]]
    assert np.array_equal(words, pack_indices(indices, bits))
    assert np.array_equal(levels, book.levels.reshape(-1))

    # bytes: bits/8 per value (rounded up to whole words) plus the levels
    assert words.nbytes + levels.nbytes == stored_bytes(book, w.size)
    assert words.nbytes == 4 * words_for(w.size, bits) <= w.size * bits / 8 * 1.15 + 4

    # numbers: the decoder rebuilds the numpy-decoded weight exactly, without folding
    w_hat = decode(book, indices)
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    probe.graph.output.append(helper.make_tensor_value_info(reader.input[slot], 1, w.shape))
    plain = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(2).normal(0, 1, _input_shape(model)).astype(np.float32)
    got = _session(probe, plain).run(None, {"x": x})
    np.testing.assert_array_equal(got[-1], w_hat)
    reference = _with_weight(model, "w", w_hat)
    for level in (plain, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        (want,) = _session(reference, level).run(None, {"x": x})
        (y,) = _session(out, level).run(None, {"x": x})
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())

    # onnxruntime folds the whole decoder at load
    path = str(tmp_path / "optimized.onnx")
    _session(out, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized=path)
    left = {n.op_type for n in onnx.load(path).graph.node}
    assert not left & DECODE_OPS, left


def _input_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def test_weight_read_twice_is_encoded_once():
    model = _matmul_model(second_reader="mm2")
    uses = [CodebookUse(n, 1, "w", 4, LevelKind.KMEANS, 1) for n in ("mm", "mm2")]
    result = store_codebook_weights(model, uses)
    assert result.count(ChangeKind.WEIGHT_CODEBOOK) == 1
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Gather") == 1 and ops.count("BitShift") == 1
    mm, mm2 = (n for n in result.model.graph.node if n.op_type == "MatMul")
    assert mm.input[1] == mm2.input[1] != "w" and "w" not in _inits(result.model)
    onnx.checker.check_model(result.model, full_check=True)


def test_weight_still_read_elsewhere_is_kept():
    model = _matmul_model(second_reader="mm2")
    result = store_codebook_weights(model, [CodebookUse("mm", 1, "w", 4, LevelKind.LOG)])
    assert "w" in _inits(result.model)
    mm2 = next(n for n in result.model.graph.node if n.name == "mm2")
    assert mm2.input[1] == "w"
    x = np.ones((4, 16), np.float32)
    y, z = _session(result.model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x})
    np.testing.assert_allclose(z, x @ _inits(model)["w"], rtol=1e-5)
    assert not np.allclose(y, z, rtol=1e-3)  # the other reader got the 4-bit weight


def test_refuses_what_it_cannot_decode():
    with pytest.raises(ModelError, match="opset 18.*opset 17"):
        store_codebook_weights(
            _matmul_model(opset=17), [CodebookUse("mm", 1, "w", 4, LevelKind.LOG)]
        )
    model = _matmul_model()
    with pytest.raises(ModelError, match="'nope'"):
        store_codebook_weights(model, [CodebookUse("nope", 1, "w", 4, LevelKind.LOG)])
    with pytest.raises(ModelError, match="input 0 of node 'mm' is not 'w'"):
        store_codebook_weights(model, [CodebookUse("mm", 0, "w", 4, LevelKind.LOG)])
    with pytest.raises(ModelError, match="axis 2"):
        store_codebook_weights(model, [CodebookUse("mm", 1, "w", 4, LevelKind.LOG, 2)])
    twice = [CodebookUse("mm", 1, "w", b, LevelKind.LOG) for b in (3, 4)]
    with pytest.raises(ConfigError, match="two codebook settings"):
        store_codebook_weights(model, twice)
    with pytest.raises(ConfigError, match="2..8"):
        CodebookUse("mm", 1, "w", 9, LevelKind.LOG)
    assert not store_codebook_weights(model, []).changed
