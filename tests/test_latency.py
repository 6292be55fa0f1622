"""Latency-aware quantization (issue #15): the candidate is timed against float in
onnxruntime; ``--optimize-for balanced`` writes the weights-only model when int8 is slower,
``size`` writes int8 and warns (``--strict`` exits 1), and the choice is in the report."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxq import FidelityTarget, OptimizeFor, QuantConfig, quantize
from onnxq.cli.main import cli
from onnxq.config import QuantFlags
from onnxq.graph.metadata import SETTINGS_KEY, recorded
from onnxq.report.latency import DYNAMIC, INT8, WEIGHTS_ONLY, LatencyCheck, is_slower, worth
from onnxq.stages.latency import _fastest

import models
from helpers import run

ROWS, COLS = 16384, 8  # big tensors, little arithmetic


def thin_matmuls() -> onnx.ModelProto:
    """Four MatMuls by 8x8 weights over 16384 rows: quantizing the activations only adds
    conversions (measured 2.4x float at 8 bits, 9x at 16 bits on 2 cores)."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "input"
    for i in range(4):
        w = rng.normal(0, 0.5, (COLS, COLS)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        x = f"m{i}"
    nodes.append(helper.make_node("Identity", [x], ["out"], name="out"))
    return models._model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, ROWS, COLS])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, ROWS, COLS])],
        inits,
    )


@pytest.fixture(scope="module")
def wide_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("wide")
    onnx.save(thin_matmuls(), str(d / "wide.onnx"))
    rng = np.random.default_rng(1)
    np.savez(d / "data.npz", input=rng.normal(size=(4, ROWS, COLS)).astype(np.float32))
    return d


def _sixteen_bit(optimize_for: OptimizeFor) -> QuantConfig:
    # 16-bit activations: onnxruntime has no integer kernel, every Q/DQ runs on its own
    config = QuantConfig.from_flags(
        QuantFlags(activation_bits=16, target_sqnr=0, optimize_for=optimize_for)
    )
    assert config.activations.bits == 16
    return config


