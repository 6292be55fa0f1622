"""Shared checks for graph tests: onnxruntime sessions and scale-derived tolerances."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxq.calibration.collect import FloatSession
from onnxq.calibration.remedy import activation_qparams
from onnxq.config import CalibrationConfig, FidelityTarget, QuantConfig, WeightSpec
from onnxq.data import open_dataset
from onnxq.graph.model_io import input_specs
from onnxq.graph.passes.result import PassResult
from onnxq.graph.plan import QuantPlan, make_plan
from onnxq.graph.rewrite_qdq import rewrite_qdq
from onnxq.pipeline import quantize
from onnxq.report.quantize_report import QuantizeReport
from onnxq.stages.prepare import prepare

# tests of one mechanism switch the output check off, so that it cannot mask the mechanism
NO_CHECK = FidelityTarget(sqnr_db=0)


def run(model: onnx.ModelProto, feed: dict, *, optimize: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def quantize_in_memory(
    model: onnx.ModelProto, feed: dict, config: QuantConfig | None = None, tmp_path=None
) -> tuple[PassResult, QuantPlan]:
    config = config or QuantConfig()
    prepared = prepare(model)
    plan = make_plan(prepared.model, config)
    path = tmp_path / "calib.npz"
    np.savez(path, **feed)
    dataset = open_dataset(path, input_specs(model))
    observed = FloatSession(prepared.model).observe(dataset, plan.roots, CalibrationConfig())
    qparams = {
        t: activation_qparams(observed[t], config.activations, restricted=config.restricted)
        for t in plan.roots
    }
    return rewrite_qdq(prepared.model, plan, qparams, config), plan


def output_step(model: onnx.ModelProto, output: str, reference: np.ndarray) -> float:
    """The quantization step of ``output``: the scale of the DequantizeLinear that makes
    it, or, for float-output integer kernels, the range of the reference over 255."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == output:
            return float(numpy_helper.to_array(inits[node.input[1]]).max())
    return float(np.ptp(reference)) / 255


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def graph_bytes(path) -> bytes:
    """The written model without its provenance (producer, metadata): what two runs with
    different settings can share byte for byte."""
    model = onnx.load(str(path))
    model.producer_version = ""
    del model.metadata_props[:]
    return model.SerializeToString()


def float_session(model: onnx.ModelProto) -> FloatSession:
    """The float session the pipeline makes for ``model`` (prepared): it can fetch the
    tensors the output check compares."""
    from onnxq.tuning.check import compared_tensors

    return FloatSession(model, extra=compared_tensors(model)[0])


def count_float_runs(monkeypatch) -> list[int]:
    """A list that grows by one at each run of a FloatSession (either of its sessions)."""
    from onnxq.calibration import collect

    runs: list[int] = []
    real_run = collect.FloatSession.run

    def counting(self, feed, names):
        runs.append(1)
        return real_run(self, feed, names)

    monkeypatch.setattr(collect.FloatSession, "run", counting)
    return runs


def corrected_pair(model: onnx.ModelProto, feed: dict, tmp_path) -> tuple[QuantizeReport, ...]:
    """``model`` quantized weights-only with 4-bit weights (coarse rounding), output
    check off, on ``feed``: without bias correction (``a.onnx``) and with it
    (``b.onnx``), in ``tmp_path``."""
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    cfg = QuantConfig(weights_only=True, target=NO_CHECK, weights=WeightSpec(bits=4))
    return tuple(
        quantize(
            tmp_path / "m.onnx",
            tmp_path / out,
            replace(cfg, bias_correction=correct),
            data=tmp_path / "d.npz",
        )
        for out, correct in (("a.onnx", False), ("b.onnx", True))
    )
