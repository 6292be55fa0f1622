"""Task metrics (onnxq/report/task): each family against hand-computed values, the option
and file syntax, custom metrics, the per-part rule, and compare's gates on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from onnxq.cli.main import cli
from onnxq.errors import ConfigError
from onnxq.metrics_config import MetricSpec, Part
from onnxq.report.task import (
    MetricKind,
    TaskMeter,
    TaskTarget,
    parse_goal,
    parse_metric,
    target_from_document,
)
from onnxq.report.task.families import (
    ClassifyStats,
    CtcStats,
    DetectStats,
    EmbedStats,
    FidelityStats,
    MaskStats,
    ctc_greedy,
    edit_distance,
)
from onnxq.report.task.parts import PartStats, split_parts


def meter(*specs: str, outputs=("out",)) -> TaskMeter:
    return TaskMeter(TaskTarget(tuple(parse_metric(s) for s in specs)), outputs)


# ----------------------------------------------------------------------------- families


def test_classify_top1_topk_and_accuracy_by_hand():
    ref = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    cand = np.array([[0.1, 0.6, 0.3], [0.3, 0.5, 0.2], [0.7, 0.1, 0.2]])
    s = ClassifyStats(k=2)
    s.update(ref, cand, np.array([1, 0, 0]))
    r = s.result()
    assert r["top1_agreement"] == pytest.approx(1 / 3)  # only row 0 agrees
    # reference top-1 within the candidate's top 2: rows 0 and 1 (class 0 second), row 2 no
    # (candidate's top 2 are 0 and 2: class 2 is there) -> all three
    assert r["top2_agreement"] == pytest.approx(1.0)
    assert r["accuracy_reference"] == pytest.approx(2 / 3)  # rows 0 and 1
    assert r["accuracy_candidate"] == pytest.approx(2 / 3)  # rows 0 and 2


def test_classify_nan_row_never_agrees():
    s = ClassifyStats(k=1)
    s.update(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[np.nan, 0.0], [0.0, 1.0]]), None)
    assert s.result()["top1_agreement"] == 0.5


def test_mask_iou_by_hand():
    ref = np.array([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]])
    cand = np.array([[0.9, 0.1, 0.9, 0.1], [0.1, 0.1, 0.1, 0.1]])
    s = MaskStats(0.5)
    s.update(ref, cand, None)
    r = s.result()
    assert r["iou"] == pytest.approx(1 / 3)  # 1 shared pixel of 3 in the union
    assert r["mean_image_iou"] == pytest.approx((1 / 3 + 1.0) / 2)  # empty masks: 1
    assert r["min_image_iou"] == pytest.approx(1 / 3)


def one_hot(indices: list[list[int]], symbols: int) -> np.ndarray:
    return np.eye(symbols)[np.asarray(indices)]


def test_ctc_greedy_decoding_and_agreement_by_hand(tmp_path):
    # steps: a a blank a b -> "aab"; the candidate reads a blank b b b -> "ab"
    assert ctc_greedy(one_hot([[1, 1, 0, 1, 2]], 3)) == [(1, 1, 2)]
    charset = tmp_path / "dict.txt"
    charset.write_text("a\nb\n", encoding="utf-8")
    m = meter(f"ctc:charset={charset}")
    ref = one_hot([[1, 1, 0, 1, 2], [2, 2, 2, 0, 0]], 3)
    cand = one_hot([[1, 0, 2, 2, 2], [2, 0, 0, 0, 0]], 3)
    m.update({"out": ref}, {"out": cand})
    r = m.result()
    assert r["ctc.string_agreement"] == 0.5  # "b" == "b"; "aab" != "ab"
    assert r["ctc.cer"] == pytest.approx(1 / 4)  # one deletion over 3 + 1 characters


def test_ctc_space_and_blank_index(tmp_path):
    charset = tmp_path / "dict.txt"
    charset.write_text("x\n", encoding="utf-8")
    # blank last (index 2): table is ["x", " ", blank]... with space: x, blank, then " "
    m = meter(f"ctc:charset={charset},blank=1,space=true")
    ref = one_hot([[0, 2, 1, 0]], 3)  # x, space, blank, x -> "x x"
    m.update({"out": ref}, {"out": ref})
    assert m.result()["ctc.string_agreement"] == 1.0
    stats = CtcStats(["x", "", " "], blank=1)
    assert stats._text((0, 2, 0)) == "x x"


@given(
    st.lists(st.integers(0, 3), max_size=8),
    st.lists(st.integers(0, 3), max_size=8),
)
def test_edit_distance_is_a_metric(a, b):
    d = edit_distance(a, b)
    assert d == edit_distance(b, a)
    assert (d == 0) == (a == b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))


def test_embed_cosine_retrieval_and_recall_by_hand():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    s = EmbedStats(k=2)
    s.update(ref, cand, None)
    r = s.result()
    cos1 = 0.1 / math.hypot(0.9, 0.1)
    cos2 = 0.9 / math.hypot(0.1, 0.9)
    assert r["cosine"] == pytest.approx((1 + cos1 + cos2) / 3)
    # nearest other: ref 0->1, 1->0, 2->1; cand 0->2, 1->2, 2->1: one agrees (row 2)
    assert r["retrieval_agreement"] == pytest.approx(1 / 3)
    # ref's nearest among cand's two others (every other row of three): always
    assert r["recall_at_2"] == 1.0


def test_fidelity_of_a_slice_by_hand():
    m = meter("fidelity:slice=1:,name=scores")
    ref = np.array([[100.0, 1.0, 1.0]])
    cand = np.array([[100.0, 1.0, 0.0]])
    m.update({"out": ref}, {"out": cand})
    r = m.result()
    assert r["scores.sqnr_db"] == pytest.approx(10 * math.log10(2.0))
    assert r["scores.cosine"] == pytest.approx(1 / math.sqrt(2))


def test_detect_topk_score_cosine_peak_and_boxes_by_hand():
    # [batch 1, rows 4 boxes + 2 classes, anchors 3]
    boxes = np.array([[10, 50, 90], [10, 50, 90], [8, 8, 8], [8, 8, 8]], np.float64)
    scores_r = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.3]])
    scores_c = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.6]])
    ref = np.concatenate([boxes, scores_r])[None]
    cand = np.concatenate([boxes + np.array([[1], [0], [0], [0]]), scores_c])[None]
    spec = MetricSpec(MetricKind.DETECT, part=Part(1, 4, None), k=2, boxes=Part(1, 0, 4))
    s = DetectStats(spec)
    s.update(ref, cand, None)
    r = s.result()
    # peaks: ref 0.9, 0.8, 0.3 -> top 2 anchors {0, 1}; cand 0.9, 0.2, 0.6 -> {0, 2}
    assert r["top2_agreement"] == 0.5
    flat_r, flat_c = scores_r.T.reshape(-1), scores_c.T.reshape(-1)
    cos = flat_r @ flat_c / np.linalg.norm(flat_r) / np.linalg.norm(flat_c)
    assert r["score_cosine"] == pytest.approx(cos)
    assert r["peak_error"] == 0.0  # both peak at 0.9
    assert r["box_error"] == pytest.approx(2 / 8)  # x off by 1 at the 2 top anchors
    # decoded at conf 0.25: ref anchors 0 (class 0), 1 (class 1), 2 (class 1);
    # cand anchors 0 (class 0), 2 (class 1): 2 matches; P = 1, R = 2/3
    assert r["box_f1"] == pytest.approx(2 * (2 / 3) / (1 + 2 / 3))


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float64, (6, 5), elements=st.floats(-4, 4)),
    arrays(np.float64, (6, 5), elements=st.floats(-4, 4)),
    st.integers(1, 5),
)
def test_streaming_equals_one_pass(ref, cand, cut):
    """Batch by batch or all at once: the same numbers (bounded-memory accumulators)."""
    for make in (
        lambda: ClassifyStats(2),
        lambda: MaskStats(0.5),
        lambda: FidelityStats(),
        lambda: EmbedStats(2),
    ):
        whole, parts = make(), make()
        whole.update(ref, cand, None)
        parts.update(ref[:cut], cand[:cut], None)
        parts.update(ref[cut:], cand[cut:], None)
        a, b = whole.result(), parts.result()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], nan_ok=True), key


# ----------------------------------------------------------------------------- declaration


def test_option_syntax():
    s = parse_metric("detect:output=y,slice=4:,boxes=0:4,k=20,format=xyxy,name=det")
    assert s.kind is MetricKind.DETECT and s.output == "y" and s.name == "det"
    assert s.part == Part(1, 4, None) and s.boxes == Part(1, 0, 4) and s.k == 20
    assert parse_metric("pkg.mod:my_fn").function == "pkg.mod:my_fn"
    assert parse_metric("pkg.mod:my_fn").name == "my_fn"
    assert parse_goal("ctc.cer=0.02", at_least=False).met(0.01)
    for bad in ("ctc:nope=1", "detect:k=x", "mask:threshold=2", "classify:slice=3", "zzz"):
        with pytest.raises(ConfigError):
            parse_metric(bad)
    with pytest.raises(ConfigError, match="names no declared metric"):
        TaskTarget((parse_metric("ctc"),), (parse_goal("mask.iou=0.9"),))


def test_metric_file_declares_metrics_and_goals(tmp_path):
    doc = {
        "metric": [
            {"kind": "ctc", "output": "probs", "charset": "dict.txt", "space": True},
            {"function": "m:f"},
        ],
        "min": {"ctc.string_agreement": 0.95},
        "max": {"ctc.cer": 0.02},
    }
    t = target_from_document(doc, tmp_path / "metrics.toml")
    assert t.metrics[0].charset == tmp_path / "dict.txt" and t.metrics[0].space
    assert t.metrics[1].kind is MetricKind.CUSTOM
    assert [(g.name, g.at_least) for g in t.goals] == [
        ("ctc.string_agreement", True),
        ("ctc.cer", False),
    ]
    with pytest.raises(ConfigError, match="unknown key"):
        target_from_document({"metrics": []}, tmp_path / "m.toml")


CUSTOM = """
import numpy as np