def _lookup_then_wide(width: int = 1024) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ids -> Gather from a [5000, 32] table -> MatMul to ``width`` -> Relu -> MatMul:
    the rows looked up are about 1 % of a sample's activations."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        onnx.numpy_helper.from_array(rng.normal(0, 1, (5000, 32)).astype(f32), "table"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.2, (32, width)).astype(f32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.05, (width, width)).astype(f32), "w2"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed", axis=0),
        helper.make_node("MatMul", ["emb", "w1"], ["h"], name="up"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="out"),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "lookup",
        [info("ids", TensorProto.INT64, ["N", 12])],
        [info("y", TensorProto.FLOAT, ["N", 12, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"ids": rng.integers(0, 5000, (32, 12)).astype(np.int64)}


def test_a_weights_only_model_with_int8_embedding_lookups_is_not_timed(tmp_path, monkeypatch):
    """Its optimized graph is the float model's plus one decode (Gather, Cast, Unsqueeze,
    Mul) per int8 lookup, and the rows decoded are a small share of the activations: to
    the runtime it is the float model, so it is not timed. Timed: a model of little more
    than its lookup, a share over the limit, a graph with any other difference."""
    from types import MappingProxyType

    import onnxq.stages.latency as latency_stage

    timed = latency_stage.timed

    def int8_slower(floats, sessions, feed, *margin):  # decided, whatever the machine's load
        float_ms, tried, runs = timed(floats, sessions, feed, *margin)
        if INT8 in tried:
            tried = {**tried, INT8: 3.0 * float_ms + 1.0}
        return float_ms, tried, max(runs, 1000)

    monkeypatch.setattr(latency_stage, "timed", int8_slower)

    def timing(model: onnx.ModelProto, feed: dict, name: str) -> LatencyCheck:
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        np.savez(tmp_path / f"{name}.npz", **feed)
        report = quantize(
            tmp_path / f"{name}.onnx",
            tmp_path / f"{name}.q.onnx",
            _sixteen_bit(OptimizeFor.BALANCED),
            data=tmp_path / f"{name}.npz",
        )
        lat = report.latency
        assert lat is not None and lat.written == WEIGHTS_ONLY and WEIGHTS_ONLY in lat.tried
        written = onnx.load(str(tmp_path / f"{name}.q.onnx"))
        int8 = {t.name for t in written.graph.initializer if t.data_type == TensorProto.INT8}
        assert any(n.op_type == "Gather" and n.input[0] in int8 for n in written.graph.node)
        return lat

    wide, feed = _lookup_then_wide()
    lat = timing(wide, feed, "wide")
    assert lat.untimed == (WEIGHTS_ONLY,) and lat.tried[WEIGHTS_ONLY] == lat.float_ms
    assert timing(*models.embedding_model(), "lookup").untimed == ()  # the lookup is most of it
    monkeypatch.setattr(latency_stage, "DECODE_SHARE", 0.001)
    assert timing(wide, feed, "share").untimed == ()
    monkeypatch.setattr(latency_stage, "DECODE_SHARE", 0.02)
    decode = {**latency_stage.LOOKUP_DECODE, "Cast": 2}  # one op more than the decode
    monkeypatch.setattr(latency_stage, "LOOKUP_DECODE", MappingProxyType(decode))
    assert timing(wide, feed, "other").untimed == ()


def test_balanced_writes_weights_only_when_int8_is_slower(wide_files):
    out = wide_files / "balanced.onnx"
    report = quantize(
        wide_files / "wide.onnx",
        out,
        _sixteen_bit(OptimizeFor.BALANCED),
        data=wide_files / "data.npz",
    )
    lat = report.latency
    assert lat is not None and lat.written == WEIGHTS_ONLY
    assert lat.tried[INT8] > lat.float_ms  # int8 measured slower, then replaced
    # every integer weight folds at load: onnxruntime runs the float model's kernels, so the
    # weights-only model is not timed (timing it measured noise: 0.93-1.16x on 20 runs)
    assert lat.untimed == (WEIGHTS_ONLY,) and lat.tried[WEIGHTS_ONLY] == lat.float_ms
    assert not lat.slower and "weights-only model" in lat.describe()
    assert report.to_dict()["latency"]["not_timed"] == ["weights-only"]
    written = onnx.load(str(out))
    assert "QuantizeLinear" not in {n.op_type for n in written.graph.node}  # no activation Q
    assert report.runtime.integer_kernels == 0 and report.runtime.standalone_qdq == 0
    feed = {"input": np.random.default_rng(2).normal(size=(1, ROWS, COLS)).astype(np.float32)}
    ref, got = run(thin_matmuls(), feed)[0], run(written, feed)[0]
    # int8 weights, float activations: error of the order of the weights' rounding
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert report.to_dict()["latency"]["written"] == "weights-only"
    # the model's own record says what it holds, not only what was asked
    assert recorded(written, SETTINGS_KEY)["written"] == "weights-only"
    assert not any("ran" in w and "as long as float" in w for w in report.warnings)


def test_balanced_checks_the_weights_only_model_it_writes_not_int8(wide_files, monkeypatch):
    """With the output check on, int8 is timed before the check: it ran slower, so the
    check runs on the weights-only model that is written (no simulation search over an
    int8 model that would be thrown away), and the report's check is that model's."""
    import onnxq.stages.check as check_stage
    from onnxq.tuning.check import CheckSet

    checked = []
    original = check_stage.fit_target

    def spy(model, first, *args, **kwargs):
        checked.append(first.qdq_pairs)
        return original(model, first, *args, **kwargs)

    sessions: list[int] = []
    made = CheckSet.runner

    def making(self, model, **kwargs):
        sessions.append(sum(n.op_type == "QuantizeLinear" for n in model.graph.node))
        return made(self, model, **kwargs)

    monkeypatch.setattr(check_stage, "fit_target", spy)
    monkeypatch.setattr(CheckSet, "runner", making)
    config = QuantConfig.from_flags(
        QuantFlags(activation_bits=16, target_sqnr=30, optimize_for=OptimizeFor.BALANCED)
    )
    out = wide_files / "balanced_checked.onnx"
    report = quantize(wide_files / "wide.onnx", out, config, data=wide_files / "data.npz")
    lat = report.latency
    assert lat is not None and lat.written == WEIGHTS_ONLY and lat.tried[INT8] > lat.float_ms
    assert checked == [0]  # one check, of a model without activation Q/DQ
    # the check made a session for the int8 model it would have checked (the timing ran
    # in it); the weights-only model's is the timing's (its output is the compared one)
    assert len(sessions) == 1 and sessions[0] > 0
    assert report.check is not None and report.check.before.sqnr_db >= 30
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_balanced_times_once_when_the_check_keeps_int8_as_it_was(cnn_files, monkeypatch):
    """The int8 model the check leaves unchanged keeps the timing made before the check:
    nothing is timed after the check, and the report's timing is that one."""
    import onnxq.stages.check as check_stage
    import onnxq.stages.latency as latency_stage

    events: list[str] = []
    timed, fit = latency_stage.timed, check_stage.fit_target

    def timing(floats, sessions, feed, *margin):  # float made 1 ms slower: the tiny model ties
        events.append("timed")
        float_ms, tried, runs = timed(floats, sessions, feed, *margin)
        return float_ms + 1.0, tried, runs

    def checking(*args, **kwargs):
        events.append("checked")
        return fit(*args, **kwargs)

    monkeypatch.setattr(latency_stage, "timed", timing)
    monkeypatch.setattr(check_stage, "fit_target", checking)
    config = QuantConfig(target=FidelityTarget(sqnr_db=10))
    report = quantize(
        cnn_files["model"], cnn_files["dir"] / "q1.onnx", config, data=cnn_files["data"]
    )
    assert report.check is not None and report.check.met and not report.check.float_tensors
    assert report.latency is not None and report.latency.written == INT8
    assert events[0] == "timed" and events[-1] == "checked" and events.count("checked") == 1


def test_a_weights_only_model_chosen_after_the_check_is_checked_itself(cnn_files, monkeypatch):
    """int8 timed faster, then changed by the check (decisions kept float) and timed again
    as a tie: the weights-only model is written, and the report's check is of that model
    (a second check), not of the int8 model the first check searched."""
    import onnxq.stages.check as check_stage
    import onnxq.stages.latency as latency_stage

    events: list[str] = []
    timed, fit = latency_stage.timed, check_stage.fit_target

    def timing(floats, sessions, feed, *margin):  # int8 1 ms faster than float, then a tie
        first = "timed" not in events
        events.append("timed")
        float_ms, tried, runs = timed(floats, sessions, feed, *margin)
        if first:
            return float_ms + 1.0, tried, runs
        return float_ms, dict.fromkeys(tried, float_ms), 1000

    def checking(model, first, *args, **kwargs):
        events.append(f"checked {first.qdq_pairs}")
        return fit(model, first, *args, **kwargs)

    monkeypatch.setattr(latency_stage, "timed", timing)
    monkeypatch.setattr(check_stage, "fit_target", checking)
    out = cnn_files["dir"] / "q2.onnx"
    report = quantize(
        cnn_files["model"],
        out,
        QuantConfig(target=FidelityTarget(sqnr_db=90)),
        data=cnn_files["data"],
    )
    lat = report.latency
    assert lat is not None and lat.written == WEIGHTS_ONLY
    assert [e for e in events if e.startswith("checked")][-1] == "checked 0"  # weights-only
    assert events[1].startswith("checked") and events[1] != "checked 0"  # int8 first
    assert report.check is not None and not report.check.float_tensors
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_size_writes_int8_and_warns(wide_files):
    out = wide_files / "size.onnx"
    report = quantize(
        wide_files / "wide.onnx", out, _sixteen_bit(OptimizeFor.SIZE), data=wide_files / "data.npz"
    )
    lat = report.latency
    assert lat is not None and lat.written == INT8 and set(lat.tried) == {INT8}
    assert lat.slower and lat.ratio > 1.0
    assert any("as long as float on one sample" in w for w in report.warnings)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_strict_exits_1_when_the_written_model_is_slower(wide_files):
    args = [
        "quantize",
        wide_files / "wide.onnx",
        "-o",
        wide_files / "cli.onnx",
        "--data",
        wide_files / "data.npz",
        "--activation-bits",
        "16",
        "--target-sqnr",
        "0",
        "--optimize-for",
        "size",
        "--strict",
        "--json",
    ]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["latency"]["optimize_for"] == "size"
    assert doc["latency"]["slower_than_float"] is True
    assert doc["settings"]["quantize"]["optimize_for"] == "size"


def test_optimize_for_is_parsed_and_refused_when_unknown(cnn_files):
    bad = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(cnn_files["model"]),
            "-o",
            str(cnn_files["dir"] / "q.onnx"),
            "--data",
            str(cnn_files["data"]),
            "--optimize-for",
            "speed",
        ],
    )
    assert bad.exit_code == 2 and "--optimize-for" in bad.output


