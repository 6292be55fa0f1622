"""Bad input and faults through the command line (issue #14, item 6): non-finite outputs
and options, outputs over inputs, crafted sizes and depths, stale temporary files, ranges
files that miss the data, usage errors and library warnings. Fast cases only; the signal
and concurrency cases are bench/faults.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from onnxq.calibration.coverage import Coverage
from onnxq.calibration.observers import TensorRange
from onnxq.cli.main import cli
from onnxq.graph.model_io import TEMP_SUFFIX

import models


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments: str) -> str:
    """The single ``Error: ...`` line of a usage error (exit 2), checked."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


def strict_json(text: str) -> dict:
    """``text`` parsed as RFC 8259 JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def nan_candidate(path: Path) -> None:
    """The test CNN whose logits are 0 / 0: every output value NaN."""
    model = models.cnn()
    for node in model.graph.node:
        if node.output[0] == "logits":
            node.output[0] = "pre"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    model.graph.node.extend(
        [
            helper.make_node("Mul", ["pre", "zero"], ["nothing"], name="times_zero"),
            helper.make_node("Div", ["nothing", "zero"], ["logits"], name="over_zero"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# 1. non-finite outputs fail every gate; every JSON document is strict


@pytest.mark.parametrize(
    "gate",
    [
        ["--min-sqnr", "30", "--min-cosine", "0.9"],
        ["--min-cosine", "0.9"],
        ["--min-sqnr", "-100"],
        ["--min-agreement", "1%"],
        ["--max-drop", "100", "--labels", "labels"],
    ],
)
def test_nan_candidate_fails_every_gate_and_json_is_strict(cnn_files, gate):
    cand = cnn_files["dir"] / "nan.onnx"
    nan_candidate(cand)
    result = invoke(
        "compare",
        cnn_files["model"],
        cand,
        "--data",
        cnn_files["data"],
        "--latency-runs",
        "0",
        "--json",
        *gate,
    )
    assert result.exit_code == 1, result.output
    doc = strict_json(result.stdout)
    assert doc["ok"] is False
    out = doc["outputs"][0]
    assert out["nonfinite"] == {"reference": 0, "candidate": 64 * 10}
    assert out["cosine_mean"] is None and out["sqnr_db"] is None
    assert out["max_abs_error"] is None and out["top1_agreement"] == 0.0
    assert doc["violations"][0] == (
        "output 'logits' holds 640 NaN or infinite values in the candidate and 0 in the "
        "reference: every threshold fails"
    )
    assert "threshold violated: output 'logits' holds 640 NaN" in result.stderr


def test_nan_candidate_without_gates_exits_0_with_the_count(cnn_files):
    cand = cnn_files["dir"] / "nan.onnx"
    nan_candidate(cand)
    result = invoke(
        "compare",
        cnn_files["model"],
        cand,
        "--data",
        cnn_files["data"],
        "--latency-runs",
        "0",
        "--json",
    )
    assert result.exit_code == 0
    doc = strict_json(result.stdout)
    assert doc["ok"] is True and doc["outputs"][0]["nonfinite"]["candidate"] == 640


# 2. numeric options refuse NaN and infinities


@pytest.mark.parametrize(
    "option,value",
    [
        ("--min-sqnr", "nan"),
        ("--min-sqnr", "inf"),
        ("--min-cosine", "nan"),
        ("--min-cosine", "-inf"),
        ("--max-drop", "nan"),
        ("--min-agreement", "inf"),
    ],
)
def test_compare_thresholds_refuse_non_finite(cnn_files, option, value):
    result = invoke(
        "compare",
        cnn_files["model"],
        cnn_files["model"],
        "--data",
        cnn_files["data"],
        option,
        value,
    )
    assert one_line_error(result, f"'{option}'")


@pytest.mark.parametrize(
    "option,value",
    [
        ("--target-sqnr", "nan"),
        ("--target-sqnr", "inf"),
        ("--auto-sqnr", "nan"),
        ("--auto-sqnr", "inf"),
        ("--percentile", "nan"),
        ("--weight-percentile", "inf"),
        ("--moving-average", "nan"),
        ("--target-top1", "nan"),
    ],
)
def test_quantize_options_refuse_non_finite(cnn_files, option, value):
    out = cnn_files["dir"] / "q.onnx"
    result = invoke(
        "quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"], option, value
    )
    one_line_error(result, f"'{option}'")
    assert not out.exists()


def test_calibrate_percentile_refuses_nan(cnn_files):
    out = cnn_files["dir"] / "r.json"
    result = invoke(
        "calibrate",
        cnn_files["model"],
        "-o",
        out,
        "--data",
        cnn_files["data"],
        "--method",
        "percentile",
        "--percentile",
        "nan",
    )
    assert one_line_error(result, "'--percentile'", "'nan' is not a finite number")


def _float_parameters():
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            try:
                number = param.type.convert("12.5", param, None)
            except click.BadParameter:
                continue
            if isinstance(number, float):
                yield name, param


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_option_of_every_command_refuses_non_finite(value):
    """Structural: whatever option a command grows, a float one refuses NaN and inf."""
    params = list(_float_parameters())
    assert len(params) >= 10  # thresholds, percentiles, SQNR targets, ...
    for command, param in params:
        with pytest.raises(click.BadParameter):
            param.type.convert(value, param, None)
            pytest.fail(f"onnxq {command} {param.opts} accepts {value}")


# 3. no input may be an output


def _recipe(path: Path) -> Path:
    path.write_text(json.dumps({"rules": [{"match": "fc", "weight_bits": 8}]}))
    return path


@pytest.mark.parametrize(
    "output,clash,fragment",
    [
        ("-o", "recipe", "is the input recipe"),
        ("-o", "preprocess", "is the input preprocess file"),
        ("--report", "recipe", "is the input recipe"),
        ("--report", "eval", "is the input evaluation data"),
        ("--report", "ranges", "is the input ranges file"),
        ("--report", "output", "is also the -o/--output output"),
    ],
)
def test_no_input_or_output_is_another_output(cnn_files, output, clash, fragment):
    d = cnn_files["dir"]
    files = {
        "recipe": _recipe(d / "recipe.json"),
        "eval": d / "eval.npz",
        "preprocess": d / "pre.toml",
        "ranges": d / "ranges.json",
        "output": d / "q.onnx",
    }
    files["eval"].write_bytes(cnn_files["data"].read_bytes())
    files["preprocess"].write_text("scale = 0.5\n")
    files["ranges"].write_text("{}")
    paths = {"-o": d / "q.onnx", "--report": d / "report.json"}
    paths[output] = files[clash]
    source = ["--ranges", files["ranges"]] if clash == "ranges" else ["--data", cnn_files["data"]]
    inputs = [files[k] for k in ("recipe", "eval", "preprocess", "ranges")]
    before = {p: p.read_bytes() for p in inputs}
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        paths["-o"],
        *source,
        "--recipe",
        files["recipe"],
        "--eval",
        files["eval"],
        "--preprocess",
        files["preprocess"],
        "--report",
        paths["--report"],
    )
    one_line_error(result, fragment)
    assert {p: p.read_bytes() for p in inputs} == before
    assert not (d / "q.onnx").exists() and not (d / "report.json").exists()


def test_calibrate_output_is_not_the_preprocess_file(cnn_files):
    pre = cnn_files["dir"] / "pre.toml"
    pre.write_text("scale = 0.5\n")
    result = invoke(
        "calibrate",
        cnn_files["model"],
        "--data",
        cnn_files["data"],
        "-o",
        pre,
        "--preprocess",
        pre,
    )
    one_line_error(result, "is the input preprocess file")
    assert pre.read_text() == "scale = 0.5\n"


# 4. crafted sizes and depths are usage errors naming the file


def _npy(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def test_npz_declaring_ten_billion_samples_is_refused_before_loading(cnn_files):
    crafted = cnn_files["dir"] / "crafted.npz"
    with zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input.npy", _npy((10**10, 1, 8, 8), "<f4", b"\0" * 256))
    out = cnn_files["dir"] / "q.onnx"
    result = invoke("quantize", cnn_files["model"], "-o", out, "--data", crafted)
    one_line_error(
        result,
        "crafted.npz: array 'input' declares shape (10000000000, 1, 8, 8) of float32 "
        "(2.56 TB) but holds 256 bytes",
    )
    assert not out.exists()


def test_labels_declaring_a_trillion_entries_are_refused(cnn_files):
    crafted = cnn_files["dir"] / "labels.npz"
    samples = io.BytesIO()
    np.save(samples, np.zeros((4, 1, 8, 8), np.float32))
    with zipfile.ZipFile(crafted, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("input.npy", samples.getvalue())
        archive.writestr("labels.npy", _npy((10**12,), "<i8", b"\0" * 64))
    result = invoke(
        "compare",
        cnn_files["model"],
        cnn_files["model"],
        "--data",
        crafted,
        "--labels",
        "labels",
        "--latency-runs",
        "0",
    )
    assert one_line_error(result, "labels.npz: array 'labels' declares shape (1000000000000,)")


@pytest.mark.parametrize(
    "option,name,text,fragment",
    [
        ("--ranges", "deep.json", "[" * 200_000, "nests lists or objects too deeply"),
        ("--recipe", "deep.yaml", "rules: " + "[" * 100_000, "cannot be parsed"),
        ("--config", "deep.json", "[" * 200_000, "cannot be parsed"),
        ("--preprocess", "deep.toml", "size = " + "[" * 100_000, "not valid TOML"),
    ],
)
def test_files_nested_too_deeply_are_refused(cnn_files, option, name, text, fragment):
    deep = cnn_files["dir"] / name
    deep.write_text(text + "]" * text.count("["))
    source = [] if option == "--ranges" else ["--data", cnn_files["data"]]
    out = cnn_files["dir"] / "q.onnx"
    result = invoke("quantize", cnn_files["model"], "-o", out, *source, option, deep)
    one_line_error(result, name, fragment)
    assert not out.exists()


# 5. temporary files a killed run left behind are removed by the next run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_run_removes_stale_temp_files_it_owns(cnn_files):
    d, out = cnn_files["dir"], cnn_files["dir"] / "q.onnx"
    stale = d / f".q.onnx.{_dead_pid()}.k1ll3d{TEMP_SUFFIX}"
    stale.write_bytes(b"a complete model the rename never reached")
    live = d / f".q.onnx.1.r4nn1ng{TEMP_SUFFIX}"  # pid 1 runs: another writer's
    foreign = d / ".q.onnx.notours.tmp"  # another naming scheme: not ours
    for path in (live, foreign):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for path in (stale, live, foreign):
        os.utime(path, (an_hour_ago, an_hour_ago))
    result = invoke(
        "quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"], "--target-sqnr", "0"
    )
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert live.exists() and foreign.exists()
    onnx.checker.check_model(onnx.load(str(out)))
    assert not [p for p in d.iterdir() if p.name.endswith(TEMP_SUFFIX) and p != live]


# 6. a ranges file that misses the data is a warning


def _ranges_and_eval(files: dict[str, Path]) -> tuple[Path, Path]:
    ranges = files["dir"] / "ranges.json"
    result = invoke("calibrate", files["model"], "--data", files["data"], "-o", ranges)
    assert result.exit_code == 0, result.output
    return ranges, files["data"]


def test_hand_edited_range_that_excludes_the_data_warns(cnn_files):
    ranges, eval_data = _ranges_and_eval(cnn_files)
    doc = json.loads(ranges.read_text())
    doc["tensors"]["input"].update({"min": -2.0, "max": -1.0})  # the data is in [0, 1)
    edited = cnn_files["dir"] / "edited.json"
    edited.write_text(json.dumps(doc))
    out = cnn_files["dir"] / "q.onnx"
    result = invoke(
        "quantize", cnn_files["model"], "-o", out, "--ranges", edited, "--eval", eval_data
    )
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ranges file")]
    assert len(warned) == 1, result.stderr
    assert warned[0].startswith(
        f"warning: ranges file '{edited}': tensor 'input' has range [-2, -1] but only 0% of "
        "its values on the data fall inside (the data spans [0."
    )
    assert out.exists()
    strict = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        out,
        "--ranges",
        edited,
        "--eval",
        eval_data,
        "--strict",
    )
    assert strict.exit_code == 1


def test_calibrated_ranges_file_does_not_warn(cnn_files):
    ranges, eval_data = _ranges_and_eval(cnn_files)
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        cnn_files["dir"] / "q.onnx",
        "--ranges",
        ranges,
        "--eval",
        eval_data,
    )
    assert result.exit_code == 0, result.output
    assert "warning: ranges file" not in result.stderr


def test_coverage_of_shards_merges_to_one_pass():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, (6, 3, 4)).astype(np.float32)
    r = TensorRange(np.array([-1, 0, -0.5], np.float32), np.array([1, 2, 0.5], np.float32), 1)
    whole, a, b = Coverage(r), Coverage(r), Coverage(r)
    whole.update(values)
    a.update(values[:2])
    b.update(values[2:])
    a.merge(b)
    assert (a.inside, a.total, a.min, a.max) == (whole.inside, whole.total, whole.min, whole.max)
    inside = (values >= r.min.reshape(1, 3, 1)) & (values <= r.max.reshape(1, 3, 1))
    assert whole.share == pytest.approx(inside.mean())


# 7. usage errors are one line; library warnings never reach stderr


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["quantize", "m.onnx", "--frobnicate"], "No such option"),
        (["quantize", "m.onnx", "-o", "q.onnx", "--scheme", "wobbly"], "'wobbly'"),
        (["quantize"], "Missing argument 'MODEL'"),
        (["quantize", "m.onnx"], "Missing option '-o' / '--output'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["--frobnicate", "inspect", "m.onnx"], "No such option"),
        (["inspect", "a.onnx", "b.onnx"], "unexpected extra argument"),
        (["compare", "a.onnx", "b.onnx", "--data", "d.npz", "--latency-runs", "-1"], "-1"),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    line = one_line_error(invoke(*args), fragment)
    assert "Usage:" not in line and "Try " not in line


def test_extreme_values_raise_no_library_warning(tmp_path):
    """Activations of 1e38 overflow to inf and NaN inside the float model: calibration,
    bias correction, GPTQ and the report handle them without a numpy warning."""
    model, _ = models.single_op("gemm")
    onnx.save(model, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, (8, 3, 8, 8)) * 1e38).clip(-3.4e38, 3.4e38).astype(np.float32)
    np.savez(tmp_path / "big.npz", x=x)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxq",
            "quantize",
            "m.onnx",
            "-o",
            "q.onnx",
            "--data",
            "big.npz",
            "--gptq",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    doc = strict_json(proc.stdout)
    assert doc["fidelity"]["outputs"][0]["nonfinite"]["reference"] > 0


# Ctrl-C says what was written


def test_interrupt_before_writing_says_no_output(cnn_files, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxq.cli.main.run_quantize", interrupted)
    out = cnn_files["dir"] / "q.onnx"
    result = invoke("quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"])
    assert result.exit_code == 130
    assert result.stderr == "Error: interrupted; no output written\n"
    assert not out.exists()


def test_interrupt_after_writing_names_the_complete_output(cnn_files, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxq.cli.render.quantization", interrupted)
    out = cnn_files["dir"] / "q.onnx"
    out.write_bytes(b"an older file")
    result = invoke(
        "quantize", cnn_files["model"], "-o", out, "--data", cnn_files["data"], "--target-sqnr", "0"
    )
    assert result.exit_code == 130
    assert result.stderr == (
        f"Error: interrupted; '{out}' already written (complete); nothing else written\n"
    )
    onnx.checker.check_model(onnx.load(str(out)))
