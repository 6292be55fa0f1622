"""The CI contract of the command line (issue #14, item 4): one percent convention, patterns
that match nothing refused, ``quantize --strict``, ``--debug`` and ``-q`` anywhere, names
never cut in pipes, progress lines in CI logs, and ``--config`` / ``--save-config``."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxq.cli.main import cli

import models

QUIET_ENV = {"ONNXQ_PROGRESS_INTERVAL": "1000"}  # no progress line in these runs


def invoke(*args, env=None):
    return CliRunner().invoke(
        cli, [str(a) for a in args], env={**QUIET_ENV, **(env or {})}, catch_exceptions=False
    )


def usage_error(result, *fragments):
    """Exit 2 with one ``Error: ...`` line naming ``fragments``; no traceback."""
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert all(f in errors[0] for f in fragments), errors[0]
    assert "Traceback" not in result.output
    return errors[0]


def quantize_args(files, out="q.onnx"):
    return ["quantize", files["model"], "-o", files["dir"] / out, "--data", files["data"]]


def compare_args(files, *extra):
    model = files["model"]
    return ["compare", model, model, "--data", files["data"], "--latency-runs", "0", *extra]


# 1. One threshold convention: percent, 0 to 100, everywhere


@pytest.mark.parametrize("value", ["0.99", "1", "0.5"])
@pytest.mark.parametrize("option", ["--min-agreement", "--target-top1"])
def test_agreement_in_zero_to_one_is_ambiguous(cnn_files, option, value):
    args = compare_args(cnn_files) if option == "--min-agreement" else quantize_args(cnn_files)
    result = invoke(*args, option, value)
    usage_error(result, option, f"{value} is ambiguous", f"{value}%")
    assert not (cnn_files["dir"] / "q.onnx").exists()


@pytest.mark.parametrize("value", ["101", "-1", "nan", "inf", "ninety", "99%%"])
@pytest.mark.parametrize("option", ["--min-agreement", "--max-drop", "--target-top1"])
def test_percent_options_refuse_values_outside_0_to_100(cnn_files, option, value):
    args = quantize_args(cnn_files) if option == "--target-top1" else compare_args(cnn_files)
    extra = ["--labels", "labels"] if option == "--max-drop" else []
    assert usage_error(invoke(*args, *extra, option, value), option, "percentage from 0 to 100")


@pytest.mark.parametrize(
    "value,recorded", [("99", 99.0), ("99%", 99.0), ("99.5 %", 99.5), ("0.5%", 0.5), ("0", 0.0)]
)
def test_min_agreement_is_percent_and_recorded_as_given(cnn_files, value, recorded):
    result = invoke(*compare_args(cnn_files, "--json", "--min-agreement", value))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["thresholds"]["min_agreement"] == recorded


def test_max_drop_is_percentage_points_without_the_ambiguity_rule(cnn_files):
    result = invoke(*compare_args(cnn_files, "--labels", "labels", "--json", "--max-drop", "0.5"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["thresholds"]["max_drop"] == 0.5


def test_target_top1_is_percent_on_the_command_line_and_a_fraction_inside(cnn_files):
    result = invoke(*quantize_args(cnn_files), "--target-top1", "97.5", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["quantize"]["target"]["top1"] == 0.975
    assert doc["output_check"]["target"]["top1_agreement"] == 0.975
    assert "top-1 97.50%" in result.stderr  # the check line, in percent


def test_default_target_top1_is_99_percent(cnn_files):
    result = invoke(*quantize_args(cnn_files), "--json")
    assert json.loads(result.stdout)["settings"]["quantize"]["target"]["top1"] == 0.99
    help_text = invoke("quantize", "--help").stdout
    assert "[default: 99.0]" in " ".join(help_text.split())


# 2. Patterns that match nothing


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_exclude_that_matches_nothing_is_refused(cnn_files, mode):
    result = invoke(*quantize_args(cnn_files), "--mode", mode, "--exclude", "conv")
    usage_error(result, "--exclude conv matches no node name or op type", "case-sensitive")
    assert not (cnn_files["dir"] / "q.onnx").exists()


def test_exclude_refusal_matches_the_recipe_rule_refusal(cnn_files, tmp_path):
    usage_error(invoke("inspect", cnn_files["model"], "--exclude", "nope*"), "--exclude nope*")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"rules": [{"match": "conv", "exclude": True}]}))
    result = invoke(*quantize_args(cnn_files), "--recipe", recipe)
    usage_error(result, "rule 'conv' matches no node name or op type")
    ok = invoke(*quantize_args(cnn_files), "--exclude", "Conv", "--exclude", "fc", "--json")
    assert ok.exit_code == 0, ok.output
    reasons = {n["name"]: n["reason"] for n in json.loads(ok.stdout)["nodes"]}
    assert reasons["conv1"] == "excluded by --exclude Conv"
    assert reasons["fc"] == "excluded by --exclude fc"


# 3. quantize --strict


def test_missed_check_warns_with_json_and_strict_exits_1(cnn_files):
    args = [*quantize_args(cnn_files), "--target-sqnr", "200", "--json"]
    loose = invoke(*args)
    assert loose.exit_code == 0, loose.output
    doc = json.loads(loose.stdout)  # stdout: exactly one JSON document
    assert doc["output_check"]["met"] is False
    warning = "warning: the output check missed its target (SQNR 200 dB, top-1 99%)"
    assert warning in loose.stderr
    assert len(doc["warnings"]) == 1  # the same warning in the JSON, for a CI job
    assert doc["warnings"][0].startswith("the output check missed its target")
    (cnn_files["dir"] / "q.onnx").unlink()
    strict = invoke(*args, "--strict", "-q")
    assert strict.exit_code == 1
    assert json.loads(strict.stdout)["output_check"]["met"] is False
    assert [ln for ln in strict.stderr.splitlines() if ln] == [
        ln for ln in loose.stderr.splitlines() if ln.startswith("warning: ")
    ]  # -q keeps the warnings, and only them
    assert (cnn_files["dir"] / "q.onnx").exists()  # the model is written all the same


def test_slower_than_float_risk_warns_in_the_table_run_and_strict_exits_1(cnn_files):
    # 16-bit activations: onnxruntime has no integer kernel, every Q/DQ runs on its own
    args = [*quantize_args(cnn_files), "--activation-bits", "16", "--target-sqnr", "0"]
    args += ["--optimize-for", "size"]  # the int8 model, however fast it runs
    loose = invoke(*args)
    assert loose.exit_code == 0, loose.output
    assert "quantized nodes" in loose.stdout
    assert "the quantized model is likely slower than float" in loose.stderr
    strict = invoke(*args, "--strict", "--json")
    assert strict.exit_code == 1
    assert json.loads(strict.stdout)["runtime"]["slower_than_float_risk"] is True


def test_strict_passes_a_clean_run(cnn_files):
    result = invoke(*quantize_args(cnn_files), "--strict", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output_check"]["met"] and not doc["runtime"]["slower_than_float_risk"]
    assert doc["warnings"] == []
    assert "warning:" not in result.stderr


# 4. --debug and -q before or after the command name


def _commands(files):
    d = files["dir"]
    return {
        "inspect": ["inspect", files["model"]],
        "calibrate": ["calibrate", files["model"], "--data", files["data"], "-o", d / "r.json"],
        "quantize": quantize_args(files),
        "compare": compare_args(files),
    }


@pytest.mark.parametrize("command", ["inspect", "calibrate", "quantize", "compare"])
@pytest.mark.parametrize("before", [True, False])
def test_debug_and_quiet_work_before_and_after_the_command(cnn_files, command, before):
    args = _commands(cnn_files)[command]

    def run(flag):
        return invoke(flag, *args) if before else invoke(*args, flag)

    logger = logging.getLogger("onnxq")
    debug = run("--debug")
    assert debug.exit_code == 0, debug.output
    assert logger.isEnabledFor(logging.DEBUG)
    quiet = run("-q") if command != "quantize" else run("--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert not logger.isEnabledFor(logging.DEBUG)  # each run sets logging afresh
    if before:
        return
    loud = invoke(*args, env={"ONNXQ_PROGRESS_INTERVAL": "0"})
    quiet = invoke(*args, "-q", env={"ONNXQ_PROGRESS_INTERVAL": "0"})
    assert quiet.stderr == ""  # no progress, no notes
    if command != "inspect":
        assert loud.stderr != ""


def test_quiet_still_prints_errors_and_violations(cnn_files):
    missing = cnn_files["dir"] / "none.npz"
    usage_error(invoke("-q", "calibrate", cnn_files["model"], "--data", missing, "-o", "r.json"))
    result = invoke(*compare_args(cnn_files, "--min-sqnr", "300", "-q"))
    assert result.exit_code == 0  # identical models: infinite SQNR
    candidate = cnn_files["dir"] / "q.onnx"
    assert invoke(*quantize_args(cnn_files), "-q").exit_code == 0
    model, data = cnn_files["model"], cnn_files["data"]
    result = invoke("compare", model, candidate, "--data", data, "--min-sqnr", "300", "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith("threshold violated: SQNR of 'logits'")


# 5. Names never cut in pipes; progress lines in CI logs


def _long_names_model(tmp_path):
    model = models.cnn()
    output = "/encoder/layer.11/attention/output/dense/" + "long_output_name_" * 6 + "logits"
    node = "/encoder/layer.11/attention/self/" + "projection_" * 8 + "conv2"
    for n in model.graph.node:
        n.output[:] = [output if o == "logits" else o for o in n.output]
        n.name = node if n.name == "conv2" else n.name
    model.graph.output[0].name = output
    onnx.save(model, str(tmp_path / "long.onnx"))
    return tmp_path / "long.onnx", output, node


def test_long_names_are_not_cut_when_stdout_is_not_a_terminal(cnn_files, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    path, output, node = _long_names_model(cnn_files["dir"])
    assert len(output) > 120
    args = ["quantize", path, "-o", cnn_files["dir"] / "q.onnx", "--data", cnn_files["data"]]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.stdout.splitlines() if output in ln)
    assert row.count("│") == 7  # the whole row on one line: name and the five numbers
    assert "…" not in result.stdout
    plan = invoke("inspect", path)
    assert any(node in ln and "Conv" in ln for ln in plan.stdout.splitlines())
    assert "…" not in plan.stdout


def test_progress_lines_go_to_stderr_when_it_is_not_a_terminal(cnn_files):
    ranges = cnn_files["dir"] / "r.json"
    args = ["calibrate", cnn_files["model"], "--data", cnn_files["data"], "-o", ranges]
    every = invoke(*args, "--batch-size", "16", env={"ONNXQ_PROGRESS_INTERVAL": "0"})
    assert every.exit_code == 0, every.output
    lines = every.stderr.splitlines()
    assert lines[:4] == [
        "calibrating: 16/64 (25%)",
        "calibrating: 32/64 (50%)",
        "calibrating: 48/64 (75%)",
        "calibrating: 64/64 (100%)",
    ]
    assert every.stdout == ""
    rarely = invoke(*args, "--batch-size", "16")  # a short run inside the interval: none
    assert not any(ln.startswith("calibrating:") for ln in rarely.stderr.splitlines())
    compare = invoke(*compare_args(cnn_files, "--json"), env={"ONNXQ_PROGRESS_INTERVAL": "0"})
    assert "evaluating: 64/64 (100%)" in compare.stderr.splitlines()
    json.loads(compare.stdout)


# 6. --config FILE and --save-config FILE


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_saved_config_reproduces_the_model_byte_for_byte(cnn_files, suffix):
    d = cnn_files["dir"]
    saved = d / f"settings{suffix}"
    first = invoke(
        *quantize_args(cnn_files, "q1.onnx"),
        *("--granularity", "tensor", "--exclude", "fc", "--target-top1", "0.5%"),
        *("--method", "percentile", "--percentile", "99.9", "--rounding", "stochastic"),
        *("--seed", "3", "--no-bias-correction", "--labels", "labels", "--json"),
        *("--save-config", saved),
    )
    assert first.exit_code == 0, first.output
    text = saved.read_text()
    assert "target-top1" in text and "0.5%" in text and "output" not in text
    second = invoke("quantize", cnn_files["model"], "-o", d / "q2.onnx", "--config", saved)
    assert second.exit_code == 0, second.output
    assert (d / "q1.onnx").read_bytes() == (d / "q2.onnx").read_bytes()
    settings = json.loads(first.stdout)["settings"]
    assert settings["quantize"]["target"]["top1"] == 0.005
    assert settings["quantize"]["exclude"] == ["fc"] and settings["labels"] == "labels"


def test_toml_config_file_gives_options_and_the_command_line_wins(cnn_files):
    config = cnn_files["dir"] / "q.toml"
    config.write_text(
        f'data = "{cnn_files["data"]}"\n'
        'granularity = "tensor"\n'
        "target_sqnr = 0\n"
        'exclude = ["fc"]\n'
        "weights-only = true\n"
    )
    out = cnn_files["dir"] / "q.onnx"
    result = invoke("quantize", cnn_files["model"], "-o", out, "--config", config, "--json")
    assert result.exit_code == 0, result.output
    q = json.loads(result.stdout)["settings"]["quantize"]
    assert q["weights"]["granularity"] == "tensor" and q["exclude"] == ["fc"]
    assert q["weights_only"] and q["target"]["sqnr_db"] == 0
    args = ["--config", config, "--granularity", "channel", "--exclude", "conv1", "--json"]
    result = invoke("quantize", cnn_files["model"], "-o", out, *args)
    assert result.exit_code == 0, result.output
    q = json.loads(result.stdout)["settings"]["quantize"]
    assert q["weights"]["granularity"] == "channel" and q["exclude"] == ["conv1"]


@pytest.mark.parametrize(
    "body,fragments",
    [
        ("frobnicate = 1\n", ["unknown key 'frobnicate'", "onnxq quantize"]),
        ("output = 'x.onnx'\n", []),  # known: -o may come from the file
        ('gptq = "yes"\n', ["key 'gptq' takes true or false"]),
        ("granularity = ['tensor']\n", ["key 'granularity' takes one value"]),
        ("target-top1 = 0.99\n", ["--target-top1", "0.99 is ambiguous"]),
        ("seed = 1\nseed_ = 2\n", ["unknown key 'seed_'"]),
        ("bits = 8\nbits = 8\n", ["cannot be parsed"]),
        ("save-config = 'a.toml'\n", ["unknown key 'save-config'"]),
    ],
)
def test_bad_config_files_are_usage_errors_naming_the_key(cnn_files, body, fragments):
    config = cnn_files["dir"] / "c.toml"
    config.write_text(body)
    result = invoke(*quantize_args(cnn_files), "--config", config)
    if not fragments:
        assert result.exit_code == 0, result.output
        return
    usage_error(result, *fragments)
    assert not (cnn_files["dir"] / "q.onnx").exists()


def test_config_options_on_compare_and_calibrate(cnn_files):
    d = cnn_files["dir"]
    config = d / "gate.yaml"
    config.write_text("min-sqnr: 300\nlatency_runs: 0\nlabels: labels\nmax-drop: 1\n")
    assert invoke(*quantize_args(cnn_files), "-q").exit_code == 0
    model, data = cnn_files["model"], cnn_files["data"]
    result = invoke("compare", model, d / "q.onnx", "--data", data, "--config", config, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["thresholds"]["min_sqnr"] == 300 and doc["thresholds"]["max_drop"] == 1
    saved = d / "calib.json"
    args = ["calibrate", model, "--data", data, "-o", d / "r.json", "--method", "mse"]
    assert invoke(*args, "--save-config", saved).exit_code == 0
    assert json.loads(saved.read_text())["method"] == "mse"
    again = invoke("calibrate", model, "-o", d / "r2.json", "--config", saved)
    assert again.exit_code == 0, again.output
    assert (d / "r.json").read_text() == (d / "r2.json").read_text()


def test_save_config_refuses_paths_of_the_run(cnn_files):
    out = cnn_files["dir"] / "q.json"
    result = invoke(*quantize_args(cnn_files), "--report", out, "--save-config", out)
    usage_error(result, "--save-config", "also given as --report")
    usage_error(invoke(*quantize_args(cnn_files), "--save-config", "s.ini"), ".toml, .yaml")
    config = cnn_files["dir"] / "c.toml"
    config.write_text("auto-sqnr = 20\n")
    same = invoke(*quantize_args(cnn_files), "--config", config, "--save-config", config)
    usage_error(same, "--save-config", "also given as --config")
    assert config.read_text() == "auto-sqnr = 20\n"  # the input is left as it was
    assert not (cnn_files["dir"] / "q.onnx").exists()


def test_data_from_config_with_relative_paths(cnn_files, monkeypatch):
    monkeypatch.chdir(cnn_files["dir"])
    np.savez("local.npz", input=np.ones((4, 1, 8, 8), np.float32))
    (cnn_files["dir"] / "c.toml").write_text('data = "local.npz"\n')
    result = invoke("quantize", cnn_files["model"], "-o", "q.onnx", "--config", "c.toml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["data"] == "local.npz"


def test_config_file_is_an_input_and_unreadable_ones_are_usage_errors(cnn_files):
    config = cnn_files["dir"] / "run.json"
    config.write_text('{"auto-sqnr": 20}')
    clash = invoke(*quantize_args(cnn_files), "--config", config, "--report", config)
    assert clash.exit_code == 2, clash.output
    assert "config file" in clash.output and len(clash.output.strip().splitlines()) == 1
    assert config.read_text() == '{"auto-sqnr": 20}'
    bad = cnn_files["dir"] / "bad.toml"
    bad.write_bytes(b"auto-sqnr = \xff\n")
    unreadable = invoke(*quantize_args(cnn_files), "--config", bad)
    assert unreadable.exit_code == 2, unreadable.output
    assert "cannot be read" in unreadable.output
    assert not (cnn_files["dir"] / "q.onnx").exists()