@pytest.mark.parametrize("value", list(OptimizeFor))
def test_optimize_for_round_trips_through_flags_and_settings(value):
    config = QuantConfig.from_flags(QuantFlags(optimize_for=value))
    assert config.optimize_for is value
    assert config.settings()["optimize_for"] == value.value
    assert OptimizeFor(value.value) is value
    assert QuantConfig().optimize_for is OptimizeFor.BALANCED  # never slower silently


def test_tiny_model_at_the_noise_floor_writes_weights_only(cnn_files):
    # a tiny model (float about 0.02 ms) cannot run faster than float beyond the 0.02 ms
    # floor: int8 buys no speed, so the weights-only model (as small) is written
    report = quantize(cnn_files["model"], cnn_files["dir"] / "q.onnx", data=cnn_files["data"])
    lat = report.latency
    assert lat is not None and lat.float_ms < 0.1
    assert lat.written == WEIGHTS_ONLY and INT8 in lat.tried and not lat.slower
    assert "not faster" in lat.describe() or lat.tried[INT8] > lat.float_ms
    assert report.integer_kernels == 0
    # --optimize-for size writes int8 whatever the timing says
    sized = quantize(
        cnn_files["model"],
        cnn_files["dir"] / "q_size.onnx",
        QuantConfig(optimize_for=OptimizeFor.SIZE),
        data=cnn_files["data"],
    )
    assert sized.latency is not None and sized.latency.written == INT8
    assert sized.integer_kernels > 0