def max_gap(reference, candidate):
    gap = max(float(np.abs(reference[k] - candidate[k]).max()) for k in reference)
    return {"max_gap": gap, "samples": len(next(iter(reference.values())))}
"""


def test_custom_metric_from_a_file_sees_every_sample(tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text(CUSTOM)
    m = meter(f"{path}:max_gap")
    for shift in (0.5, 2.0):
        m.update({"out": np.zeros((3, 2))}, {"out": np.full((3, 2), shift)})
    assert m.result() == {"max_gap.max_gap": 2.0, "max_gap.samples": 6.0}


def test_custom_metric_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot import"):
        meter("no_such_module_xyz:f")
    path = tmp_path / "m.py"
    path.write_text("def f(a, b):\n    return {'x': 'text'}\n")
    with pytest.raises(ConfigError, match="has no function"):
        meter(f"{path}:g")
    m = meter(f"{path}:f")
    m.update({"out": np.zeros((1, 1))}, {"out": np.zeros((1, 1))})
    with pytest.raises(ConfigError, match="not a number"):
        m.result()


# ----------------------------------------------------------------------------- per-part rule


def test_split_rule():
    assert split_parts([640.0, 1.0])
    assert not split_parts([2.0, 1.0])
    assert not split_parts([640.0, 0.0])  # an all-zero part has nothing to lose


def two_range_head(scale: float = 1.0) -> onnx.ModelProto:
    """x [N, 6, 8] -> Concat(x[:, :4] * 300 (boxes), Sigmoid(x[:, 4:]) * scale) on axis 1."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["box_in"]),
        helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["cls_in"]),
        helper.make_node("Mul", ["box_in", "k"], ["boxes"]),
        helper.make_node("Sigmoid", ["cls_in"], ["sig"]),
        helper.make_node("Mul", ["sig", "scale"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("s0", [0]), ("e0", [4]), ("s1", [4]), ("e1", [6]), ("ax", [1]))
    ] + [
        numpy_helper.from_array(np.array(300.0, np.float32), "k"),
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", f, ["N", 6, 8])],
        [helper.make_tensor_value_info("y", f, ["N", 6, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_whole_tensor_sqnr_passes_where_the_small_part_fails():
    rng = np.random.default_rng(0)
    x = rng.random((16, 6, 8)).astype(np.float32)
    from helpers import run

    ref, cand = run(two_range_head(), {"x": x})[0], run(two_range_head(0.8), {"x": x})[0]
    whole = FidelityStats()
    whole.update(ref, cand, None)
    assert whole.result()["sqnr_db"] > 30  # the boxes' energy hides the scores' loss
    parts = PartStats("y", (Part(1, 0, 4), Part(1, 4, 6)))
    parts.update(ref, cand)
    judged = parts.result()
    assert [p.part for p in judged] == [Part(1, 0, 4), Part(1, 4, 6)]
    assert judged[0].sqnr_db == math.inf and judged[1].sqnr_db == pytest.approx(
        20 * math.log10(1 / 0.2), abs=0.01
    )


def test_output_check_judges_the_worst_part():
    from onnxq.data import as_source
    from onnxq.graph.model_io import input_specs
    from onnxq.runtime import Runner
    from onnxq.tuning.check import make_check_set

    from helpers import float_session

    rng = np.random.default_rng(0)
    x = rng.random((16, 6, 8)).astype(np.float32)
    model = two_range_head()
    data = as_source({"x": x}, None).open(input_specs(model))
    check = make_check_set(float_session(model), data)
    assert check.parts == {"y": (Part(1, 0, 4), Part(1, 4, 6))}
    result = check.run(Runner(two_range_head(0.8)))
    assert set(result.noise) == {"y[0:4, axis 1]", "y[4:6, axis 1]"}
    assert result.sqnr_db == pytest.approx(20 * math.log10(1 / 0.2), abs=0.01)


# ----------------------------------------------------------------------------- compare CLI


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def head_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(two_range_head(), str(ref))
    onnx.save(two_range_head(0.8), str(cand))
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((12, 6, 8)).astype(np.float32))
    return {"ref": ref, "cand": cand, "data": data, "dir": tmp_path}


def compare_args(f: dict[str, Path], *extra: object) -> list[object]:
    return ["compare", f["ref"], f["cand"], "--data", f["data"], "--latency-runs", 0, *extra]


def test_compare_gates_on_a_declared_metric(head_files):
    metric = ("--metric", "fidelity:slice=4:,name=scores")
    ok = invoke(*compare_args(head_files, *metric, "--min-metric", "scores.cosine=0.9", "--json"))
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["task_metrics"]["scores.cosine"] > 0.99
    assert doc["goals"][0]["met"] and doc["ok"]
    bad = invoke(*compare_args(head_files, *metric, "--min-metric", "scores.sqnr_db=30"))
    assert bad.exit_code == 1
    assert "scores.sqnr_db ≥ 30 not met" in bad.stderr and "task metrics" in bad.stdout
    unknown = invoke(*compare_args(head_files, *metric, "--min-metric", "scores.nope=1"))
    assert unknown.exit_code == 2 and "no metric value is named 'scores.nope'" in unknown.stderr
    undeclared = invoke(*compare_args(head_files, "--min-metric", "ctc.cer=1"))
    assert undeclared.exit_code == 2 and "names no declared metric" in undeclared.stderr


def test_compare_reads_a_metric_file_and_a_custom_function(head_files):
    d = head_files["dir"]
    (d / "gap_metric.py").write_text(CUSTOM)
    (d / "metrics.toml").write_text(
        f'[[metric]]\nfunction = "{d / "gap_metric.py"}:max_gap"\n\n'
        '[max]\n"max_gap.max_gap" = 0.01\n'
    )
    r = invoke(*compare_args(head_files, "--metric-file", d / "metrics.toml", "--json"))
    assert r.exit_code == 1, r.output  # the scores move by up to 0.2
    doc = json.loads(r.stdout)
    assert 0.05 < doc["task_metrics"]["max_gap.max_gap"] <= 0.2


def test_compare_applies_min_sqnr_to_each_part(head_files):
    r = invoke(*compare_args(head_files, "--min-sqnr", "30", "--json"))
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["outputs"][0]["sqnr_db"] > 30  # the whole tensor passes
    assert [p["start"] for p in doc["parts"]] == [0, 4]
    assert any("y[4:6, axis 1]" in v for v in doc["violations"])


# ----------------------------------------------------------------------------- quantize


def test_quantize_output_check_targets_the_declared_metric(cnn_files):
    out = cnn_files["dir"] / "q.onnx"
    args = ["quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"], "--json"]
    args += ["--optimize-for", "size"]  # int8: balanced writes this tiny model weights-only
    goal = ("--metric", "fidelity", "--min-metric", "fidelity.sqnr_db=45")
    r = invoke(*args, *goal)
    assert r.exit_code == 0, r.output
    check = json.loads(r.stdout)["output_check"]
    assert check["target"] == {"task_metrics": {"fidelity.sqnr_db": {"min": 45.0}}}
    before = check["before"]["task_metrics"]["fidelity.sqnr_db"]
    after = check["after"]["task_metrics"]["fidelity.sqnr_db"]
    assert before < 45  # int8 misses it as planned
    assert after > before and (check["float_nodes"] or check["float_tensors"])
    assert check["met"] == (after >= 45)
    easy = invoke(*args, "--metric", "classify", "--min-metric", "classify.top1_agreement=0")
    check = json.loads(easy.stdout)["output_check"]
    assert check["met"] and not check["float_nodes"] and not check["float_tensors"]
    assert "classify.top1_agreement" in check["before"]["task_metrics"]


def test_markdown_report_lists_task_metrics_and_parts(head_files):
    from onnxq.report.compare import compare
    from onnxq.report.markdown import render_markdown
    from onnxq.report.page import compare_page

    target = TaskTarget((parse_metric("fidelity:slice=4:,name=scores"),))
    report = compare(
        head_files["ref"], head_files["cand"], head_files["data"], latency_runs=0, task=target
    )
    text = render_markdown(compare_page(report))
    assert "| scores.sqnr_db | 13.98 |" in text
    assert "| SQNR of y[4:6, axis 1] | 13.98 dB |" in text


def test_detect_topk_agreement_reaches_one_with_fewer_anchors_than_k():
    # 3 anchors, k=20: identical outputs agree fully (k counts as the anchors there are)
    head = np.random.default_rng(3).random((2, 6, 3))
    s = DetectStats(MetricSpec(MetricKind.DETECT, part=Part(1, 4, None), k=20))
    s.update(head, head, None)
    assert s.result()["top20_agreement"] == 1.0


def test_detect_parts_are_checked():
    with pytest.raises(ConfigError, match="boxes= needs slice="):
        parse_metric("detect:boxes=0:4")
    m = meter("detect:slice=3:,boxes=0:3")
    head = np.zeros((1, 6, 5))
    with pytest.raises(ConfigError, match="selects 3 rows of axis 1, not 4"):
        m.update({"out": head}, {"out": head})
    with pytest.raises(ConfigError, match="is empty"):
        meter("detect:slice=9:").update({"out": head}, {"out": head})


def test_metric_file_custom_function_resolves_beside_the_file(tmp_path):
    t = target_from_document({"metric": [{"function": "gap.py:max_gap"}]}, tmp_path / "m.toml")
    assert t.metrics[0].function == f"{tmp_path / 'gap.py'}:max_gap"


def test_quantize_refuses_a_goal_naming_no_measured_value(cnn_files):
    out = cnn_files["dir"] / "typo.onnx"
    r = invoke(
        "quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"],
        "--metric", "classify", "--min-metric", "classify.top1_agreemnt=0.9",
    )  # fmt: skip
    assert r.exit_code == 2 and "no metric value is named 'classify.top1_agreemnt'" in r.stderr
    assert not out.exists()


def test_quantize_refuses_goals_where_no_output_check_runs(cnn_files):
    goal = ("--metric", "classify", "--min-metric", "classify.top1_agreement=0.9")
    out = cnn_files["dir"] / "never.onnx"
    dyn = invoke("quantize", cnn_files["model"], "-o", out, "--mode", "dynamic", *goal)
    assert dyn.exit_code == 2 and "--mode dynamic does not run" in dyn.stderr
    ranges = cnn_files["dir"] / "r.json"
    calibrated = invoke("calibrate", cnn_files["model"], "--data", cnn_files["data"], "-o", ranges)
    assert calibrated.exit_code == 0, calibrated.output
    no_data = invoke("quantize", cnn_files["model"], "-o", out, "--ranges", ranges, *goal)
    assert no_data.exit_code == 2 and "runs on --data" in no_data.stderr
    assert not out.exists()


def test_a_task_goal_checks_enough_samples_to_count(tmp_path):
    from onnxq.calibration.collect import FloatSession
    from onnxq.data.dataset import open_dataset
    from onnxq.graph.model_io import input_specs
    from onnxq.report.task import MetricGoal
    from onnxq.tuning.check import TASK_SAMPLES, make_check_set

    import models

    w = np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32)
    model = models._model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["y"], name="gap"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 320, 320])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    x = np.random.default_rng(1).random((40, 3, 320, 320), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    floats = FloatSession(model)
    plain = make_check_set(floats, data)
    goal = TaskTarget((parse_metric("fidelity"),), (MetricGoal("fidelity.cosine", 0.99),))
    aimed = make_check_set(floats, data, task=goal)
    assert plain.samples == 6  # 2e6 input values: six images of 3x320x320
    assert aimed.samples >= TASK_SAMPLES
