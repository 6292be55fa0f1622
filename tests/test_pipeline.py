"""The pipeline's shape: few sessions, a readable quantize(), calibration independent of
the planner, one result type for graph passes, provenance in the written model."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

import onnxq
from onnxq.graph.metadata import SETTINGS_KEY
from onnxq.graph.passes.result import PassResult

from conftest import ROOT, SAMPLES


@pytest.fixture
def count_sessions(monkeypatch):
    made = []
    original = ort.InferenceSession

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Counting)
    return made


def test_default_static_quantize_with_eval_makes_five_sessions(tmp_path, count_sessions):
    """prepare (onnxruntime's basic optimizations), the wide float model (the probe that
    sizes batches), the calibration pass's own session (only the tensors it observes and
    the bias-correction inputs it sums: the digits CNN's Conv outputs before their Relu are
    not fetched), the quantized model (the check, the latency timing, the kernel preview,
    evaluation) and the float model as written (check reference, evaluation reference,
    latency timing). The code before the pipeline made ten. ``size``: the int8 model is
    written whatever the timing finds (``balanced`` times a weights-only model too where
    int8 is no faster on this machine)."""
    onnxq.quantize(
        SAMPLES / "digits_cnn.onnx",
        tmp_path / "q.onnx",
        data=SAMPLES / "digits_calib.npz",
        eval_data=SAMPLES / "digits_eval.npz",
        config=onnxq.QuantConfig(optimize_for=onnxq.OptimizeFor.SIZE),
    )
    assert len(count_sessions) == 5


def test_quantize_reads_as_its_stages():
    from onnxq import pipeline

    func = ast.parse(inspect.getsource(pipeline.quantize)).body[0]
    assert isinstance(func, ast.FunctionDef)
    body = func.body  # the docstring and the stages, not the signature
    assert body[-1].end_lineno - body[0].lineno + 1 <= 40
    body = inspect.getsource(pipeline)
    for stage in ("load_inputs", "prepare", "static_ranges", "weight_choices", "Replanner"):
        assert stage in body


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_calibration_does_not_import_the_planner_and_quant_is_pure_numpy():
    for path in (ROOT / "onnxq" / "calibration").glob("*.py"):
        assert "onnxq.graph.plan" not in _imports(path), path
    for path in (ROOT / "onnxq" / "quant").glob("*.py"):
        banned = {"onnx", "onnxruntime", "click", "rich"} & {
            m.split(".")[0] for m in _imports(path)
        }
        assert not banned, (path, banned)


def test_every_graph_pass_returns_pass_result():
    from onnxq.graph import rewrite_dynamic, rewrite_qdq
    from onnxq.graph.passes import (
        bias_correction,
        constants,
        embeddings,
        fold_weights,
        node_names,
        opset,
        shapes,
    )

    functions = [
        constants.constants_to_initializers,
        opset.upgrade_opset,
        node_names.name_nodes,
        shapes.infer_shapes,
        bias_correction.correct_biases,
        embeddings.quantize_embeddings,
        fold_weights.fold_float_weights,
        rewrite_qdq.rewrite_qdq,
        rewrite_dynamic.rewrite_dynamic,
    ]
    for fn in functions:
        assert inspect.signature(fn).return_annotation in ("PassResult", PassResult), fn


def test_written_model_records_version_and_settings(tmp_path):
    out = tmp_path / "q.onnx"
    report = onnxq.quantize(
        SAMPLES / "digits_cnn.onnx",
        out,
        onnxq.QuantConfig(weights_only=True, weights=onnxq.WeightSpec(bits=4)),
        data=SAMPLES / "digits_calib.npz",
    )
    model = onnx.load(str(out))
    assert model.producer_name == "onnxq" and model.producer_version == onnxq.__version__
    meta = {p.key: p.value for p in model.metadata_props}
    settings = json.loads(meta[SETTINGS_KEY])
    assert settings["quantize"]["weights"]["bits"] == 4
    assert settings["quantize"]["weights_only"] is True
    assert settings["data"] == str(SAMPLES / "digits_calib.npz")
    assert report.to_dict()["settings"] == settings


def test_float_session_runs_reference_outputs_without_the_wide_session():
    """onnxruntime computes every graph output of a session whatever a run asks for: runs
    that ask only for the graph outputs (and the extra reference tensors) go to a session
    that has only those, and the one exposing every activation is not even built."""
    import numpy as np

    from onnxq.calibration.collect import FloatSession
    from onnxq.stages.prepare import prepare

    import models

    model = prepare(models.cnn()).model
    floats = FloatSession(model)
    name = model.graph.input[0].name
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {name: np.random.default_rng(0).normal(size=shape).astype(np.float32)}
    outputs = [o.name for o in model.graph.output]
    got = floats.run(feed, outputs)
    assert floats._runner is None and floats._reference_runner is not None
    assert list(floats.reference_runner.output_names) == outputs
    wide = floats.run(feed, [*outputs, floats.candidates[1]])  # an activation: the wide one
    assert floats._runner is not None
    np.testing.assert_allclose(got[outputs[0]], wide[outputs[0]], rtol=1e-5, atol=1e-6)


def test_user_model_is_not_kept_and_its_value_info_alone_is_written(tmp_path, monkeypatch):
    """The pipeline prepares the user's proto and lets go of it (its weights would stay in
    memory for the whole run); the written model still keeps shapes for exactly the
    tensors the user's model annotated, not the many that preparation inferred."""
    import sys

    from onnxq import pipeline
    from onnxq.stages import inputs as inputs_stage

    user = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    inferred = onnx.shape_inference.infer_shapes(user).graph.value_info
    assert len(inferred) > 2
    annotated = inferred[0].name
    user.graph.value_info.append(inferred[0])
    path = tmp_path / "annotated.onnx"
    onnx.save(user, str(path))

    loaded: list[onnx.ModelProto] = []
    original = inputs_stage.load_inputs

    def tracked(request):
        model, found = original(request)
        loaded.append(model)
        return model, found

    monkeypatch.setattr(pipeline, "load_inputs", tracked)
    holders_at_save = []
    save = pipeline.save

    def saving(*args, **kwargs):  # references to the user's proto besides this test's list
        holders_at_save.append(sys.getrefcount(loaded[0]) - 2)
        return save(*args, **kwargs)

    monkeypatch.setattr(pipeline, "save", saving)
    onnxq.quantize(path, tmp_path / "q.onnx", data=SAMPLES / "digits_calib.npz")
    assert holders_at_save == [0]
    written = onnx.load(str(tmp_path / "q.onnx"))
    assert {vi.name for vi in written.graph.value_info} == {annotated}