@pytest.mark.parametrize(
    ("model_ms", "float_ms", "slower"),
    [(1.0, 1.0, False), (1.02, 1.0, False), (1.2, 1.0, True), (0.045, 0.03, False), (5, 4, True)],
)
def test_slower_needs_a_ratio_and_a_margin(model_ms, float_ms, slower):
    assert is_slower(model_ms, float_ms) is slower
    check = LatencyCheck(OptimizeFor.SIZE, float_ms, {INT8: model_ms}, INT8, 5)
    assert (check.warning() is not None) is slower


def test_latency_mode_times_the_dynamic_model_and_writes_the_fastest(wide_files):
    out = wide_files / "latency.onnx"
    config = QuantConfig(target=FidelityTarget(sqnr_db=0), optimize_for=OptimizeFor.LATENCY)
    report = quantize(wide_files / "wide.onnx", out, config, data=wide_files / "data.npz")
    lat = report.latency
    assert lat is not None and DYNAMIC in lat.tried and INT8 in lat.tried
    # the written one ran no slower than any other beyond the noise
    assert not any(is_slower(lat.tried[lat.written], ms) for ms in lat.tried.values())
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if lat.written == DYNAMIC:
        assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    feed = {"input": np.random.default_rng(3).normal(size=(1, ROWS, COLS)).astype(np.float32)}
    ref, got = run(thin_matmuls(), feed)[0], run(onnx.load(str(out)), feed)[0]
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_balanced_does_not_time_the_dynamic_model(wide_files):
    config = QuantConfig(target=FidelityTarget(sqnr_db=0))
    report = quantize(
        wide_files / "wide.onnx", wide_files / "b8.onnx", config, data=wide_files / "data.npz"
    )
    assert report.latency is not None and DYNAMIC not in report.latency.tried


