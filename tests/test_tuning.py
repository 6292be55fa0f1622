"""The output check: the group-testing search, the switchable simulation, and the loop in
``quantize`` (real onnxruntime sessions throughout)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxq import FidelityTarget, OptimizeFor, QuantConfig, quantize
from onnxq.cli.main import cli
from onnxq.data import open_dataset
from onnxq.errors import ConfigError
from onnxq.graph.model_io import input_specs
from onnxq.graph.simulate import UnitKind, build_simulation
from onnxq.runtime import OptLevel, Runner
from onnxq.stages.prepare import prepare
from onnxq.tuning.check import make_check_set
from onnxq.tuning.search import Measurements, search_fallback

import models
from helpers import (
    NO_CHECK,
    count_float_runs,
    float_session,
    graph_bytes,
    quantize_in_memory,
    run,
)

# ----------------------------------------------------------------------------- the search


def _additive(noise: np.ndarray):
    calls = []

    def measure(active: frozenset[int]) -> np.ndarray:
        calls.append(active)
        return np.array([sum(float(noise[i]) for i in active)])

    return measure, calls


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=40),
    st.floats(1e-4, 2.0),
)
def test_search_floats_exactly_the_largest_units_when_noise_adds(values, limit):
    noise = np.array(values)
    measure, _ = _additive(noise)
    found = search_fallback(len(noise), measure, limit, budget=10_000)
    remaining = noise.sum() - noise[list(found.floated)].sum()
    assert found.met and remaining <= limit * (1 + 1e-9)
    k = len(found.floated)
    order = np.argsort(-noise, kind="stable")
    # the floated units are the k noisiest (up to ties) ...
    if 0 < k < len(noise):
        assert noise[list(found.floated)].min() >= noise[order[k]] - 1e-12
    # ... and no smaller set of the noisiest would do
    if k:
        assert noise.sum() - noise[order[: k - 1]].sum() > limit


def test_search_needs_few_measurements_for_one_costly_unit():
    noise = np.full(256, 1e-6)
    noise[137] = 1.0
    measure, calls = _additive(noise)
    found = search_fallback(len(noise), measure, 1e-2)
    assert found.met and found.floated == {137}
    # all units, both halves at each level of the 8-level split, the final check: 18, not 256
    assert len(calls) <= 1 + 2 * 8 + 1


def test_search_goes_on_when_the_parts_interact():
    """Noise that grows faster than the sum of its parts: the prediction says 'enough',
    the measurement says no, and the search keeps going until the measurement agrees."""
    noise = np.linspace(0.01, 0.1, 12)

    def measure(active: frozenset[int]) -> np.ndarray:
        total = sum(float(noise[i]) for i in active)
        return np.array([total * (1 + 2 * total)])

    found = search_fallback(len(noise), measure, 0.15)
    assert found.met and float(found.noise[0]) <= 0.15
    assert float(measure(frozenset(range(12)) - found.floated)[0]) <= 0.15


def test_search_respects_the_cap_and_says_when_it_misses():
    noise = np.array([5.0, 5.0, 5.0, 5.0] + [0.01] * 6)
    measure, _ = _additive(noise)
    found = search_fallback(len(noise), measure, 0.5, max_float=3)
    assert not found.met and len(found.floated) == 3 and max(found.floated) < 4


def test_search_worst_output_decides():
    # output 0 is fine everywhere; output 1 suffers from unit 4 only
    def measure(active):
        return np.array([1e-5 * len(active), 1.0 if 4 in active else 0.0])

    found = search_fallback(8, measure, 1e-3)
    assert found.met and found.floated == {4}


# ----------------------------------------------------------------------------- simulation


def test_simulation_matches_float_off_and_the_quantized_model_on(tmp_path):
    model, feed = models.single_op("conv")
    result, plan = quantize_in_memory(model, feed, QuantConfig(), tmp_path)
    prepared = prepare(model).model
    from onnxq.calibration.collect import FloatSession
    from onnxq.calibration.remedy import activation_qparams
    from onnxq.config import CalibrationConfig

    np.savez(tmp_path / "d.npz", **feed)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    observed = FloatSession(prepared).observe(data, plan.roots, CalibrationConfig())
    acts = QuantConfig().activations
    qparams = {t: activation_qparams(observed[t], acts, restricted=False) for t in plan.roots}
    sim = build_simulation(prepared, plan, result.model, qparams)
    kinds = {u.kind for u in sim.units}
    assert kinds == {UnitKind.ACTIVATION, UnitKind.WEIGHT}
    onnx.checker.check_model(sim.model)
    runner = Runner(sim.model, level=OptLevel.BASIC)
    name = model.graph.output[0].name
    off = runner.run({**feed, **sim.feed(frozenset())})[name]
    on = runner.run({**feed, **sim.feed(frozenset(range(len(sim.units))))})[name]
    (float_out,) = run(model, feed)
    (quant_out,) = run(result.model, feed, optimize=False)  # literal Q/DQ semantics
    np.testing.assert_allclose(off, float_out, rtol=1e-5, atol=1e-5)
    step = np.ptp(float_out) / 255
    assert np.abs(on - quant_out).max() <= 2 * step
    assert np.abs(on - float_out).max() > 0  # switching on changes something


# ----------------------------------------------------------------------------- check set


def _softmax_classifier(seed=0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w = rng.normal(0, 0.3, (32, 10)).astype(f32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="sm", axis=-1),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 32])],
            [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", 10])],
            [onnx.numpy_helper.from_array(w, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model, {"x": rng.normal(0, 1, (40, 32)).astype(f32)}


def test_check_compares_logits_before_a_softmax_and_counts_top1(tmp_path):
    model, feed = _softmax_classifier()
    np.savez(tmp_path / "d.npz", **feed)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    check = make_check_set(float_session(prepare(model).model), data)
    assert check.outputs == ("logits",) and check.axes == {"logits": -1}
    assert check.samples == 40
    same = check.run(check.runner(model))
    assert same.noise == {"logits": 0.0} and same.top1 == {"logits": 1.0}
    assert same.meets(FidelityTarget(60.0, 1.0))


def _transposed_outputs(batch_axis_first: bool) -> tuple[onnx.ModelProto, dict]:
    """x [N, 4] @ w [4, 3] -> y [N, 3], or its transpose [3, N] (batch on axis 1)."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if batch_axis_first else "m"])]
    if not batch_axis_first:
        nodes.append(helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0]))
    out_shape = ["N", 3] if batch_axis_first else [3, "N"]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
            [onnx.numpy_helper.from_array(w, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return model, {"x": rng.normal(0, 1, (24, 4)).astype(np.float32)}


@pytest.mark.parametrize("batch_axis_first", [True, False])
def test_check_references_come_from_the_calibration_record_when_it_holds_them(
    tmp_path, monkeypatch, batch_axis_first
):
    """After a calibration pass that kept the graph outputs, the check set takes its float
    references from that record (one feed is run to confirm it) and they equal a run of
    the float model; an output whose batch axis is not the first (here [3, N] recorded in
    batches of 3, where the first axis has the batch's size by chance, checked in feeds of
    6) fails the confirmation and every feed is run."""
    from onnxq import CalibrationConfig

    model, feed = _transposed_outputs(batch_axis_first)
    np.savez(tmp_path / "d.npz", **feed)
    prepared = prepare(model).model
    data = open_dataset(tmp_path / "d.npz", input_specs(prepared))
    expected = make_check_set(float_session(prepared), data, batch_size=6)

    floats = float_session(prepared)
    floats.observe(data, ["y"], CalibrationConfig(batch_size=3), keep_outputs=True)
    runs = count_float_runs(monkeypatch)
    check = make_check_set(floats, data, batch_size=6)  # feeds of 6 from batches of 3
    feeds = len(check.feeds)
    assert feeds > 2 and check.samples == expected.samples
    assert len(runs) == (1 if batch_axis_first else feeds)
    for got, want in zip(check.reference, expected.reference, strict=True):
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)


def test_an_unloaded_session_refuses_to_run_until_reloaded():
    """The output check unloads the first candidate's session while its simulation runs;
    a run in between is a bug (said so), and the reloaded session gives the same outputs,
    the logits the check added included."""
    from onnxq.graph.outputs import with_outputs

    model, feed = _softmax_classifier()
    runner = Runner(with_outputs(model, ["logits"]), threads=1)  # as the check makes it
    before = runner.run({"x": feed["x"][:4]})
    assert set(before) == {"probs", "logits"}
    runner.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        runner.run({"x": feed["x"][:4]})
    runner.reload(model)  # the candidate's own model: the check's outputs are added again
    after = runner.run({"x": feed["x"][:4]})
    assert set(after) == set(before)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_check_references_from_a_record_of_batches_of_other_lengths(tmp_path):
    """Variable-length data in parts (sequences of 5, 7 and 9): the record's batches cannot
    be joined into rows, so the check runs the float model, and nothing breaks."""
    from onnxq import CalibrationConfig
    from onnxq.data import open_dataset as open_data

    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "L"])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "L"])],
            [onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    folder = tmp_path / "parts"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, length in enumerate((5, 7, 9)):
        np.savez(folder / f"p{i}.npz", x=rng.normal(size=(2, length)).astype(np.float32))
    prepared = prepare(model).model
    data = open_data(folder, input_specs(prepared))
    floats = float_session(prepared)
    floats.observe(data, ["y"], CalibrationConfig(batch_size=2), keep_outputs=True)
    assert floats.recorded_rows(data, ["y"], 6) is None
    check = make_check_set(floats, data, batch_size=2)
    plain = make_check_set(float_session(prepared), data, batch_size=2)
    assert check.samples == plain.samples == 6
    for got, want in zip(check.reference, plain.reference, strict=True):
        np.testing.assert_array_equal(got["y"], want["y"])


# ----------------------------------------------------------------------------- the loop


def test_output_check_rescues_what_the_range_remedy_left_out(tmp_path):
    """Without the SQNR remedy the outlying channel ruins int8 activations; the output
    check finds the tensor and keeps it float, and says so in the report."""
    model, feed = models.outlier_channel_mlp()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    plain = quantize(
        tmp_path / "m.onnx",
        tmp_path / "a.onnx",
        QuantConfig(auto_sqnr=0, target=NO_CHECK, optimize_for=OptimizeFor.SIZE),
        data=tmp_path / "d.npz",
    )
    checked = quantize(
        tmp_path / "m.onnx",
        tmp_path / "b.onnx",
        QuantConfig(auto_sqnr=0, optimize_for=OptimizeFor.SIZE),
        data=tmp_path / "d.npz",
    )
    assert plain.check is None
    c = checked.check
    assert c is not None and c.met and not c.before.meets(c.target)
    assert c.float_tensors or c.float_nodes
    assert checked.fidelity.outputs[0].sqnr_db >= FidelityTarget().sqnr_db
    assert checked.fidelity.outputs[0].sqnr_db > plain.fidelity.outputs[0].sqnr_db + 6
    kept = [d for d in checked.decisions if "output check" in d.reason]
    assert kept, "the report must say which decisions the check undid"
    assert checked.quantized_nodes >= 1


def test_output_check_leaves_a_good_model_alone(tmp_path):
    model = models.cnn()
    shape = [d.dim_value or 16 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"input": np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)}
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    with_check = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", data=tmp_path / "d.npz")
    quantize(
        tmp_path / "m.onnx",
        tmp_path / "b.onnx",
        QuantConfig(target=NO_CHECK),
        data=tmp_path / "d.npz",
    )
    assert with_check.check is not None and with_check.check.met
    assert with_check.check.passes == 0 and not with_check.check.float_nodes
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(tmp_path / "b.onnx")


