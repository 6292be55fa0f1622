"""Calibration: streaming observers, batch-size and order independence, ranges files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxq import (
    ActivationSpec,
    CalibrationConfig,
    Granularity,
    OptimizeFor,
    QuantConfig,
    Scheme,
    calibrate,
    quantize,
    read_ranges,
)
from onnxq.calibration.observers import MinMaxObserver
from onnxq.errors import RangesError

import models
from helpers import NO_CHECK, count_float_runs

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"

values = hnp.arrays(
    np.float32,
    st.tuples(st.integers(2, 12), st.integers(1, 4), st.integers(1, 3)),
    elements=st.floats(-100, 100, width=32),
)


@given(x=values, cut=st.integers(1, 11), axis=st.sampled_from([None, 1]))
def test_merging_shards_equals_one_pass(x, cut, axis):
    cut = min(cut, x.shape[0] - 1)
    whole = MinMaxObserver(axis)
    whole.update(x)
    a, b = MinMaxObserver(axis), MinMaxObserver(axis)
    a.update(x[:cut])
    b.update(x[cut:])
    a.merge(b)
    ra, rw = a.result(), whole.result()
    np.testing.assert_array_equal(ra.min, rw.min)
    np.testing.assert_array_equal(ra.max, rw.max)
    assert ra.axis == rw.axis


def _ranges_doc(model, data, tmp_path, name, **kw):
    ranges = calibrate(model, data, CalibrationConfig(**kw))
    path = tmp_path / name
    path.write_text(ranges.to_json())
    return json.loads(path.read_text())["tensors"]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_batch_size_and_order_do_not_change_ranges(cnn_files, granularity, tmp_path):
    x = np.load(cnn_files["data"])["input"]
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, input=x[np.random.default_rng(3).permutation(len(x))])
    g = Granularity(granularity)
    one = _ranges_doc(
        cnn_files["model"], cnn_files["data"], tmp_path, "a.json", batch_size=1, granularity=g
    )
    sixteen = _ranges_doc(
        cnn_files["model"], cnn_files["data"], tmp_path, "b.json", batch_size=16, granularity=g
    )
    other = _ranges_doc(
        cnn_files["model"], shuffled, tmp_path, "c.json", batch_size=7, granularity=g
    )
    assert one == sixteen == other
    assert len(one) >= 8
    if granularity == "channel":
        assert one["c1"]["axis"] == 1 and len(one["c1"]["min"]) == 8


def test_folder_of_files_equals_one_file(cnn_files, tmp_path):
    x = np.load(cnn_files["data"])["input"]
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(4):
        np.savez(folder / f"part{i}.npz", input=x[i * 16 : (i + 1) * 16])
    whole = _ranges_doc(cnn_files["model"], cnn_files["data"], tmp_path, "a.json")
    sharded = _ranges_doc(cnn_files["model"], folder, tmp_path, "b.json")
    assert whole == sharded


def test_ranges_are_the_true_min_and_max(cnn_files):
    import onnxruntime as ort

    from onnxq.graph.outputs import with_outputs

    ranges = calibrate(cnn_files["model"], cnn_files["data"])
    model = with_outputs(onnx.load(str(cnn_files["model"])), ["c1", "sum"])
    x = np.load(cnn_files["data"])["input"]
    c1, s = ort.InferenceSession(model.SerializeToString()).run(["c1", "sum"], {"input": x})
    assert (
        float(ranges.tensors["c1"].min) == c1.min() and float(ranges.tensors["c1"].max) == c1.max()
    )
    assert float(ranges.tensors["sum"].max) == s.max()


def test_rearranged_copies_take_their_source_statistics_without_a_fetch(tmp_path, monkeypatch):
    """The Transpose of k holds k's values: its per-tensor range is k's (the true min and
    max of kt), and calibration never fetches kt; per channel it is observed itself."""
    import onnxruntime as ort

    from onnxq.graph.outputs import with_outputs

    model, data = models.tiny_encoder()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **data)
    fetched: set[str] = set()
    _spy_fetches(monkeypatch, fetched)
    ranges = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz").tensors
    assert "k" in fetched and "kt" not in fetched
    kt = ort.InferenceSession(with_outputs(model, ["kt"]).SerializeToString()).run(["kt"], data)[0]
    assert (float(ranges["kt"].min), float(ranges["kt"].max)) == (kt.min(), kt.max())
    assert ranges["kt"].quality == ranges["k"].quality
    fetched.clear()
    channel = calibrate(
        tmp_path / "m.onnx", tmp_path / "d.npz", CalibrationConfig(granularity=Granularity.CHANNEL)
    )
    assert "kt" in fetched and channel.tensors["kt"].min.shape != channel.tensors["k"].min.shape


def test_ranges_file_records_provenance_and_round_trips(cnn_files, tmp_path):
    ranges = calibrate(cnn_files["model"], cnn_files["data"], CalibrationConfig(batch_size=8))
    path = tmp_path / "r.json"
    path.write_text(ranges.to_json())
    doc = json.loads(path.read_text())
    assert doc["format"] == "onnxq-ranges" and doc["version"] == 1
    assert doc["model"]["fingerprint"].startswith("sha256:")
    assert doc["samples"] == 64 and doc["method"]["name"] == "minmax"
    back = read_ranges(path)
    assert back.tensors.keys() == ranges.tensors.keys()
    assert all(float(back.tensors[k].max) == float(v.max) for k, v in ranges.tensors.items())


def test_quantize_with_a_ranges_file_equals_quantize_with_data(cnn_files, tmp_path):
    ranges = calibrate(cnn_files["model"], cnn_files["data"])
    rpath = tmp_path / "r.json"
    rpath.write_text(ranges.to_json())
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    # the output check needs calibration data, so it runs with --data only: switched off
    # int8 both times (--optimize-for size): balanced writes this tiny model weights-only
    sized = QuantConfig(target=NO_CHECK, optimize_for=OptimizeFor.SIZE)
    quantize(cnn_files["model"], a, sized, data=cnn_files["data"])
    quantize(
        cnn_files["model"],
        b,
        QuantConfig(optimize_for=OptimizeFor.SIZE),
        ranges=rpath,
        eval_data=cnn_files["data"],
    )
    assert onnx.load(str(a)).graph == onnx.load(str(b)).graph


def test_ranges_for_another_model_are_refused(cnn_files, tmp_path):
    ranges = calibrate(cnn_files["model"], cnn_files["data"])
    rpath = tmp_path / "r.json"
    rpath.write_text(ranges.to_json())
    other = tmp_path / "other.onnx"
    onnx.save(models.cnn(seed=5), str(other))
    with pytest.raises(RangesError, match="different model"):
        quantize(other, tmp_path / "q.onnx", ranges=rpath, config=QuantConfig())
    assert not (tmp_path / "q.onnx").exists()


def test_a_chain_of_rearrangements_takes_the_first_tensor_statistics(tmp_path):
    """x -> MatMul -> Reshape -> Transpose -> MatMul: both rearranged copies take the
    MatMul output's range (the chain resolved to its start), which is their true range."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxq.graph.outputs import with_outputs

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 1, (16, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 1, (4, 4)).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([0, 4, 4, 4], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["t", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [w1, w2, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = rng.normal(0, 1, (24, 4, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ranges = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz").tensors
    fetch = with_outputs(model, ["h", "t"]).SerializeToString()
    h, t = ort.InferenceSession(fetch).run(["h", "t"], {"x": x})
    for name in ("r", "t"):
        assert (
            (float(ranges[name].min), float(ranges[name].max))
            == (h.min(), h.max())
            == (
                t.min(),
                t.max(),
            )
        )


def test_calibration_batches_are_sized_by_every_output_of_the_wide_session(tmp_path, monkeypatch):
    """onnxruntime allocates every graph output of a session in each run, whatever the run
    fetches: a pass's batches are sized by all of the wide session's outputs (magika: 25
    MB a sample where the 5 MB observed had allowed 11 samples a run). A pass that fetches
    a small part of them runs in a session with only those outputs (PP-OCR rec: 142 of 379
    tensors, a third faster), in batches of the same size (a moving average over batches
    does not change with what a pass fetches), with the same ranges."""
    import onnxq.calibration.collect as collect
    from onnxq.data import open_dataset
    from onnxq.graph.activations import rectified_sources, value_aliases
    from onnxq.graph.model_io import input_specs
    from onnxq.stages.prepare import prepare

    model = prepare(models.cnn()).model
    shape = [d.dim_value or 32 for d in model.graph.input[0].type.tensor_type.shape.dim]
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(0).random(shape, np.float32))
    dataset = open_dataset(tmp_path / "d.npz", input_specs(model))
    floats = collect.FloatSession(model)
    everything = floats.sample_bytes(dataset)
    smallest = min(floats.candidates, key=lambda t: floats.bytes_per_sample(dataset, [t]))
    assert floats.bytes_per_sample(dataset, [smallest]) * 4 < everything
    monkeypatch.setattr(collect, "OUTPUT_BUDGET", 2 * everything)  # two samples a run
    sizes: list[int] = []
    outputs: list[int] = []
    real_run = collect.Runner.run

    def spy(self, feed, names=None):
        sizes.append(next(iter(feed.values())).shape[0])
        outputs.append(len(self.output_names))
        return real_run(self, feed, names)

    monkeypatch.setattr(collect.Runner, "run", spy)
    config = CalibrationConfig(batch_size=8)
    wide = floats.observe(dataset, list(floats.candidates), config)
    # every tensor but the Relu outputs (read off their inputs) and the rearranged copies
    relu = rectified_sources(model, floats.candidates)
    copies = value_aliases(model, floats.candidates)
    assert relu and sizes and max(sizes) == 2
    assert min(outputs) == len(floats.fetchable) - len(relu) - len(copies)
    sizes.clear()
    outputs.clear()
    focused = floats.observe(dataset, [smallest], config)
    assert sizes and max(sizes) == 2  # the wide session's size
    assert max(outputs) <= 1 + len(model.graph.output)  # the smallest and the logits
    np.testing.assert_allclose(focused[smallest].min, wide[smallest].min, rtol=1e-6)
    np.testing.assert_allclose(focused[smallest].max, wide[smallest].max, rtol=1e-6)


def test_calibration_pass_sums_bias_means_that_means_then_reads_without_a_run(
    tmp_path, monkeypatch
):
    """A calibration pass asked for bias correction's input means sums them over the
    first samples on the way: the later means() gives what its own pass over the same
    batches gives (up to float rounding: the pass may run in a session of its own),
    without running the model again (MiniLM: 1.3 s saved)."""
    import onnxq.calibration.collect as collect
    from onnxq.data import open_dataset
    from onnxq.graph.model_io import input_specs
    from onnxq.stages.prepare import prepare

    model = prepare(models.cnn()).model
    shape = [d.dim_value or 12 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", input=rng.normal(size=shape).astype(np.float32))
    dataset = open_dataset(tmp_path / "d.npz", input_specs(model))
    floats = collect.FloatSession(model)
    tensors = [
        t for t in floats.candidates if floats.run(next(dataset.batches(1)).feed, [t])[t].ndim == 4
    ]
    axes = {tensors[0]: 1, tensors[-1]: 1}
    config = CalibrationConfig(batch_size=4)
    batch = collect.batch_for(floats.sample_bytes(dataset), config.batch_size)
    expected = floats.means(dataset, axes, samples=6, batch_size=batch)  # 2 batches of 4

    runs = count_float_runs(monkeypatch)
    floats.observe(dataset, tensors[:1], config, means=collect.MeansWanted(axes, 6))
    during = len(runs)
    got = floats.means(dataset, axes, samples=6, batch_size=batch)
    assert len(runs) == during  # read from the pass, not run again
    assert set(got) == set(expected)
    for name in expected:  # the pass's own session fuses more: float rounding apart
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)
    again = floats.means(dataset, axes, samples=6, batch_size=batch)  # the record is read once
    assert len(runs) > during
    for name in expected:
        np.testing.assert_array_equal(again[name], expected[name])


@pytest.mark.parametrize("granularity", [Granularity.TENSOR, Granularity.CHANNEL])
def test_relu_outputs_are_read_off_their_inputs_exactly(cnn_files, granularity, monkeypatch):
    """A Relu's output is max(x, 0) of its input: its min and max (per tensor or per
    channel) are the input's clamped at zero, exactly, and the pass never fetches it; a
    moving average (of clamped batch extremes, not the clamped average) observes it."""
    import onnxruntime as ort

    import onnxq.calibration.passplan as passplan
    from onnxq.graph.outputs import with_outputs

    fetched: set[str] = set()
    _spy_fetches(monkeypatch, fetched)
    config = CalibrationConfig(granularity=granularity, batch_size=3)
    ranges = calibrate(cnn_files["model"], cnn_files["data"], config).tensors
    assert {"c1", "c2"} <= fetched and not {"r1", "r2"} & fetched
    model = with_outputs(onnx.load(str(cnn_files["model"])), ["r1", "r2"])
    x = np.load(cnn_files["data"])["input"]
    r1, r2 = ort.InferenceSession(model.SerializeToString()).run(["r1", "r2"], {"input": x})
    axes = (0, 2, 3) if granularity is Granularity.CHANNEL else None
    for name, value in (("r1", r1), ("r2", r2)):
        got = ranges[name]
        assert np.array_equal(got.min, value.min(axis=axes)), name
        assert np.array_equal(got.max, value.max(axis=axes)), name
        assert got.quality is not None and got.quality.robust_min >= 0.0
    # bit for bit what observing the outputs themselves gives, quality included
    monkeypatch.setattr(passplan, "rectified_sources", lambda model, tensors: {})
    observed = calibrate(cnn_files["model"], cnn_files["data"], config).tensors
    for name in ("r1", "r2"):
        assert observed[name].quality == ranges[name].quality, name
        for field in ("min", "max", "observed_min", "observed_max"):
            mine, theirs = getattr(ranges[name], field), getattr(observed[name], field)
            assert np.array_equal(mine, theirs), (name, field)
    fetched.clear()
    calibrate(cnn_files["model"], cnn_files["data"], replace(config, moving_average=0.1))
    assert {"r1", "r2"} <= fetched


def test_calibration_skips_the_tensors_of_element_wise_maths_no_setting_quantizes():
    """An Erf GELU written out: its Add and Muls read a node that is never integer (Erf,
    or one of them), so no setting quantizes them and their tensors are not calibrated;
    the bias Add after the MatMul, and the tensors the MatMuls read, are."""
    from onnxq.graph.activations import calibrated_tensors, never_quantized
    from onnxq.stages.prepare import prepare

    model = prepare(models.gelu_mlp()[0]).model
    assert never_quantized(model) == {"gelu_add", "gelu_mul", "gelu_half", "silu_mul", "sum"}
    cands = set(calibrated_tensors(model))
    assert {"x", "m1", "h", "both"} <= cands  # MatMul and bias Add tensors
    assert not {"hs", "e", "e1", "he"} & cands  # only element-wise maths reads or makes them


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(),
        QuantConfig(activations=ActivationSpec(scheme=Scheme.SYM)),
        QuantConfig(activations=ActivationSpec(bits=16)),
    ],
    ids=["asym", "sym", "int16"],
)
def test_every_range_a_plan_needs_is_calibrated_and_skipped_nodes_stay_float(config):
    """The graph-only reading of the planner's rule (never_quantized) against the planner:
    on every test model, each node it names is planned float and every tensor the plan
    needs a range for is a calibration candidate."""
    from onnxq.graph.activations import calibrated_tensors, never_quantized
    from onnxq.graph.plan import make_plan
    from onnxq.stages.prepare import prepare

    built = [
        models.cnn(),
        models.gelu_mlp()[0],
        models.tiny_encoder()[0],
        models.masked_attention()[0],
        models.embedding_model()[0],
        models.outlier_cnn(),
        onnx.load(str(SAMPLES / "digits_cnn.onnx")),
    ]
    skipped = 0
    for raw in built:
        model = prepare(raw).model
        never = never_quantized(model)
        plan = make_plan(model, config)
        decided = {d.name: d for d in plan.decisions}
        assert not [n for n in never if decided[n].quantized]
        needed = {plan.root_of(t) for t in plan.roots} | set(plan.roots)
        assert needed <= set(calibrated_tensors(model))
        skipped += len(never)
    assert skipped >= 5  # the rule did skip nodes


def test_a_product_by_a_power_of_two_is_read_off_its_input(tmp_path, monkeypatch):
    """Scores scaled by 1/4 are the MatMul's values times 1/4, exactly: their min and max
    come from the MatMul's observer, and they are not fetched; by 1/3 they are."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    import onnxq.calibration.passplan as passplan
    from onnxq.graph.outputs import with_outputs

    rng = np.random.default_rng(3)
    f32 = np.float32

    def model(factor: float, op: str = "Mul") -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(rng.normal(0, 1, (8, 8)).astype(f32), "w"),
            numpy_helper.from_array(np.array(factor, f32), "c"),
        ]
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node(op, ["m", "c"], ["s"], name="scale"),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="mm2"),
        ]
        info = helper.make_tensor_value_info
        graph = helper.make_graph(
            nodes,
            "g",
            [info("x", onnx.TensorProto.FLOAT, ["N", 8])],
            [info("y", onnx.TensorProto.FLOAT, ["N", 8])],
            inits,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    fetched: set[str] = set()
    _spy_fetches(monkeypatch, fetched)
    x = rng.normal(0, 1, (40, 8)).astype(f32)
    np.savez(tmp_path / "d.npz", x=x)
    cases = [(0.25, "Mul", True), (4.0, "Div", True), (-0.25, "Mul", False), (1 / 3, "Mul", False)]
    for factor, op, derived in cases:
        m = model(factor, op)
        onnx.save(m, str(tmp_path / "m.onnx"))
        fetched.clear()
        ranges = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz").tensors
        assert ("s" not in fetched) is derived and "m" in fetched
        s = ort.InferenceSession(with_outputs(m, ["s"]).SerializeToString()).run(["s"], {"x": x})
        assert (float(ranges["s"].min), float(ranges["s"].max)) == (s[0].min(), s[0].max())
        if derived:  # bit for bit what observing it gives, quality included
            monkeypatch.setattr(passplan, "scaled_sources", lambda model, tensors: {})
            observed = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz").tensors["s"]
            monkeypatch.undo()
            _spy_fetches(monkeypatch, fetched)
            assert observed.quality == ranges["s"].quality
            assert np.array_equal(observed.observed_max, ranges["s"].observed_max)


def _spy_fetches(monkeypatch, fetched: set[str]) -> None:
    """Record in ``fetched`` the tensors each calibration pass fetches (not the probe)."""
    import onnxq.calibration.collect as collect

    real_observe = collect.observe_shard

    def spy(run, dataset, task, progress=None):
        fetched.update(task.tensors)
        return real_observe(run, dataset, task, progress)

    monkeypatch.setattr(collect, "observe_shard", spy)


def test_only_positive_power_of_two_scalars_of_the_same_rank_are_read_off_their_input():
    """scaled_sources names x·2^k, 2^k·x and x/2^k; never a Div by zero, a constant over
    x, a negative, non-finite or out-of-range factor, a factor that is not a power of
    two, or a constant of higher rank (it broadcasts the tensor into more axes)."""
    from onnx import helper, numpy_helper

    from onnxq.graph.activations import scaled_sources

    f32 = np.float32
    cases = {  # output: (op, inputs, constant's value and shape)
        "mul": ("Mul", ["x", "c_mul"], 0.125, ()),
        "left": ("Mul", ["c_left", "x"], 4.0, ()),
        "div": ("Div", ["x", "c_div"], 8.0, (1,)),
        "div0": ("Div", ["x", "c_div0"], 0.0, ()),
        "over": ("Div", ["c_over", "x"], 2.0, ()),
        "neg": ("Mul", ["x", "c_neg"], -0.5, ()),
        "inf": ("Mul", ["x", "c_inf"], np.inf, ()),
        "tiny": ("Mul", ["x", "c_tiny"], 2.0**-70, ()),
        "third": ("Mul", ["x", "c_third"], 1 / 3, ()),
        "raise": ("Mul", ["x", "c_raise"], 0.5, (1, 1, 1)),
    }
    nodes = [helper.make_node(op, ins, [out], name=out) for out, (op, ins, _, _) in cases.items()]
    inits = [
        numpy_helper.from_array(np.full(shape, value, f32), ins[0] if ins[0] != "x" else ins[1])
        for _, (_, ins, value, shape) in cases.items()
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [info(out, onnx.TensorProto.FLOAT, None) for out in cases],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    found = scaled_sources(model, ["x", *cases])
    assert found == {"mul": ("x", 0.125), "left": ("x", 4.0), "div": ("x", 0.125)}
    assert scaled_sources(model, list(cases)) == {}  # the input itself not wanted: none