@pytest.mark.parametrize(
    ("tried", "written"),
    [
        # a tie goes to weights-only (as small, no activation rounding), in any order given
        ({INT8: 5.0, WEIGHTS_ONLY: 4.99, DYNAMIC: 4.98}, WEIGHTS_ONLY),
        ({INT8: 4.9, WEIGHTS_ONLY: 5.0}, WEIGHTS_ONLY),
        ({WEIGHTS_ONLY: 5.0, INT8: 4.9}, WEIGHTS_ONLY),
        ({INT8: 5.0, DYNAMIC: 4.9}, INT8),  # then int8 before dynamic
        ({INT8: 4.5, WEIGHTS_ONLY: 5.0}, INT8),  # int8 10 % faster: beyond the noise
        ({INT8: 5.0, WEIGHTS_ONLY: 4.0, DYNAMIC: 4.9}, WEIGHTS_ONLY),
        ({INT8: 5.0, WEIGHTS_ONLY: 4.0, DYNAMIC: 2.0}, DYNAMIC),
        ({INT8: 5.0, WEIGHTS_ONLY: 6.0, DYNAMIC: 7.0}, INT8),
        ({INT8: 0.020, WEIGHTS_ONLY: 0.038}, WEIGHTS_ONLY),  # 0.018 ms apart: under the floor
        ({INT8: 0.08, WEIGHTS_ONLY: 0.13}, INT8),  # the digits CNN: 0.05 ms is beyond it
        # margins do not chain: dynamic beats weights-only but only ties int8
        ({WEIGHTS_ONLY: 1.0, INT8: 0.975, DYNAMIC: 0.96}, INT8),
    ],
)
def test_the_written_candidate_changes_only_beyond_the_noise(tried, written):
    assert _fastest(tried) == written


@pytest.mark.parametrize(
    ("tried", "written"),
    [
        # too few runs to tell a tie: int8, the model the plan made, stays ...
        ({INT8: 5.0, WEIGHTS_ONLY: 4.99}, INT8),
        ({WEIGHTS_ONLY: 5.0, INT8: 5.1}, INT8),
        # ... unless another ran faster beyond the noise
        ({INT8: 5.0, WEIGHTS_ONLY: 4.0}, WEIGHTS_ONLY),
        ({INT8: 5.0, WEIGHTS_ONLY: 5.0, DYNAMIC: 2.0}, DYNAMIC),
    ],
)
def test_an_unresolved_timing_keeps_int8_on_a_tie(tried, written):
    assert _fastest(tried, resolved=False) == written


@pytest.mark.parametrize(
    ("tried", "written"),
    [
        ({INT8: 0.97, WEIGHTS_ONLY: 1.0}, WEIGHTS_ONLY),  # MiniLM: 3 % is not worth it
        ({INT8: 0.92, WEIGHTS_ONLY: 1.0}, WEIGHTS_ONLY),
        ({INT8: 0.90, WEIGHTS_ONLY: 1.0}, INT8),  # 11 % faster: written
        ({INT8: 0.66, WEIGHTS_ONLY: 1.0}, INT8),  # the conv models
        ({INT8: 1.0, WEIGHTS_ONLY: 0.95}, WEIGHTS_ONLY),
    ],
)
def test_balanced_writes_int8_only_when_it_is_ten_percent_faster(tried, written):
    """``balanced`` asks int8 to be 10 % faster than the weights-only model (quantized
    activations cost accuracy); ``latency`` only that it be faster beyond the noise."""
    assert _fastest(tried, gain=worth(OptimizeFor.BALANCED)) == written
    assert _fastest({INT8: 0.97, WEIGHTS_ONLY: 1.0}, gain=worth(OptimizeFor.LATENCY)) == INT8
    assert _fastest({INT8: 0.92, WEIGHTS_ONLY: 1.0}, gain=worth(OptimizeFor.LATENCY)) == INT8
    # too few runs to tell: int8 stays unless the weights-only model is faster beyond noise
    assert _fastest({INT8: 1.0, WEIGHTS_ONLY: 0.95}, resolved=False, gain=1.1) == WEIGHTS_ONLY


def test_measure_latency_in_blocks_alternates_and_warms_each_block():
    from onnxq.runtime import measure_latency

    calls: list[str] = []

    class Counting:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, feed):
            calls.append(self.name)

    a, b = Counting("a"), Counting("b")
    medians = measure_latency([a, b], {}, warmup=0, runs=10, block=5)  # type: ignore[list-item]
    assert len(medians) == 2
    # two rounds; each block: one untimed run then five timed, the models in turn
    assert calls == (["a"] * 6 + ["b"] * 6) * 2