def test_cli_reports_the_check_in_json_and_rejects_bad_targets(tmp_path):
    model, feed = models.outlier_channel_mlp()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    base = [
        "quantize",
        tmp_path / "m.onnx",
        "-o",
        tmp_path / "q.onnx",
        "--data",
        tmp_path / "d.npz",
        "--optimize-for",
        "size",  # int8 activations, which the check searches (balanced: weights-only here)
    ]
    res = CliRunner().invoke(cli, [str(a) for a in [*base, "--auto-sqnr", "0", "--json"]])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    check = doc["output_check"]
    target = FidelityTarget().sqnr_db
    assert check["met"] and check["target"]["sqnr_db"] == target
    assert check["after"]["sqnr_db"] >= target > check["before"]["sqnr_db"]
    res = CliRunner().invoke(cli, [str(a) for a in [*base, "--target-sqnr", "0", "--json"]])
    assert res.exit_code == 0 and json.loads(res.stdout)["output_check"] is None
    (tmp_path / "q.onnx").unlink()
    res = CliRunner().invoke(cli, [str(a) for a in [*base, "--target-top1", "150"]])
    assert res.exit_code == 2
    assert "--target-top1" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_fidelity_target_validates():
    with pytest.raises(ConfigError, match="--target-sqnr"):
        FidelityTarget(sqnr_db=float("nan"))
    with pytest.raises(ConfigError, match="--target-top1"):
        FidelityTarget(top1=-0.1)
    assert not FidelityTarget(sqnr_db=0).enabled


