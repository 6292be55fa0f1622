"""``onnxq diagnose``: per-tensor error of a quantized model against its float model, the
tensor record written by quantize and the structural fallback, node sensitivity and the
recipe it writes, on the sample model with real onnxruntime sessions."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxq
from onnxq.cli.main import cli
from onnxq.config import OptimizeFor, QuantConfig
from onnxq.graph.metadata import TENSORS_KEY
from onnxq.graph.qdq_points import recorded_tensors
from onnxq.recipe import read_recipe
from onnxq.report.diagnose import diagnose
from onnxq.stages.prepare import prepare

from conftest import SAMPLES

FLOAT = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
EVAL = SAMPLES / "digits_eval.npz"
LIMIT = 128  # samples compared in these tests (whole batches of 32)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The sample model quantized with default settings, int8 whatever the timing finds
    (``balanced`` may write the weights-only model on a machine where int8 is no faster)."""
    out = tmp_path_factory.mktemp("diagnose") / "digits.int8.onnx"
    onnxq.quantize(FLOAT, out, data=CALIB, config=QuantConfig(optimize_for=OptimizeFor.SIZE))
    return out


@pytest.fixture(scope="module")
def report(quantized):
    return diagnose(FLOAT, quantized, EVAL, limit=LIMIT)


def _without_record(path, target):
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != TENSORS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(target))
    return target


def test_quantize_records_every_quantized_activation(quantized):
    model = onnx.load(str(quantized))
    record = recorded_tensors(model)
    assert record is not None
    produced = {o for n in model.graph.node for o in n.output}
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    # each key is an integer tensor of the model: a QuantizeLinear output or the output of
    # an op running on the integers (MaxPool, Flatten)
    assert set(record) <= produced
    assert {made_by[k] for k in record} == {"QuantizeLinear", "MaxPool", "Flatten"}
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == sum(
        made_by[k] == "QuantizeLinear" for k in record
    )
    assert record["input_quantized"] == "input"


def test_every_quantized_activation_listed_worst_first(report, quantized):
    record = recorded_tensors(onnx.load(str(quantized)))
    assert report.matching == "record" and report.unmatched == ()
    assert {e.tensor for e in report.layers} == set(record.values())
    assert len(report.layers) == 12
    owns = [e.own_sqnr_db for e in report.layers]
    assert owns == sorted(owns)
    first = next(e for e in report.layers if e.tensor == "input")  # nothing before it
    assert first.sqnr_db == pytest.approx(first.own_sqnr_db, rel=1e-3)
    assert report.samples == LIMIT
    for e in report.layers:
        assert e.range_min <= 0 <= e.range_max  # zero is exact on an asym grid
        assert e.observed_min <= e.observed_max
        assert 0.0 <= e.clipped_share < 0.01 and e.cosine > 0.999


def _fetch(model, names, feed, types=None):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        elem = (types or {}).get(name, onnx.TensorProto.FLOAT)
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feed), strict=True))


def test_sqnr_cosine_and_error_match_numpy(report, quantized):
    """One tensor measured directly: the float model's value against the DequantizeLinear
    output of the quantized model (the codes times the scale, in onnxruntime)."""
    e = next(x for x in report.layers if x.tensor == "/res_a/Conv_output_0")
    feed = {"input": np.load(EVAL)["input"][:LIMIT]}
    prepared = prepare(onnx.load(str(FLOAT))).model
    ref = _fetch(prepared, [e.tensor], feed)[e.tensor].astype(np.float64)
    q = onnx.load(str(quantized))
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == e.codes)
    got = _fetch(q, [dq.output[0]], feed)[dq.output[0]].astype(np.float64)
    sqnr = 10 * math.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    cosine = np.sum(ref * got) / math.sqrt(np.sum(ref**2) * np.sum(got**2))
    assert e.sqnr_db == pytest.approx(sqnr, rel=1e-6)
    assert e.cosine == pytest.approx(cosine, rel=1e-9)
    assert e.max_abs_error == pytest.approx(float(np.abs(ref - got).max()), rel=1e-6)
    assert e.values == ref.size
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    scale, zp = float(inits[dq.input[1]]), int(inits[dq.input[2]])
    assert (e.range_min, e.range_max) == pytest.approx(((0 - zp) * scale, (255 - zp) * scale))
    own = (np.clip(np.rint(ref.astype(np.float32) / np.float32(scale)) + zp, 0, 255) - zp) * scale
    own_sqnr = 10 * math.log10(np.sum(ref**2) / np.sum((ref - own) ** 2))
    assert e.own_sqnr_db == pytest.approx(own_sqnr, rel=1e-6)


def test_structural_fallback_without_the_record(report, quantized, tmp_path):
    bare = _without_record(quantized, tmp_path / "bare.onnx")
    found = diagnose(FLOAT, bare, EVAL, limit=LIMIT)
    assert found.matching == "structure"
    by_tensor = {e.tensor: e for e in report.layers}
    # every tensor a DequantizeLinear makes is found; the two roots read only by ops on
    # the integers (Concat -> MaxPool, GlobalAveragePool -> Flatten) have none
    assert len(found.layers) == 10
    for e in found.layers:
        assert e.sqnr_db == pytest.approx(by_tensor[e.tensor].sqnr_db, rel=1e-9)
    assert "/Concat_output_0" not in {e.tensor for e in found.layers}