def test_timing_stops_once_the_comparison_is_clear(monkeypatch):
    """A candidate twice as slow as float is decided after SETTLE_RUNS runs, not the
    whole budget."""
    import onnxq.stages.timing as latency

    class Sleeping:
        def __init__(self, ms: float) -> None:
            self.ms, self.calls = ms, 0

        def run(self, feed):
            self.calls += 1
            time.sleep(self.ms / 1000.0)

    monkeypatch.setattr(latency, "BUDGET_MS", 400.0)
    fast, slow = Sleeping(1.0), Sleeping(2.0)
    float_ms, tried, runs = latency.timed(fast, {INT8: slow}, {})  # type: ignore[arg-type]
    assert runs == latency.SETTLE_RUNS and tried[INT8] > 1.5 * float_ms
    # 20 timed + 4 untimed (one per block) + a warm-up + a warm run that prices one run
    assert slow.calls == runs + runs // latency.BLOCK + 2


def _rounds(*blocks: tuple[float, ...]) -> list[list[float]]:
    """Per model, the runs of rounds whose block medians are given (one tuple per model)."""
    return [[v for v in values for _ in range(5)] for values in blocks]


def test_settled_by_far_apart_medians_or_by_a_streak_of_agreeing_rounds():
    from onnxq.stages.timing import BLOCK, STREAK, _settled

    assert BLOCK == 5
    far = _rounds((1.0,) * 4, (2.0,) * 4)
    assert _settled(far)  # 2x apart: clear after four rounds
    # 12 % apart (PP-OCR cls): every round says slower, so STREAK rounds settle it
    near = _rounds((1.21,) * STREAK, (1.36,) * STREAK)
    assert _settled(near) and not _settled([t[:-BLOCK] for t in near])
    # a tie, within 1 % every round, is an answer too
    assert _settled(_rounds((1.00, 1.01) * 3, (1.005, 1.0) * 3))
    # rounds falling either side of the 3 % threshold: not settled however many
    flipping = _rounds((1.0,) * 12, (1.05, 1.01) * 6)
    assert not _settled(flipping)
    # one late round against the others breaks the streak
    late = _rounds((1.21,) * 8, (1.36,) * 7 + (1.22,))
    assert not _settled(late)
    # tiny models apart by about the noise floor (0.13 vs 0.18 ms): timed in full
    assert not _settled(_rounds((0.13,) * 12, (0.18,) * 12))
    # candidates are compared with each other, and the fastest with float (the report says
    # whether the written model is slower than float): a tie with float needs its streak
    assert not _settled(_rounds((1.0,) * 4, (2.0,) * 4, (2.1,) * 4))
    assert not _settled(_rounds((1.0,) * 4, (2.0,) * 4, (1.01,) * 4))
    assert _settled(_rounds((1.0,) * STREAK, (2.0,) * STREAK, (1.01,) * STREAK))
    assert _settled(_rounds((1.0,) * 4, (2.0,) * 4, (0.5,) * 4))  # all far apart


def test_a_dynamic_model_written_by_latency_carries_its_own_check_result(wide_files, monkeypatch):
    """``latency`` writes the dynamic model when it ran fastest; the output check had
    searched the int8 model, so the written model is measured on the check samples itself
    and the report's ``after`` is that measurement."""
    import onnxq.stages.latency as latency_stage
    from onnxq.tuning.check import CheckSet

    timed = latency_stage.timed
    made: list[set[str]] = []
    runner = CheckSet.runner

    def timing(floats, sessions, feed, *margin):  # the dynamic model 1 ms faster than anything
        float_ms, tried, runs = timed(floats, sessions, feed, *margin)
        slowest = max(float_ms, *tried.values())
        return slowest, {k: slowest - (1.0 if k is DYNAMIC else 0.0) for k in tried}, runs

    def recording(self, model, **kwargs):
        made.append({n.op_type for n in model.graph.node})
        return runner(self, model, **kwargs)

    monkeypatch.setattr(latency_stage, "timed", timing)
    monkeypatch.setattr(CheckSet, "runner", recording)
    config = QuantConfig(target=FidelityTarget(sqnr_db=20), optimize_for=OptimizeFor.LATENCY)
    out = wide_files / "latency_checked.onnx"
    report = quantize(wide_files / "wide.onnx", out, config, data=wide_files / "data.npz")
    lat = report.latency
    assert lat is not None and lat.written == DYNAMIC
    assert "DynamicQuantizeLinear" in made[-1] and "QuantizeLinear" not in made[-1]
    assert report.check is not None and not report.check.float_tensors
    feed = {"input": np.random.default_rng(4).normal(size=(1, ROWS, COLS)).astype(np.float32)}
    ref, got = run(thin_matmuls(), feed)[0], run(onnx.load(str(out)), feed)[0]
    sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    # the reported measurement is of this model: within a few dB of its SQNR here
    assert abs(report.check.after.sqnr_db - sqnr) < 3.0


