"""Statistics over the real positions of a padded batch (onnxq.calibration.positions):
bias correction's means and GPTQ's second moments skip the positions attention_mask
marks as padding."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxq import QuantConfig, quantize
from onnxq.calibration.collect import FloatSession, MeansWanted
from onnxq.calibration.positions import real_positions, rows_at
from onnxq.config import CalibrationConfig
from onnxq.data import open_dataset
from onnxq.graph.model_io import input_specs
from onnxq.graph.padding import padding_mask

from helpers import NO_CHECK, corrected_pair, run

f32 = np.float32
S, C = 6, 16


def _token_model(
    mask_name: str = "attention_mask", mask_type: int = TensorProto.INT64
) -> onnx.ModelProto:
    """x [N, S, C] -> MatMul W -> Add b -> times the mask (padding zeroed, as pooling
    does) -> y; the mask an int64 [N, S] input."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (C, C)).astype(f32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, C).astype(f32), "b"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
        helper.make_node("Add", ["m", "b"], ["h"], name="bias"),
        helper.make_node("Cast", [mask_name], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "last"], ["m3"]),
        helper.make_node("Mul", ["h", "m3"], ["y"], name="pool"),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "tokens",
        [info("x", TensorProto.FLOAT, ["N", S, C]), info(mask_name, mask_type, ["N", S])],
        [info("y", TensorProto.FLOAT, ["N", S, C])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _padded(n: int = 48, seed: int = 1) -> dict[str, np.ndarray]:
    """Tokens around +1 at the real positions; padding (the tail of each row, at least one
    real token) far off, around -6: a mean over every position is not the tokens'."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 0.5, (n, S, C)).astype(f32)
    lengths = rng.integers(1, S + 1, n)
    mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    x[mask == 0] = rng.normal(-6.0, 0.5, (int((mask == 0).sum()), C)).astype(f32)
    return {"x": x, "attention_mask": mask}


@given(
    batch=st.integers(1, 4),
    positions=st.integers(1, 5),
    extra=st.sampled_from([(), (3,), (2, 3)]),
    seed=st.integers(0, 1000),
)
def test_rows_at_takes_the_rows_of_the_real_positions(batch, positions, extra, seed):
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=(batch, positions, *extra, 4)).astype(f32)
    real = rng.random((batch, positions)) < 0.6
    rows = rows_at(arr, -1, real)
    assert rows is not None and rows.shape == (int(real.sum()) * int(np.prod(extra)), 4)
    want = arr[real].reshape(-1, 4)
    np.testing.assert_array_equal(rows, want)
    if extra:  # the channels may be an axis before the last
        by_middle = rows_at(arr, 2, real)
        assert by_middle is not None
        want = np.moveaxis(arr[real], 1, -1).reshape(-1, arr.shape[2])
        np.testing.assert_array_equal(by_middle, want)
    assert rows_at(arr, 1, real) is None  # a position axis is no channel axis
    assert rows_at(arr, -1, None) is None
    assert rows_at(arr, -1, np.ones((batch, positions + 1), bool)) is None  # not its layout


def test_a_padding_mask_is_an_attention_mask_input_of_zeros_and_ones():
    assert padding_mask(_token_model()) == "attention_mask"
    assert padding_mask(_token_model("input_mask")) == "input_mask"
    assert padding_mask(_token_model("Attention_Mask", TensorProto.BOOL)) == "Attention_Mask"
    # 1 where padded, another meaning, or not a mask: never guessed at
    for name in ("key_padding_mask", "bool_masked_pos", "head_mask", "lengths"):
        assert padding_mask(_token_model(name)) is None, name
    assert padding_mask(_token_model("encoder_attention_mask")) is None
    two = _token_model()
    two.graph.input.append(
        helper.make_tensor_value_info("ATTENTION_MASK", TensorProto.INT64, ["N", S])
    )
    assert padding_mask(two) is None  # which one marks the positions: not guessed
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(real_positions({"m": mask}, "m"), mask.astype(bool))
    floats = mask.astype(f32)
    np.testing.assert_array_equal(real_positions({"m": floats}, "m"), mask.astype(bool))
    assert real_positions({"m": np.array([[1, 2, 0]])}, "m") is None  # counts, not a mask
    assert real_positions({"m": np.ones((2, 3))}, "m") is None  # nothing padded
    assert real_positions({"m": mask}, None) is None


def test_flattened_positions_before_a_gemm_take_the_real_rows():
    rng = np.random.default_rng(0)
    real = rng.random((3, 5)) < 0.5
    real[0, 0] = True
    flat = rng.normal(size=(15, 4)).astype(f32)
    np.testing.assert_array_equal(rows_at(flat, -1, real), flat[real.reshape(-1)])
    assert rows_at(flat, 0, real) is None  # the channels are the columns
    assert rows_at(flat[:3], 1, real) is None  # [batch, channels]: not by position


def test_means_and_moments_are_over_the_real_positions(tmp_path):
    """Read in their own runs, or summed by the calibration pass on the way: the same
    means, those of the tokens; GPTQ's second moments likewise."""
    feed = _padded()
    np.savez(tmp_path / "d.npz", **feed)
    model = _token_model()
    real = feed["attention_mask"].astype(bool)
    tokens = feed["x"][real].astype(np.float64)
    floats = FloatSession(model)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    own = floats.means(data, {"x": -1}, samples=48, batch_size=16)
    np.testing.assert_allclose(own["x"], tokens.mean(axis=0), rtol=1e-6)
    assert np.abs(own["x"] - feed["x"].mean(axis=(0, 1))).max() > 1.0  # not all positions
    passed = FloatSession(model)
    wanted = MeansWanted({"x": -1}, 48)
    passed.observe(data, list(passed.candidates), CalibrationConfig(batch_size=16), means=wanted)
    assert id(data) in passed._summed  # the pass summed them: means reads those
    summed = passed.means(data, {"x": -1}, samples=48, batch_size=16)
    np.testing.assert_array_equal(summed["x"], own["x"])
    moments = floats.moments(data, ["x"], batch_size=16)["x"]
    np.testing.assert_allclose(moments, tokens.T @ tokens, rtol=1e-9)


def test_bias_correction_of_a_padded_model_gives_the_tokens_their_mean_back(tmp_path):
    """Weights-only 4-bit: the corrected model's outputs at the real positions have the
    float model's mean again (the padding, zeroed at the output, does not pull it off)."""
    feed = _padded(64, seed=3)
    plain, fixed = corrected_pair(_token_model(), feed, tmp_path)
    assert fixed.corrected_biases == ("proj",)
    # the report names the mask behind the corrected weights; nothing used it without
    assert fixed.to_dict()["padding_mask"] == "attention_mask"
    assert plain.to_dict()["padding_mask"] is None
    real = feed["attention_mask"].astype(bool)
    ref = run(_token_model(), feed)[0][real]

    def shift(path: str) -> float:
        out = run(onnx.load(str(tmp_path / path)), feed)[0][real]
        return float(np.abs((out - ref).mean(axis=0)).max())

    assert shift("b.onnx") < 1e-3 < 0.1 * shift("a.onnx")
    assert fixed.fidelity is not None and plain.fidelity is not None
    assert fixed.fidelity.outputs[0].sqnr_db > plain.fidelity.outputs[0].sqnr_db + 3


def test_adaround_moments_of_a_matmul_input_are_over_the_real_positions(tmp_path):
    from onnxq.stages.adaround import _collect, _Key

    feed = _padded()
    np.savez(tmp_path / "d.npz", **feed)
    model = _token_model()
    floats = FloatSession(model)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    key = _Key("x", "x", C, None)
    got = _collect([key], data, floats.run, None, 16, 10**6, 0, floats.mask)[key]
    tokens = feed["x"][feed["attention_mask"].astype(bool)].astype(np.float64)
    assert got.rows == tokens.shape[0]
    np.testing.assert_allclose(got.gram, tokens.T @ tokens, rtol=1e-9)
    every = _collect([key], data, floats.run, None, 16, 10**6, 0, None)[key]
    assert every.rows == 48 * S  # without the mask: every position


def test_bool_and_float_masks_and_samples_that_are_all_padding(tmp_path):
    """A bool or float 0/1 mask marks the same positions as an integer one; a sample
    that is all padding adds no rows, and a batch that is all padding adds nothing."""
    feed = _padded(32, seed=5)
    feed["attention_mask"][:16] = 0  # the first batch of 16: all padding
    feed["attention_mask"][20] = 0  # one more sample with no real token
    real = feed["attention_mask"].astype(bool)
    tokens = feed["x"][real].astype(np.float64)
    for mask_type, dtype in ((TensorProto.BOOL, bool), (TensorProto.FLOAT, f32)):
        model = _token_model(mask_type=mask_type)
        typed = {"x": feed["x"], "attention_mask": feed["attention_mask"].astype(dtype)}
        np.savez(tmp_path / "d.npz", **typed)
        floats = FloatSession(model)
        assert floats.mask == "attention_mask"
        data = open_dataset(tmp_path / "d.npz", input_specs(model))
        got = floats.means(data, {"x": -1}, samples=32, batch_size=16)["x"]
        np.testing.assert_allclose(got, tokens.mean(axis=0), rtol=1e-6)


def test_a_gptq_report_names_the_mask_its_moments_skipped_padding_by(tmp_path):
    feed = _padded(32, seed=7)
    onnx.save(_token_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    cfg = QuantConfig(weights_only=True, target=NO_CHECK, gptq=True, bias_correction=False)
    report = quantize(tmp_path / "m.onnx", tmp_path / "g.onnx", cfg, data=tmp_path / "d.npz")
    assert report.corrected_biases == () and report.padding_mask == "attention_mask"
    other = _token_model("lengths")  # no padding mask: nothing to name
    onnx.save(other, str(tmp_path / "o.onnx"))
    np.savez(tmp_path / "o.npz", x=feed["x"], lengths=feed["attention_mask"])
    report = quantize(tmp_path / "o.onnx", tmp_path / "o.q.onnx", cfg, data=tmp_path / "o.npz")
    assert report.padding_mask is None
