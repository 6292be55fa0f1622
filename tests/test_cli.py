"""The command line, driven with click's CliRunner: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxq.cli.main import cli


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_quantize_json_is_one_document_and_the_file_runs(cnn_files):
    out = cnn_files["dir"] / "q.onnx"
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        out,
        "--data",
        cnn_files["data"],
        "--labels",
        "labels",
        "--json",
        "--target-sqnr",
        "0",  # the plan as made (the output check has tests of its own)
        "--optimize-for",
        "size",  # int8 whatever the timing (a tiny model: balanced writes weights-only)
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "onnxq-quantize" and doc["quantized_nodes"] == 7
    assert doc["output_check"] is None
    assert doc["size"]["quantized_bytes"] == out.stat().st_size
    assert doc["runtime"]["integer_kernels"] >= 7
    assert doc["fidelity"]["outputs"][0]["cosine_mean"] > 0.999
    assert doc["fidelity"]["accuracy"]["output"] == "logits"
    onnx.checker.check_model(onnx.load(str(out)))


def test_quantize_report_file_matches_stdout(cnn_files):
    out, report = cnn_files["dir"] / "q.onnx", cnn_files["dir"] / "report.json"
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        out,
        "--data",
        cnn_files["data"],
        "--report",
        report,
        "--target-sqnr",
        "0",  # the plan as made, without the output check
        "--optimize-for",
        "size",
    )
    assert result.exit_code == 0
    assert "quantized nodes" in result.stdout
    assert json.loads(report.read_text())["quantized_nodes"] == 7


def test_human_output_has_no_colour_codes_when_piped(cnn_files):
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        cnn_files["dir"] / "q.onnx",
        "--data",
        cnn_files["data"],
    )
    assert "\x1b[" not in result.output


def test_calibrate_then_quantize_with_ranges(cnn_files):
    ranges, out = cnn_files["dir"] / "r.json", cnn_files["dir"] / "q.onnx"
    result = invoke(
        "calibrate",
        cnn_files["model"],
        "--data",
        cnn_files["data"],
        "-o",
        ranges,
        "--granularity",
        "channel",
        "--batch-size",
        "5",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing on stdout but requested output
    assert json.loads(ranges.read_text())["granularity"] == "channel"
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        out,
        "--ranges",
        ranges,
        "--eval",
        cnn_files["data"],
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fidelity"]["samples"] == 64


def test_compare_exit_codes_follow_thresholds(cnn_files):
    out = cnn_files["dir"] / "q.onnx"
    invoke("quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"])
    ok = invoke(
        "compare",
        cnn_files["model"],
        out,
        "--data",
        cnn_files["data"],
        "--labels",
        "labels",
        "--json",
        "--min-cosine",
        "0.99",
        "--latency-runs",
        "3",
    )
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["schema"] == "onnxq-compare" and doc["schema_version"] == 1 and doc["ok"]
    assert doc["latency"]["runs"] == 3 and doc["latency"]["reference_ms"] > 0
    assert doc["accuracy"]["reference"] == pytest.approx(doc["accuracy"]["candidate"], abs=0.1)
    bad = invoke(
        "compare",
        cnn_files["model"],
        out,
        "--data",
        cnn_files["data"],
        "--json",
        "--min-agreement",
        "100.0",
        "--min-sqnr",
        "90",
        "--latency-runs",
        "0",
    )
    assert bad.exit_code == 1
    doc = json.loads(bad.stdout)
    assert not doc["ok"] and any("--min-sqnr 90" in v for v in doc["violations"])
    assert "threshold violated" in bad.stderr


def test_compare_identical_models_passes_every_gate(cnn_files):
    result = invoke(
        "compare",
        cnn_files["model"],
        cnn_files["model"],
        "--data",
        cnn_files["data"],
        "--labels",
        "labels",
        "--max-drop",
        "0",
        "--min-agreement",
        "100",
        "--min-sqnr",
        "200",
        "--latency-runs",
        "0",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["sqnr_db"] is None  # infinite


def test_max_drop_without_labels_is_a_usage_error(cnn_files):
    result = invoke(
        "compare",
        cnn_files["model"],
        cnn_files["model"],
        "--data",
        cnn_files["data"],
        "--max-drop",
        "1",
    )
    assert_one_line_error(result, "--max-drop needs --labels")


@pytest.mark.parametrize("command", ["quantize", "calibrate", "compare", "inspect"])
def test_missing_model_file(command, cnn_files):
    missing = cnn_files["dir"] / "missing.onnx"
    args = {
        "quantize": [
            "quantize",
            missing,
            "-o",
            cnn_files["dir"] / "q.onnx",
            "--data",
            cnn_files["data"],
        ],
        "calibrate": [
            "calibrate",
            missing,
            "-o",
            cnn_files["dir"] / "r.json",
            "--data",
            cnn_files["data"],
        ],
        "compare": ["compare", missing, cnn_files["model"], "--data", cnn_files["data"]],
        "inspect": ["inspect", missing],
    }[command]
    assert_one_line_error(invoke(*args), "missing.onnx", "does not exist")


def _bad_inputs(files):
    d = files["dir"]
    not_onnx = d / "not.onnx"
    not_onnx.write_bytes(b"\x08\x01garbage that is not protobuf \xff\xfe")
    wrong_dtype = d / "f64.npz"
    np.savez(wrong_dtype, input=np.zeros((4, 1, 8, 8), np.float64))
    wrong_name = d / "name.npz"
    np.savez(wrong_name, image=np.zeros((4, 1, 8, 8), np.float32))
    nan = d / "nan.npz"
    np.savez(nan, input=np.full((4, 1, 8, 8), np.nan, np.float32))
    wrong_shape = d / "shape.npz"
    np.savez(wrong_shape, input=np.zeros((4, 1, 9, 8), np.float32))
    empty = d / "empty.npz"
    np.savez(empty, input=np.zeros((0, 1, 8, 8), np.float32))
    return [
        ("model-not-onnx", [not_onnx, "--data", files["data"]], ["not an ONNX model"]),
        (
            "missing-data",
            [files["model"], "--data", d / "none.npz"],
            ["none.npz", "does not exist"],
        ),
        ("wrong-dtype", [files["model"], "--data", wrong_dtype], ["'input'", "float32", "float64"]),
        ("unknown-name", [files["model"], "--data", wrong_name], ["'input'", "image"]),
        ("nan", [files["model"], "--data", nan], ["'input'", "NaN"]),
        ("wrong-shape", [files["model"], "--data", wrong_shape], ["'input'", "dimension 2 is 9"]),
        ("zero-samples", [files["model"], "--data", empty], ["zero samples"]),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_input_gives_one_line_and_leaves_no_file(case, cnn_files):
    name, args, fragments = _bad_inputs(cnn_files)[case]
    out = cnn_files["dir"] / f"{name}.q.onnx"
    before = sorted(p.name for p in cnn_files["dir"].iterdir())
    assert_one_line_error(invoke("quantize", *args, "-o", out), *fragments)
    assert sorted(p.name for p in cnn_files["dir"].iterdir()) == before  # nothing written
    ranges = cnn_files["dir"] / f"{name}.json"
    assert_one_line_error(invoke("calibrate", *args, "-o", ranges), *fragments)
    assert not ranges.exists()


def test_output_equal_to_input_is_refused(cnn_files):
    before = cnn_files["model"].read_bytes()
    result = invoke(
        "quantize", cnn_files["model"], "-o", cnn_files["model"], "--data", cnn_files["data"]
    )
    assert_one_line_error(result, "is the input model")
    assert cnn_files["model"].read_bytes() == before


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--bits", "4"], "--bits 4 would set activations to 4 bits"),
        (["--weight-bits", "9"], "--weight-bits 9 is not supported: use 4 or 8"),
        (["--weight-bits", "3"], "3-bit uniform codebook per channel weights are float levels"),
        (["--activation-bits", "4"], "--activation-bits 4 is not supported: use 8 or 16"),
        (["--ranges", "r.json"], "not both"),
    ],
)
def test_bad_options_name_the_option(cnn_files, extra, fragment):
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        cnn_files["dir"] / "q.onnx",
        "--data",
        cnn_files["data"],
        *extra,
    )
    assert_one_line_error(result, fragment)
    assert not (cnn_files["dir"] / "q.onnx").exists()


def test_unknown_option_and_choice_exit_2(cnn_files):
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        "q.onnx",
        "--data",
        cnn_files["data"],
        "--scheme",
        "wobbly",
    )
    assert result.exit_code == 2 and "wobbly" in result.stderr
    result = invoke("quantize", cnn_files["model"], "--frobnicate")
    assert result.exit_code == 2 and "--frobnicate" in result.stderr


def test_ranges_file_errors(cnn_files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = invoke("quantize", cnn_files["model"], "-o", tmp_path / "q.onnx", "--ranges", bad)
    assert_one_line_error(result, "bad.json", "not JSON")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something"}))
    result = invoke("quantize", cnn_files["model"], "-o", tmp_path / "q.onnx", "--ranges", other)
    assert_one_line_error(result, "not an onnxq ranges file")


def test_inspect_lists_plan_and_parameters(cnn_files):
    result = invoke("inspect", cnn_files["model"], "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["opset"] == 17 and doc["op_histogram"]["Conv"] == 3
    assert doc["parameters"] == 8 * 9 + 8 + 8 * 8 * 9 + 8 + 64 + 640 + 10 + 2
    actions = {d["name"]: d["action"] for d in doc["nodes_after_preparation"]}
    assert actions["conv1"] == "quantize" and actions["relu1"] == "fused"
    assert actions["pool"] == "integer passthrough"
    human = invoke("inspect", cnn_files["model"])
    assert human.exit_code == 0 and "conv1" in human.stdout and "opset 17" in human.stdout


def test_python_module_entry_point(cnn_files):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "onnxq", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "onnxq" in proc.stdout


def test_inspect_target_cpu_reports_integer_and_float_kernels(tmp_path):
    import models

    model, _ = models.single_op("conv_transpose")
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = invoke("inspect", tmp_path / "m.onnx", "--target", "cpu", "--json")
    assert result.exit_code == 0, result.output
    target = json.loads(result.stdout)["target"]
    assert target["float_kernels"] == ["op"]  # ConvTranspose: no integer kernel on CPU
    assert target["integer_kernels"] >= 1  # the Conv stem is a QLinearConv
    human = invoke("inspect", tmp_path / "m.onnx", "--target", "cpu")
    assert "float kernel" in human.stdout and "integer" in human.stdout


def test_written_files_get_the_usual_mode_and_bad_outputs_fail_early(cnn_files):
    import os
    import stat

    out = cnn_files["dir"] / "q.onnx"
    assert (
        invoke("quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"]).exit_code
        == 0
    )
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    folder = cnn_files["dir"] / "sub"
    folder.mkdir()
    assert_one_line_error(
        invoke("quantize", cnn_files["model"], "-o", folder, "--data", cnn_files["data"]),
        "is a folder",
    )
    before = cnn_files["data"].read_bytes()
    assert_one_line_error(
        invoke(
            "calibrate", cnn_files["model"], "--data", cnn_files["data"], "-o", cnn_files["data"]
        ),
        "is the input data",
    )
    assert cnn_files["data"].read_bytes() == before


def test_recipe_values_are_not_coerced(cnn_files, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"rules": [{"match": "Conv", "exclude": "false"}]}))
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        tmp_path / "q.onnx",
        "--data",
        cnn_files["data"],
        "--recipe",
        recipe,
    )
    assert_one_line_error(result, "bad exclude 'false'")


def test_a_model_with_nothing_to_quantize_writes_nothing(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], name="soft", axis=-1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((2, 4), np.float32))
    result = invoke(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--data", tmp_path / "d.npz"
    )
    assert_one_line_error(result, "nothing in", "can be quantized")
    assert not (tmp_path / "q.onnx").exists()


def test_inspect_counts_weights_held_by_constant_nodes(tmp_path):
    import models

    model = models.cnn()
    w = next(t for t in model.graph.initializer if t.name == "w2")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["w2"], value=w))
    onnx.save(model, str(tmp_path / "m.onnx"))
    doc = json.loads(invoke("inspect", tmp_path / "m.onnx", "--json").stdout)
    assert doc["parameters"] == 8 * 9 + 8 + 8 * 8 * 9 + 8 + 64 + 640 + 10 + 2


def test_compare_times_both_models_with_spinning_off(cnn_files, monkeypatch):
    """The two sessions alternate in the latency measurement: a spinning thread pool of
    the one would take the cores of the other, so neither may spin."""
    import onnxq.report.compare as compare_module

    made: list[str] = []
    real = compare_module.Runner

    def spy(*args, **kwargs):
        runner = real(*args, **kwargs)
        opts = runner._session.get_session_options()
        made.append(opts.get_session_config_entry("session.intra_op.allow_spinning"))
        return runner

    monkeypatch.setattr(compare_module, "Runner", spy)
    args = ["compare", cnn_files["model"], cnn_files["model"], "--data", cnn_files["data"]]
    result = invoke(*args, "--latency-runs", "2", "--json")
    assert result.exit_code == 0, result.output
    assert made == ["0", "0"]