def test_int8_written_after_the_weights_only_timing_has_its_session_back(cnn_files, monkeypatch):
    """While the weights-only model is timed alone against float, int8's session is
    unloaded (its memory free for the other's load); when int8 is written after all (the
    weights-only model timed slower than it), the session is loaded again and the written
    model is evaluated in it."""
    import onnxq.stages.latency as latency_stage

    timed = latency_stage.timed
    seen: list[tuple[str, ...]] = []

    def timing(floats, sessions, feed, *margin):
        seen.append(tuple(k.value for k in sessions))
        float_ms, tried, runs = timed(floats, sessions, feed, *margin)
        if WEIGHTS_ONLY in tried:  # the weights-only model much slower than float
            return float_ms, {WEIGHTS_ONLY: 3.0 * float_ms + 1.0}, 1000
        return float_ms, dict.fromkeys(tried, float_ms), 1000  # int8 ties float

    monkeypatch.setattr(latency_stage, "timed", timing)
    monkeypatch.setattr(
        latency_stage, "_float_kernels", lambda sessions, candidates, floats, data: ()
    )
    out = cnn_files["dir"] / "q3.onnx"
    config = QuantConfig(target=FidelityTarget(sqnr_db=0))
    report = quantize(cnn_files["model"], out, config, data=cnn_files["data"])
    assert seen == [("int8",), ("weights-only",)]  # int8 not timed with it again
    lat = report.latency
    assert lat is not None and lat.written == INT8
    # evaluated from the check's runs, which ran in that session: it was loaded again
    assert report.fidelity is not None and report.fidelity.samples == 64
    assert report.runtime.integer_kernels > 0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_the_timing_settles_the_answer_the_choice_asks():
    """int8 at 0.91x float: 3 % faster in every block, but 10 % faster only in some. The
    timing's streak must not call that settled when the choice asks 10 %."""
    from onnxq.stages.timing import BLOCK, STREAK, _agreeing

    rounds = STREAK + 1
    a = [1.0] * (BLOCK * rounds)  # float
    b = [0.91 + (0.02 if r % 2 else -0.02) for r in range(rounds) for _ in range(BLOCK)]
    assert _agreeing(a, b)  # faster by 3 % in every round
    assert not _agreeing(a, b, worth(OptimizeFor.BALANCED))  # by 10 %: rounds disagree
    # int8 slower (float at 0.89-0.93x of it): whether float is 10 % faster is asked by
    # nothing, so its flipping rounds do not keep the timing going (magika: 70 runs)
    assert _agreeing(b, a, worth(OptimizeFor.BALANCED))


def test_the_report_names_the_margin_that_decided():
    """int8 at 1.02x float and the weights-only model 5 % faster than it: a resolved
    balanced timing keeps weights-only because int8 is not 10 % faster; a timing of too
    few runs decided at the noise margin (3 %), and the report says so, not 10 %."""
    tried = {INT8: 10.2, WEIGHTS_ONLY: 9.7}
    for resolved, said in ((True, "not faster by 10 %"), (False, "not faster by 3 %")):
        written = _fastest(tried, resolved=resolved, gain=worth(OptimizeFor.BALANCED))
        assert written is WEIGHTS_ONLY
        check = LatencyCheck(OptimizeFor.BALANCED, 10.0, tried, written, 5, resolved=resolved)
        assert said in check.describe(), check.describe()