@pytest.mark.parametrize("factor", [100.0, 0.01])
def test_a_broken_scale_makes_its_tensor_the_worst(quantized, tmp_path, factor):
    """×100: a step 100 times too coarse (low SQNR); /100: a range 100 times too narrow
    (most values clipped)."""
    tensor = "/stem_relu/Relu_output_0"
    model = onnx.load(str(quantized))
    q = next(
        n
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == f"{tensor}_float"
    )
    init = next(t for t in model.graph.initializer if t.name == q.input[1])
    init.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name)
    )
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    worst = diagnose(FLOAT, broken, EVAL, limit=64).layers[0]
    assert worst.tensor == tensor
    if factor > 1:
        assert worst.sqnr_db < 20
    else:
        assert worst.clipped_share > 0.3 and worst.sqnr_db < 10


def test_sensitivity_recipe_round_trip_improves_the_output(quantized, tmp_path):
    recipe = tmp_path / "recipe.json"
    result = invoke(
        "diagnose", FLOAT, quantized, "--data", CALIB, "--limit", 64,
        "--recipe-out", recipe, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    sens = doc["sensitivity"]
    assert sens["method"].startswith("each quantized node alone")
    assert len(sens["nodes"]) == 10
    shares = [n["noise_share"] for n in sens["nodes"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)
    excluded = [r.match for r in read_recipe(recipe).rules]  # quantize reads it unchanged
    assert 1 <= len(excluded) <= 3 and excluded[0] == sens["nodes"][0]["name"]
    better = tmp_path / "better.onnx"
    result = invoke(
        "quantize", FLOAT, "-o", better, "--data", CALIB, "--recipe", recipe,
        "--optimize-for", "size", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    before = onnxq.compare(FLOAT, quantized, EVAL, latency_runs=0)
    after = onnxq.compare(FLOAT, better, EVAL, latency_runs=0)
    gain = after.fidelity.outputs[0].sqnr_db - before.fidelity.outputs[0].sqnr_db
    assert gain > 1.0  # 41.6 -> 43.3 dB on the held-out data


def test_json_document(quantized):
    result = invoke("diagnose", FLOAT, quantized, "--data", EVAL, "--limit", 32, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "onnxq-diagnose" and doc["schema_version"] == 1
    assert doc["data"]["samples"] == 32 and doc["matching"] == "record"
    assert doc["float"]["prepared"] is True and doc["sensitivity"] is None
    assert doc["settings"]["quantize"]["mode"] == "static"
    layer = doc["layers"][0]
    assert set(layer) == {
        "tensor", "codes", "qtype", "scale", "zero_point", "values", "sqnr_db", "own_sqnr_db",
        "cosine",
        "max_abs_error", "clipped_share", "range", "observed",
    }  # fmt: skip
    assert layer["qtype"] == "uint8" and set(layer["range"]) == {"min", "max"}


def test_table_lists_the_worst_first(quantized):
    result = invoke("diagnose", FLOAT, quantized, "--data", EVAL, "--limit", 32, "--top", 3)
    assert result.exit_code == 0, result.output
    assert "worst first" in result.stdout and "9 more" in result.stdout


def test_bad_inputs_exit_2_with_one_line(quantized, tmp_path):
    cases = [
        ("diagnose", tmp_path / "missing.onnx", quantized, "--data", EVAL),
        ("diagnose", FLOAT, quantized, "--data", tmp_path / "missing.npz"),
        ("diagnose", FLOAT, FLOAT, "--data", EVAL),  # nothing quantized in it
        ("diagnose", FLOAT, quantized, "--data", EVAL, "--recipe-out", quantized),
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def test_quantize_report_names_what_the_output_check_kept_float():
    from onnxq.cli.render import _check_line
    from onnxq.config import FidelityTarget
    from onnxq.tuning.check import CheckResult
    from onnxq.tuning.fit import FitReport

    before = CheckResult(128, {"logits": 10**-4.18}, {})
    after = CheckResult(128, {"logits": 10**-4.49}, {})
    kept = FitReport(
        FidelityTarget(sqnr_db=44), before, after, ("/Concat_output_0",), ("/fc/Gemm",), 28, 1
    )
    doc = kept.to_dict()
    assert doc["float_tensors"] == ["/Concat_output_0"] and doc["float_nodes"] == ["/fc/Gemm"]
    assert doc["reason"].startswith("kept float by the output check")
    assert "SQNR 41.8 dB" in doc["reason"] and "44 dB" in doc["reason"]
    line = _check_line(kept)
    assert "kept float by the output check: nodes /fc/Gemm" in line
    assert "activations /Concat_output_0" in line
    assert "--target-sqnr 0 keeps every choice" in line  # and how to keep what was asked
    assert "keeps every choice" not in _check_line(
        FitReport(FidelityTarget(sqnr_db=35), before, before, (), (), 0, 0)
    )
    nothing = FitReport(FidelityTarget(sqnr_db=35), before, before, (), (), 0, 0)
    assert nothing.reason is None and nothing.to_dict()["reason"] is None