def test_check_measures_the_written_model_embeddings_included(tmp_path):
    """The check's 'after' is the file written: on the same samples it must equal the
    fidelity report of that file (a check made before the int8 embedding rows would not)."""
    model, feed = models.embedding_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    report = quantize(
        tmp_path / "m.onnx",
        tmp_path / "q.onnx",
        QuantConfig(weights_only=True, target=FidelityTarget(sqnr_db=1.0)),
        data=tmp_path / "d.npz",
    )
    assert any(d.op_type == "Gather" and d.quantized for d in report.decisions)
    assert report.check is not None and report.check.after.samples == 32
    assert report.check.after.sqnr_db == pytest.approx(report.fidelity.outputs[0].sqnr_db, abs=0.01)


def test_check_set_skips_empty_outputs_and_asks_top1_of_probabilities_only(tmp_path):
    rng = np.random.default_rng(0)
    f32 = np.float32
    w = rng.normal(0, 0.3, (16, 6)).astype(f32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["emb"], name="fc"),  # an embedding
        helper.make_node("Exp", ["emb"], ["e"], name="exp"),
        helper.make_node("ReduceSum", ["e", "one"], ["s"], name="sum", keepdims=1),
        helper.make_node("Div", ["e", "s"], ["probs"], name="div"),  # softmax, written out
        helper.make_node("Mul", ["emb", "zero"], ["nothing"], name="zero_out"),  # all zero
    ]
    outs = [
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 6])
        for n in ("emb", "probs", "nothing")
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
            outs,
            [
                onnx.numpy_helper.from_array(w, "w"),
                onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
                onnx.numpy_helper.from_array(np.zeros(1, f32), "zero"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    np.savez(tmp_path / "d.npz", x=rng.normal(0, 1, (20, 16)).astype(f32))
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    check = make_check_set(float_session(model), data)
    assert check.outputs == ("emb", "probs")  # 'nothing' has no signal to compare
    assert check.axes == {"probs": 1}  # no top-1 asked of the embedding


def test_spread_noise_is_measured_unit_by_unit_and_the_costliest_floated():
    """Noise spread over 36 units with no standout: the first split is even, so every unit
    is measured alone and the fewest costliest ones meeting the limit are floated; halving
    would spend the whole budget of 48 (it did: six floats, short)."""
    rng = np.random.default_rng(3)
    noise = rng.uniform(0.5, 1.5, 36)
    order = np.argsort(-noise)
    limit = noise.sum() - noise[order[:6]].sum() + 1e-9  # the six costliest must go
    measure, calls = _additive(noise)
    found = search_fallback(36, measure, limit, budget=48, max_float=7)
    assert found.met and found.floated == frozenset(order[:6].tolist())
    assert found.passes == 1 + 2 + 36 + 1  # all, two halves, each unit alone, the check
    assert sum(len(c) == 1 for c in calls) == 36
    # a stricter limit next round, with 3 runs left: the units alone are known already,
    # so the next costliest are floated and checked (halving would spend the 3 and miss)
    limit2 = noise.sum() - noise[order[:7]].sum() + 1e-9
    m = Measurements(measure)
    first = search_fallback(36, m, limit, budget=48, max_float=8)
    again = search_fallback(36, m, limit2, budget=3, keep_float=first.floated, max_float=8)
    assert again.met and again.floated == frozenset(order[:7].tolist()) and again.passes == 1


def test_a_group_made_by_an_uneven_split_is_halved():
    """Whether a group's units are measured alone reads the split that made that group,
    not the search's latest one (a costly unit's group keeps being halved)."""
    from onnxq.tuning.search import _Splits

    m = Measurements(lambda active: np.array([float(len(active))]))
    splits = _Splits(judged=True, shares=[0.96, 0.5])
    uneven, even = tuple(range(8)), tuple(range(8, 16))
    splits.made_by.update({uneven: 0.96, even: 0.5})
    assert not splits.one_by_one(uneven, m, left=40, floats=7)
    assert splits.one_by_one(even, m, left=40, floats=7)
    assert not splits.one_by_one(even, m, left=8, floats=7)  # 8 new runs and the check
    assert not splits.one_by_one(even, m, left=40, floats=1)  # halving finds one for less
    assert not _Splits(judged=False, made_by={even: 0.5}).one_by_one(even, m, 40, 7)


def test_search_gives_up_early_when_the_noise_is_spread_out():
    """256 units of equal noise, the limit a fiftieth of it, at most 50 float: no choice
    meets it; the search says so after a few splits instead of spending its budget."""
    from onnxq.tuning.search import SPLITS_BEFORE_JUDGING

    measure, calls = _additive(np.full(256, 1.0))
    found = search_fallback(256, measure, 256 / 50, budget=48, max_float=50)
    assert not found.met and not found.floated
    assert len(calls) <= 1 + 2 * SPLITS_BEFORE_JUDGING + 1
    # a budget that would fit every unit alone (a task metric's): still judged first
    measure, calls = _additive(np.full(159, 1.0))
    found = search_fallback(159, measure, 159 / 50, budget=320, max_float=31)
    assert not found.met and len(calls) <= 1 + 2 * SPLITS_BEFORE_JUDGING + 1
    # the same spread with a few costly units in it: uneven splits, the search goes on
    noise = np.full(256, 0.001)
    noise[[3, 77, 200]] = 5.0
    measure, calls = _additive(noise)
    found = search_fallback(256, measure, 1.0, budget=200, max_float=50)
    assert found.met and {3, 77, 200} <= found.floated


def test_removable_share_of_a_cascade():
    from onnxq.tuning.search import removable_share

    assert removable_share(1.0, [(256, 1.0)], 1) == 1.0  # all the noise in one unit
    assert removable_share(0.5, [(256, 1.0)], 32) == pytest.approx(32 / 256)  # spread evenly
    assert removable_share(0.6, [(159, 1.0)], 31) < removable_share(0.9, [(159, 1.0)], 31)
    assert removable_share(0.7, [(128, 1.0)], 128) == pytest.approx(1.0)  # every unit
    assert removable_share(0.7, [(100, 1.0)], 0) == 0.0
    # groups measured already: three single units of noise 5 hold 15 of 20.06, whatever c
    groups = [(1, 5.0), (1, 5.0), (1, 5.0), (2, 5.01), (5, 0.05)]
    assert removable_share(0.5, groups, 3) == pytest.approx(15 / 20.06)


# ------------------------------------------------------- a top-1 miss within sampling noise


def _near_tie_classifier(tmp_path, ties: int = 2):
    """``_softmax_classifier`` on 128 samples, the first ``ties`` of them with the float
    model's top two logits 1e-3 apart: int8 flips one of them (seed 0), SQNR about 40 dB."""
    model, _ = _softmax_classifier()
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    d = w[:, 0] - w[:, 1]
    up = (w[:, 0] + w[:, 1]) / np.linalg.norm(w[:, 0] + w[:, 1])
    x = np.random.default_rng(0).normal(0, 1, (128, 32)).astype(np.float32)
    for i in range(ties):
        x[i] = x[i] - (x[i] @ d) / (d @ d) * d + 2.0 * up + 1e-3 * d / np.linalg.norm(d)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=x)


@pytest.mark.parametrize("top1, searched", [(0.995, False), (1.0, True)])
def test_a_top1_miss_within_sampling_noise_is_reported_not_searched(tmp_path, top1, searched):
    """One flip in 128 misses 99.5 % (p = 0.47 were the agreement 99.5 %): no search,
    the miss reported with why. At 100 % a single flip is no chance: searched."""
    _near_tie_classifier(tmp_path)
    config = QuantConfig(target=FidelityTarget(top1=top1), optimize_for=OptimizeFor.SIZE)
    report = quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", config, data=tmp_path / "d.npz")
    c = report.check
    assert c is not None and not c.met
    assert c.before.sqnr_db >= c.target.sqnr_db and c.before.top1 == {"logits": 127 / 128}
    assert c.before.decisions == {"logits": 128} and c.before.clear_flips == {"logits": 0}
    if searched:
        assert c.unsearched is None and c.passes > 0
    else:
        assert c.passes == 0 and c.rounds == 0
        assert c.unsearched is not None and "1 of 128" in c.unsearched
        assert "0.6 are expected" in c.unsearched
        assert "all near ties" in c.unsearched and "at least" in c.unsearched
        assert any("not searched" in w for w in report.warnings)
        assert c.to_dict()["search_skipped"] == c.unsearched


def _result(noise: float, top1: dict, decisions: dict, clear: dict) -> tuple:
    from onnxq.tuning.check import CheckResult

    result = CheckResult(128, {"y": noise}, top1, (), {}, decisions, clear)
    return result, FidelityTarget(35.0, 0.99)


@pytest.mark.parametrize(
    "noise, top1, decisions, clear, searched",
    [
        (1e-4, {"y": 126 / 128}, {"y": 128}, {"y": 0}, False),  # 2 near ties, p = 0.37
        (1e-4, {"y": 126 / 128}, {"y": 128}, {"y": 1}, True),  # one flip was clear
        (1e-3, {"y": 126 / 128}, {"y": 128}, {"y": 0}, True),  # SQNR 30 dB misses too
        (float("nan"), {"y": 126 / 128}, {"y": 128}, {"y": 0}, True),  # NaN: -inf dB
        (1e-4, {"y": 122 / 128}, {"y": 128}, {"y": 0}, True),  # 6 of 128: p < 0.01
        (1e-4, {"y": 126 / 128}, {}, {}, True),  # decisions not counted
        # two outputs: the second's shortfall is significant
        (1e-4, {"y": 126 / 128, "z": 120 / 128}, {"y": 128, "z": 128}, {"y": 0, "z": 0}, True),
    ],
)
def test_within_sampling_noise_only_when_chance_and_near_ties_explain_it(
    noise, top1, decisions, clear, searched
):
    from onnxq.tuning.fit import within_sampling_noise

    result, target = _result(noise, top1, decisions, clear)
    assert (within_sampling_noise(result, target) is None) == searched


def test_within_sampling_noise_never_with_task_goals():
    from onnxq.metrics_config import parse_goal, parse_metric
    from onnxq.report.task import TaskTarget
    from onnxq.tuning.fit import within_sampling_noise

    result, target = _result(1e-4, {"y": 126 / 128}, {"y": 128}, {"y": 0})
    assert within_sampling_noise(result, target) is not None
    task = TaskTarget((parse_metric("classify"),), (parse_goal("classify.top1=0.9"),))
    with_goals = FidelityTarget(35.0, 0.99, task=task)
    assert within_sampling_noise(result, with_goals) is None


def test_flips_on_clear_decisions_are_counted_and_single_class_axes_have_none():
    from onnxq.tuning.check import _clear, _top2_gap

    ref = np.array([[3.0, 0.0, 0.0], [1.0, 0.99, 0.0], [0.0, 2.0, 0.5]])
    gaps = _top2_gap(ref, -1)
    assert gaps == pytest.approx([3.0, 0.01, 1.5])
    flipped = [gaps[[0, 1]]]  # decisions 0 (clear) and 1 (a near tie) flipped
    assert _clear([gaps], flipped) == 1  # median 1.5: 0.01 is under a tenth of it
    assert _clear([gaps], [gaps[[1]]]) == 0
    assert np.all(np.isinf(_top2_gap(np.ones((4, 1)), 1)))  # one class: nothing to flip
    assert _clear([np.zeros(3)], [np.zeros(1)]) == 1  # a median of 0: every flip clear


def test_the_best_candidate_so_far_waits_unloaded_while_the_simulation_runs():
    """A round's candidate that became the best is unloaded when a later round builds
    the simulation again (MiniLM: 1007 -> 884 MB peak with two rounds), and runs again
    once reloaded."""
    from onnxq.tuning.fit import _Lazy

    model, feed = models.single_op("conv")
    first, second = Runner(model), Runner(model)
    made: list[Runner] = []

    def make() -> Runner:
        made.append(Runner(model))
        return made[-1]

    lazy = _Lazy(make, first, None)
    assert lazy.get() is made[0] and first._session is None and second._session is not None
    lazy.release()
    lazy.wait(second)  # round 1's candidate is now the best
    assert lazy.get() is made[1] and second._session is None
    lazy.release()
    assert lazy.runner is None
    second.reload(model)
    np.testing.assert_allclose(second.run(feed)[model.graph.output[0].name], run(model, feed)[0])
